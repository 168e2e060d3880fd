//! A frozen weight the layers multiply by without caring how it is stored: dense in the
//! model dtype, or quantized (see [`QuantWeight`]). Either way the backward pass computes
//! only the input gradient; a frozen weight never gets a gradient buffer.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::QuantWeight;
use crate::autograd::{with_backward_value, Value};
use crate::gemm;
use crate::Result;

/// Rows of a dense weight handled at once where a caller walks the weight in blocks.
const DENSE_BLOCK_ROWS: usize = 32768;

#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// `[out, in]`: row-major, or (see [`FrozenWeight::dense`]) a view of an `[in, out]` buffer.
    Dense(Tensor),
    Quant(Arc<QuantWeight>),
}

impl FrozenWeight {
    /// A dense `[out, in]` weight, kept as the view of an `[in, out]` buffer on the CPU when it
    /// has more inputs than outputs (a down projection; k and v under grouped-query attention). The gemm crate repacks a transposed
    /// right operand on every call, and for such a shape that costs as much as the product:
    /// `x Wᵀ` then reads `Wᵀ` as it is stored, and the backward's `g W` pays the cheaper
    /// repacking of the wide side (BENCHMARKS.md, "Down projections stored transposed").
    pub fn dense(w: Tensor) -> Result<Self> {
        let (out, inp) = w.dims2()?;
        if w.device().is_cpu() && inp > out {
            return Ok(Self::Dense(w.t()?.contiguous()?.t()?));
        }
        Ok(Self::Dense(w))
    }

    /// `(out, in)`.
    pub fn shape(&self) -> Result<(usize, usize)> {
        match self {
            Self::Dense(w) => Ok(w.dims2()?),
            Self::Quant(q) => Ok(q.shape()),
        }
    }

    /// The dtype products come out in.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Dense(w) => w.dtype(),
            Self::Quant(q) => q.dtype(),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quant(_))
    }

    /// The full weight in the compute dtype (dequantized if needed), row-major.
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(w.contiguous()?),
            Self::Quant(q) => q.dequantize(),
        }
    }

    /// Bytes the stored weight occupies.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Self::Quant(q) => q.size_in_bytes(),
        }
    }

    /// Row ranges `(start, len)` in which the weight is best walked.
    pub fn block_ranges(&self) -> Result<Vec<(usize, usize)>> {
        match self {
            Self::Dense(w) => {
                let rows = w.dims2()?.0;
                Ok((0..rows)
                    .step_by(DENSE_BLOCK_ROWS)
                    .map(|r0| (r0, DENSE_BLOCK_ROWS.min(rows - r0)))
                    .collect())
            }
            Self::Quant(q) => Ok(q.block_ranges()),
        }
    }

    /// Rows of block `index` (see [`Self::block_ranges`]) in the compute dtype.
    pub fn block(&self, index: usize, range: (usize, usize)) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(w.narrow(0, range.0, range.1)?),
            Self::Quant(q) => q.dequantize_block(index),
        }
    }

    /// `x Wᵀ` outside the graph (no backward).
    pub fn product_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(gemm::matmul_t(&x.detach(), w)?),
            Self::Quant(q) => q.matmul_t(&x.detach()),
        }
    }

    /// `g W`: the input gradient of `x Wᵀ` for an output gradient `g: [n, out]`.
    pub fn grad_input(&self, g: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(gemm::matmul(&g.to_dtype(w.dtype())?, w)?),
            Self::Quant(q) => q.grad_input(g),
        }
    }

    /// `x Wᵀ` for `x: [n, in]`, whose backward computes only the input gradient `grad · W`
    /// (block by block for a quantized weight). Candle's matmul backward always computes a
    /// gradient for both operands (`backprop.rs`, `Op::Matmul`), which for a frozen base is
    /// a wasted `[out, in]` product and buffer per layer.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        self.with_input_grad(x, Value::Tensor(self.product_t(x)?))
    }

    /// [`FrozenWeight::matmul_t`]'s backward with a zero value (the product is not computed),
    /// for a checkpoint replay whose output value is never read.
    pub fn matmul_t_graph_only(&self, x: &Tensor) -> Result<Tensor> {
        let (out, _) = self.shape()?;
        let y = Value::Zeros((x.dim(0)?, out).into(), self.dtype());
        self.with_input_grad(x, y)
    }

    /// `y` as the value of an op over `x` whose backward is the input gradient `grad · W`.
    fn with_input_grad(&self, x: &Tensor, y: Value) -> Result<Tensor> {
        let w = self.clone();
        with_backward_value("frozen-matmul", y, &[x], move |_, _, g| {
            let gx = w.grad_input(g)?;
            Ok(vec![Some(gx)])
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::testutil::max_abs_diff;

    /// A weight with more inputs than outputs is stored transposed on the CPU, and its products,
    /// input gradient and dense form are those of the row-major weight.
    #[test]
    fn a_down_projection_stored_transposed_gives_the_same_products() -> Result<()> {
        let dev = Device::Cpu;
        for (out, inp) in [(3, 7), (7, 3), (4, 4)] {
            let w = Tensor::randn(0f32, 1., (out, inp), &dev)?;
            let (rows, dense) = (
                FrozenWeight::Dense(w.clone()),
                FrozenWeight::dense(w.clone())?,
            );
            let FrozenWeight::Dense(stored) = &dense else {
                panic!("a dense weight came back quantized");
            };
            assert_eq!(stored.is_contiguous(), inp <= out, "{out}x{inp}");
            assert_eq!(dense.shape()?, (out, inp));
            assert!(dense.to_dense()?.is_contiguous());
            assert_eq!(max_abs_diff(&dense.to_dense()?, &w)?, 0.0);
            for m in [1, 5, 300] {
                let x = Var::from_tensor(&Tensor::randn(0f32, 1., (m, inp), &dev)?)?;
                let g = Tensor::randn(0f32, 1., (m, out), &dev)?;
                let run = |fw: &FrozenWeight| -> Result<(Tensor, Tensor)> {
                    let y = fw.matmul_t(x.as_tensor())?;
                    let grads = (&y * &g)?.sum_all()?.backward()?;
                    let gx = grads.get(x.as_tensor()).cloned();
                    Ok((y, gx.ok_or(crate::Error::Msg("no gradient".into()))?))
                };
                let ((y0, g0), (y1, g1)) = (run(&rows)?, run(&dense)?);
                assert!(max_abs_diff(&y0, &y1)? < 1e-5, "{out}x{inp}, m = {m}");
                assert!(max_abs_diff(&g0, &g1)? < 1e-5, "{out}x{inp}, m = {m}");
            }
        }
        Ok(())
    }
}
