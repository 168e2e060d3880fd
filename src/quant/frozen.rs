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
    Dense(Tensor),
    Quant(Arc<QuantWeight>),
}

impl FrozenWeight {
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

    /// The full weight in the compute dtype (dequantized if needed).
    pub fn to_dense(&self) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(w.clone()),
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
