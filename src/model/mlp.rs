//! The gated MLP, `down(act(gate(x)) · up(x))` (Llama's SwiGLU, Gemma's GeGLU), with the
//! activation as one op (fused kernel or tensor ops) so the graph never holds the layer's widest
//! activation.

use std::sync::Arc;

use candle_core::Tensor;

use super::weights::Weights;
use crate::autograd::{release, with_backward_value, ForwardOp, Value};
use crate::kernels::glu::MlpActivation;
use crate::kernels::{self, Kernel};
use crate::lora::{Linear, Recompute};
use crate::Result;

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub act: MlpActivation,
}

impl GatedMlp {
    /// Loads `{prefix}.{gate,up,down}_proj`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
        act: MlpActivation,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: w.projection(&format!("{prefix}.gate_proj"), intermediate, hidden, bias)?,
            up_proj: w.projection(&format!("{prefix}.up_proj"), intermediate, hidden, bias)?,
            down_proj: w.projection(&format!("{prefix}.down_proj"), hidden, intermediate, bias)?,
            act,
        })
    }

    /// `remake` makes `x` again for the LoRA backward of `gate_proj` and `up_proj` (see
    /// [`RmsNorm::forward_remakeable`](super::norm::RmsNorm::forward_remakeable)), so the graph does not hold `x`.
    pub fn forward(&self, x: &Tensor, remake: &Recompute) -> Result<Tensor> {
        self.apply(x, true, remake)
    }

    /// [`GatedMlp::forward`] with the same backward graph but an unspecified (zero) output
    /// value: for a checkpoint replay whose MLP output only feeds the layer output, the
    /// `down_proj` product is never computed (its backward needs only its input).
    pub fn forward_graph_only(&self, x: &Tensor, remake: &Recompute) -> Result<Tensor> {
        self.apply(x, false, remake)
    }

    /// `down(act(gate(x)) · up(x))`. The graph does not hold `h = act(g)·u`, the widest
    /// activation of the layer: the activation's backward keeps `g` and `u` (not `h`), and
    /// `down_proj`'s backward remakes `h` from them for its LoRA `A` gradient, in the same op
    /// as the forward, so bit for bit (its frozen product reads only the output gradient).
    fn apply(&self, x: &Tensor, value: bool, remake: &Recompute) -> Result<Tensor> {
        let g = self.gate_proj.forward_recomputed(x, true, remake)?;
        let u = self.up_proj.forward_recomputed(x, true, remake)?;
        let (act, fused) = (self.act, kernels::use_fused(Kernel::Glu, x.device()));
        let h = if fused {
            gated_fused(&g, &u, act)?
        } else {
            gated_unfused(&g, &u, act)?
        };
        let (g, u) = (g.detach(), u.detach());
        let remake_h: Recompute = Arc::new(move || {
            if fused {
                kernels::glu::forward(&g, &u, act)
            } else {
                gated_unfused(&g, &u, act)
            }
        });
        let y = self.down_proj.forward_recomputed(&h, value, &remake_h)?;
        // h has been read by its one reader, down_proj, whose backward never reads it (see
        // above), and neither activation op (fused or unfused) reads its own result.
        release(&h)?;
        Ok(y)
    }
}

/// `act(g)·u` with tensor ops under candle's autograd (the CPU path and the kernel's reference).
pub fn gated_unfused(g: &Tensor, u: &Tensor, act: MlpActivation) -> Result<Tensor> {
    let a = match act {
        MlpActivation::Silu => candle_nn::ops::silu(g)?,
        MlpActivation::GeluTanh => g.gelu()?,
    };
    Ok((a * u)?)
}

/// `act(g)·u` as one op with the fused kernels of [`crate::kernels::glu`]; its backward keeps
/// `g` and `u` only.
pub fn gated_fused(g: &Tensor, u: &Tensor, act: MlpActivation) -> Result<Tensor> {
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    let op = ForwardOp::Two(Box::new(kernels::glu::forward_op(act)));
    with_backward_value("glu", Value::Op(op), &[&g, &u], move |inputs, _, dy| {
        let (dg, du) = kernels::glu::backward(inputs[0], inputs[1], dy, act)?;
        Ok(vec![Some(dg), Some(du)])
    })
}
