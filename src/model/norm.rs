//! RMSNorm in f32 as transformers computes it, with Gemma's `(1 + w)` variant, as one op
//! whose backward keeps only its input. Candle's fused `rms_norm` passes no gradient, so the
//! unfused path is written with ops Candle differentiates and the fused path with
//! [`crate::kernels::rms_norm`].

use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use crate::autograd::{with_backward, with_backward_value, ForwardOp, Value};
use crate::kernels::{self, Kernel};
use crate::lora::Recompute;
use crate::Result;

/// RMSNorm computed in f32, as transformers does: `x / sqrt(mean(x²) + eps) * w`.
///
/// With `unit_offset` the scale is `(1 + w)` (Gemma's `Gemma3RMSNorm`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    unit_offset: bool,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64, unit_offset: bool) -> Self {
        Self {
            weight,
            eps,
            unit_offset,
        }
    }

    /// The stored weight (HF convention: Gemma's is the offset from 1).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The norm as one op whose backward keeps only `x` (and recomputes the row scale):
    /// `dx = r·h − x·r³·mean(h∘x)` with `h = g∘w` and `r = 1/sqrt(mean(x²) + eps)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::use_fused(Kernel::RmsNorm, x.device()) {
            self.forward_fused(x)
        } else {
            self.forward_unfused(x)
        }
    }

    /// [`Self::forward`], and a [`Recompute`] that makes the same value again from `x`, which
    /// the norm's backward keeps anyway (the norm does not read its own output). Projections
    /// given it ([`Linear::forward_recomputed`](crate::lora::Linear::forward_recomputed)) do not read the output in backward either, so
    /// once they have run the caller can [`release()`](crate::autograd::release()) it: the graph then holds one
    /// `[tokens, hidden]` tensor per norm fewer.
    pub fn forward_remakeable(&self, x: &Tensor) -> Result<(Tensor, Recompute)> {
        let (eps, unit_offset) = (self.eps, self.unit_offset);
        if kernels::use_fused(Kernel::RmsNorm, x.device()) {
            let x = x.contiguous()?;
            let y = self.forward_fused(&x)?;
            let (x, w) = (x.detach(), self.weight.detach());
            let remake: Recompute =
                Arc::new(move || kernels::rms_norm::forward(&x, &w, eps, unit_offset));
            Ok((y, remake))
        } else {
            let y = self.forward_unfused(x)?;
            let (x, norm) = (x.detach(), self.clone());
            let remake: Recompute = Arc::new(move || norm.values(&x));
            Ok((y, remake))
        }
    }

    /// [`Self::forward`] with tensor ops (the CPU path and the kernels' reference).
    pub fn forward_unfused(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.values(&x.detach())?;
        let w = self.weight.to_dtype(DType::F32)?;
        let w = if self.unit_offset { (w + 1.0)? } else { w };
        let eps = self.eps;
        with_backward("rms-norm", y, &[x], move |inputs, g| {
            let x = inputs[0].detach().to_dtype(DType::F32)?;
            let h = g.to_dtype(DType::F32)?.broadcast_mul(&w)?;
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
            let mean_hx = ((&h * &x)?.sum_keepdim(D::Minus1)? / x.dim(D::Minus1)? as f64)?;
            let gx = (h.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * mean_hx)?)?)?;
            Ok(vec![Some(gx.to_dtype(inputs[0].dtype())?)])
        })
    }

    /// [`Self::forward`] with the fused kernels of [`crate::kernels::rms_norm`].
    pub fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let w = self.weight.detach().to_dtype(x.dtype())?.contiguous()?;
        let (eps, unit_offset) = (self.eps, self.unit_offset);
        let op = ForwardOp::Two(Box::new(kernels::rms_norm::forward_op(eps, unit_offset)));
        with_backward_value("rms-norm", Value::Op(op), &[&x, &w], move |inputs, _, g| {
            let gx = kernels::rms_norm::backward(inputs[0], inputs[1], g, eps, unit_offset)?;
            Ok(vec![Some(gx), None])
        })
    }

    /// The forward values, as transformers computes them.
    fn values(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if self.unit_offset {
            // Gemma multiplies in f32 and casts afterwards.
            let w = (self.weight.to_dtype(DType::F32)? + 1.0)?;
            Ok(normed.broadcast_mul(&w)?.to_dtype(dtype)?)
        } else {
            // Llama casts back to the input dtype before the weight multiply.
            Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rms_norm_backward_matches_autograd() -> crate::Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        for unit_offset in [false, true] {
            let w = Tensor::randn(0f32, 1., 6, &dev)?;
            let norm = RmsNorm::new(w, 1e-6, unit_offset);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 6), &dev)?)?;
            let g = Tensor::randn(0f32, 1., (3, 6), &dev)?;
            let fused = (norm.forward(x.as_tensor())? * &g)?.sum_all()?.backward()?;
            let plain = (norm.values(x.as_tensor())? * &g)?.sum_all()?.backward()?;
            let (a, b) = (fused.get(x.as_tensor()), plain.get(x.as_tensor()));
            let (Some(a), Some(b)) = (a, b) else {
                panic!("no gradient");
            };
            let diff = crate::testutil::max_abs_diff(a, b)?;
            assert!(diff < 1e-5, "rms-norm gradient differs by {diff}");
        }
        Ok(())
    }
}
