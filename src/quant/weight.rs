//! A frozen `[out, in]` weight stored quantized, in row blocks. Every use dequantizes one block of
//! rows at a time, multiplies and drops it, so a full-precision copy of a large matrix never
//! exists: the forward product and the input gradient `grad · W` are assembled block by block (the
//! weight itself gets no gradient). bitsandbytes' QLoRA trains the same way: its 4-bit matmul
//! dequantizes to the compute dtype and runs a dense GEMM.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::nf4::Nf4Matrix;
use super::Quantize;
use crate::autograd::accumulate;
use crate::gemm;
use crate::kernels::nf4::Nf4Device;
use crate::kernels::{self, Kernel};
use crate::{Error, Result};

/// Elements dequantized at once on the CPU: 4 Mi (16 MiB in f32).
pub const BLOCK_ELEMS: usize = 4 << 20;

/// Elements dequantized at once on a GPU: 64 Mi (128 MiB in bf16), so that every weight of an
/// 8B Llama (the largest, 14336 × 4096, is 56 Mi) is one block and its products are one GEMM
/// each way, as bitsandbytes does. Several blocks cost a copy of each column range of the
/// output gradient (candle's CUDA matmul takes no strided column range) and an add per block.
pub const GPU_BLOCK_ELEMS: usize = 64 << 20;

enum Blocks {
    Ggml(Vec<QTensor>),
    /// Kept on the host; on a CUDA device also as device arrays that the NF4 kernel
    /// dequantizes in place of the host loop and upload.
    Nf4(Nf4Matrix, Option<Nf4Device>),
}

/// A quantized frozen weight.
pub struct QuantWeight {
    rows: usize,
    cols: usize,
    block_rows: usize,
    blocks: Blocks,
    /// The dtype blocks are dequantized to (the model's compute dtype).
    dtype: DType,
    device: Device,
    /// What the blocks are, for messages and benchmarks (`nf4`, `q4_1 (GGUF)`).
    label: String,
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantWeight({} [{}, {}])",
            self.label, self.rows, self.cols
        )
    }
}

/// Rows per dequantization block for rows of `cols` values on `device`.
fn block_rows_for(cols: usize, device: &Device) -> usize {
    let elems = if device.is_cpu() {
        BLOCK_ELEMS
    } else {
        GPU_BLOCK_ELEMS
    };
    (elems / cols.max(1)).max(1)
}

impl QuantWeight {
    /// Quantizes a dense `[out, in]` weight (`name` is used in errors).
    pub fn quantize(name: &str, w: &Tensor, format: Quantize, dtype: DType) -> Result<Self> {
        let cols = w.dims2()?.1;
        Self::quantize_in_blocks(name, w, format, dtype, block_rows_for(cols, w.device()))
    }

    /// [`Self::quantize`] with `block_rows` rows per dequantization block.
    pub fn quantize_in_blocks(
        name: &str,
        w: &Tensor,
        format: Quantize,
        dtype: DType,
        block_rows: usize,
    ) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        let block_rows = block_rows.max(1);
        let multiple = format.row_multiple();
        if !cols.is_multiple_of(multiple) {
            return Err(Error::unsupported(
                format!("cannot quantize `{name}` to {format}"),
                format!(
                    "its rows have {cols} values, which is not a multiple of {multiple}; use \
                     quantize = \"nf4\" or \"q4_0\" for this model"
                ),
            ));
        }
        let device = w.device().clone();
        let blocks = match format {
            Quantize::Nf4 => {
                let data = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let m = Nf4Matrix::quantize(&data, rows, cols)?;
                let on_device = device
                    .is_cuda()
                    .then(|| Nf4Device::new(&m, &device))
                    .transpose()?;
                Blocks::Nf4(m, on_device)
            }
            _ => {
                let g = format.ggml().ok_or_else(|| {
                    Error::unsupported(format!("quantize = \"{format}\""), "not a block format")
                })?;
                let mut blocks = Vec::new();
                for r0 in (0..rows).step_by(block_rows) {
                    let n = block_rows.min(rows - r0);
                    // A fresh offset-0 buffer: candle's quantizer reads the whole storage of
                    // its source, ignoring a view's offset.
                    let rows_f32 = w.narrow(0, r0, n)?.to_dtype(DType::F32)?;
                    let part = Tensor::from_vec(
                        rows_f32.flatten_all()?.to_vec1::<f32>()?,
                        (n, cols),
                        &Device::Cpu,
                    )?;
                    blocks.push(QTensor::quantize_onto(&part, g, &device)?);
                }
                Blocks::Ggml(blocks)
            }
        };
        Ok(Self {
            rows,
            cols,
            block_rows,
            blocks,
            dtype,
            device,
            label: format.name().to_string(),
        })
    }

    /// Keeps a GGUF tensor's own blocks. `row_order[i]` is the stored row that becomes
    /// row `i` (llama.cpp permutes Llama's q/k rows; moving whole rows of blocks undoes
    /// that exactly, without dequantizing).
    pub fn from_qtensor(
        q: &QTensor,
        row_order: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let g = q.dtype();
        if !cols.is_multiple_of(g.block_size()) {
            return Err(Error::shape(
                format!("a {g:?} tensor"),
                format!("rows of whole {}-value blocks", g.block_size()),
                format!("rows of {cols} values"),
            ));
        }
        let row_bytes = cols / g.block_size() * g.type_size();
        let data = q.data()?;
        if data.len() != rows * row_bytes {
            return Err(Error::shape(
                format!("a {g:?} tensor [{rows}, {cols}]"),
                rows * row_bytes,
                format!("{} bytes", data.len()),
            ));
        }
        let data: Cow<[u8]> = match row_order {
            None => data,
            Some(order) => {
                if order.len() != rows {
                    return Err(Error::shape(
                        "the row order",
                        format!("one per row ({rows})"),
                        format!("{} rows", order.len()),
                    ));
                }
                let mut out = Vec::with_capacity(data.len());
                for &r in order {
                    out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
                }
                Cow::Owned(out)
            }
        };
        let block_rows = block_rows_for(cols, device);
        let mut blocks = Vec::new();
        for r0 in (0..rows).step_by(block_rows) {
            let n = block_rows.min(rows - r0);
            let bytes = &data[r0 * row_bytes..(r0 + n) * row_bytes];
            let storage = QStorage::from_data(Cow::Borrowed(bytes), device, g)?;
            blocks.push(QTensor::new(storage, (n, cols))?);
        }
        Ok(Self {
            rows,
            cols,
            block_rows,
            blocks: Blocks::Ggml(blocks),
            dtype,
            device: device.clone(),
            label: format!("{} (GGUF)", ggml_name(g)),
        })
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// How many row blocks the weight is stored in.
    pub fn block_count(&self) -> usize {
        self.rows.div_ceil(self.block_rows)
    }

    /// Row ranges `(start, len)` of the blocks.
    pub fn block_ranges(&self) -> Vec<(usize, usize)> {
        (0..self.rows)
            .step_by(self.block_rows)
            .map(|r0| (r0, self.block_rows.min(self.rows - r0)))
            .collect()
    }

    /// Rows `start..start + len` of one block, dequantized to the compute dtype.
    pub fn dequantize_block(&self, index: usize) -> Result<Tensor> {
        if index >= self.block_count() {
            return Err(Error::Msg(format!("no weight block {index}")));
        }
        let r0 = index * self.block_rows;
        let n = self.block_rows.min(self.rows - r0);
        let t = match &self.blocks {
            Blocks::Ggml(b) => b[index].dequantize(&self.device)?,
            Blocks::Nf4(_, Some(d)) if kernels::enabled(Kernel::Nf4) => {
                return d.dequantize_rows(r0, n, self.dtype);
            }
            Blocks::Nf4(m, _) => {
                let mut out = vec![0f32; n * self.cols];
                m.dequantize_rows_into(r0, r0 + n, &mut out)?;
                Tensor::from_vec(out, (n, self.cols), &self.device)?
            }
        };
        Ok(t.to_dtype(self.dtype)?)
    }

    /// The whole weight, dequantized (for merged exports and tests).
    pub fn dequantize(&self) -> Result<Tensor> {
        let parts = (0..self.block_count())
            .map(|i| self.dequantize_block(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Bytes the quantized blocks occupy.
    pub fn size_in_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Ggml(b) => b.iter().map(QTensor::storage_size_in_bytes).sum(),
            Blocks::Nf4(m, _) => m.size_in_bytes(),
        }
    }

    /// `x Wᵀ` for `x: [n, in]`, block by block.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(self.dtype)?;
        let mut parts = Vec::new();
        for i in 0..self.block_count() {
            let w = self.dequantize_block(i)?;
            parts.push(gemm::matmul_t(&x, &w)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// `g W` for `g: [n, out]`: the input gradient of `x Wᵀ`, block by block.
    pub fn grad_input(&self, g: &Tensor) -> Result<Tensor> {
        let g = g.to_dtype(self.dtype)?;
        let mut acc: Option<Tensor> = None;
        for (i, (r0, n)) in self.block_ranges().into_iter().enumerate() {
            let w = self.dequantize_block(i)?;
            // A column range of `g` is a layout CUDA's GEMM refuses: copy it (one block, the
            // usual case on a GPU, is all of `g`).
            let part = if n == self.rows {
                g.clone()
            } else {
                g.narrow(1, r0, n)?.contiguous()?
            };
            accumulate(&mut acc, gemm::matmul(&part, &w)?)?;
        }
        acc.ok_or_else(|| Error::Msg("an empty quantized weight".into()))
    }
}

fn ggml_name(g: GgmlDType) -> String {
    format!("{g:?}").to_lowercase()
}
