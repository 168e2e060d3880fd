//! The NF4 layout (bitsandbytes' blocks, levels and absmax map, in [`Nf4Matrix`]) and its
//! dequantization on the device (`kernels/nf4.cu`): a QLoRA base weight kept on the GPU, one row
//! block at a time dequantized to the compute dtype right before its GEMM. The layout lives here,
//! beside the kernel that reads it; `quant::nf4` quantizes into it.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use super::cpu_view;
use super::launch::{self, Launch};
use crate::{Error, Result};

/// Elements per absmax block.
pub const NF4_BLOCK: usize = 64;
/// Absmax values per second-level (double-quantization) block.
pub const NF4_ABSMAX_BLOCK: usize = 256;

/// bitsandbytes' NF4 levels (`get_4bit_type("nf4")`), index = 4-bit code.
#[rustfmt::skip]
pub const NF4_LEVELS: [f32; 16] = [
    -1.0, -0.6961928, -0.52507305, -0.3949175, -0.28444138, -0.18477343, -0.091050036, 0.0,
    0.0795803, 0.1609302, 0.2461123, 0.33791524, 0.44070983, 0.562617, 0.72295684, 1.0,
];

/// `create_dynamic_map(signed=True)` as bitsandbytes builds it with torch (f32 linspace), sorted.
/// Written out because torch's vectorized linspace rounds differently from the textbook formula.
#[rustfmt::skip]
pub const DYNAMIC_MAP: [f32; 256] = [
    -0.99296874, -0.9789063, -0.96484375, -0.9507812, -0.93671876, -0.92265624, -0.9085938, -0.89453125,
    -0.8804687, -0.86640626, -0.85234374, -0.8382813, -0.82421875, -0.8101562, -0.79609376, -0.78203124,
    -0.7679688, -0.75390625, -0.7398437, -0.72578126, -0.7117188, -0.6976563, -0.68359375, -0.6695312,
    -0.65546876, -0.6414063, -0.6273438, -0.61328125, -0.5992187, -0.58515626, -0.5710938, -0.5570313,
    -0.54296875, -0.5289062, -0.5148437, -0.50078124, -0.4867187, -0.47265625, -0.45859373, -0.44453126,
    -0.43046874, -0.41640624, -0.40234375, -0.38828123, -0.37421876, -0.36015624, -0.34609374, -0.33203125,
    -0.31796873, -0.30390626, -0.28984374, -0.27578127, -0.26171875, -0.24765624, -0.23359375, -0.21953125,
    -0.20546874, -0.19140625, -0.17734376, -0.16328125, -0.14921875, -0.13515624, -0.12109375, -0.107031256,
    -0.09859375, -0.09578126, -0.092968754, -0.09015625, -0.08734375, -0.08453125, -0.08171876, -0.07890625,
    -0.07609375, -0.07328125, -0.070468746, -0.067656256, -0.06484375, -0.06203125, -0.059218753, -0.05640625,
    -0.05359375, -0.05078125, -0.04796875, -0.04515625, -0.042343747, -0.03953125, -0.036718752, -0.03390625,
    -0.03109375, -0.028281251, -0.02546875, -0.02265625, -0.019843752, -0.01703125, -0.01421875, -0.01140625,
    -0.00971875, -0.009156249, -0.00859375, -0.00803125, -0.00746875, -0.00690625, -0.00634375, -0.00578125,
    -0.0052187503, -0.0046562497, -0.00409375, -0.0035312497, -0.00296875, -0.00240625, -0.00184375, -0.0012812499,
    -0.0009437501, -0.00083125, -0.00071875006, -0.0006062501, -0.00049375003, -0.00038125002, -0.00026875004, -0.00015625001,
    -8.875e-05, -6.625e-05, -4.375e-05, -2.1249998e-05, -7.75e-06, -3.2500002e-06, -5.5000004e-07, 0.0,
    5.5000004e-07, 3.2500002e-06, 7.75e-06, 2.1249998e-05, 4.375e-05, 6.625e-05, 8.875e-05, 0.00015625001,
    0.00026875004, 0.00038125002, 0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501, 0.0012812499,
    0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497, 0.0052187503, 0.00578125,
    0.00634375, 0.00690625, 0.00746875, 0.00803125, 0.00859375, 0.009156249, 0.00971875, 0.01140625,
    0.01421875, 0.01703125, 0.019843752, 0.02265625, 0.02546875, 0.028281251, 0.03109375, 0.03390625,
    0.036718752, 0.03953125, 0.042343747, 0.04515625, 0.04796875, 0.05078125, 0.05359375, 0.05640625,
    0.059218753, 0.06203125, 0.06484375, 0.067656256, 0.070468746, 0.07328125, 0.07609375, 0.07890625,
    0.08171876, 0.08453125, 0.08734375, 0.09015625, 0.092968754, 0.09578126, 0.09859375, 0.107031256,
    0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376, 0.19140625, 0.20546874, 0.21953125,
    0.23359375, 0.24765624, 0.26171875, 0.27578127, 0.28984374, 0.30390626, 0.31796873, 0.33203125,
    0.34609374, 0.36015624, 0.37421876, 0.38828123, 0.40234375, 0.41640624, 0.43046874, 0.44453126,
    0.45859373, 0.47265625, 0.4867187, 0.50078124, 0.5148437, 0.5289062, 0.54296875, 0.5570313,
    0.5710938, 0.58515626, 0.5992187, 0.61328125, 0.6273438, 0.6414063, 0.65546876, 0.6695312,
    0.68359375, 0.6976563, 0.7117188, 0.72578126, 0.7398437, 0.75390625, 0.7679688, 0.78203124,
    0.79609376, 0.8101562, 0.82421875, 0.8382813, 0.85234374, 0.86640626, 0.8804687, 0.89453125,
    0.9085938, 0.92265624, 0.93671876, 0.9507812, 0.96484375, 0.9789063, 0.99296874, 1.0,
];

/// A matrix quantized to NF4 with double-quantized absmax, in bitsandbytes' layout. Built by
/// the quantizer (`quant::nf4`, `Nf4Matrix::quantize`) or from its parts.
#[derive(Debug, Clone)]
pub struct Nf4Matrix {
    rows: usize,
    cols: usize,
    /// Two 4-bit codes per byte, row-major; element `2k` in the high nibble of byte `k`.
    codes: Vec<u8>,
    /// One 8-bit `DYNAMIC_MAP` index per 64-element block.
    absmax_codes: Vec<u8>,
    /// One f32 scale per `NF4_ABSMAX_BLOCK` absmax codes.
    absmax_scales: Vec<f32>,
    /// Mean of the absmaxes, subtracted before their 8-bit quantization.
    absmax_offset: f32,
}

impl Nf4Matrix {
    /// A `[rows, cols]` matrix from its arrays, checked against each other: `cols` a multiple
    /// of [`NF4_BLOCK`], two codes per byte, one absmax code per block, one scale per
    /// [`NF4_ABSMAX_BLOCK`] absmax codes.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        absmax_codes: Vec<u8>,
        absmax_scales: Vec<f32>,
        absmax_offset: f32,
    ) -> Result<Self> {
        let numel = rows.checked_mul(cols);
        let fits = cols.is_multiple_of(NF4_BLOCK)
            && numel.is_some_and(|n| {
                codes.len() == n / 2
                    && absmax_codes.len() == n / NF4_BLOCK
                    && absmax_scales.len() == absmax_codes.len().div_ceil(NF4_ABSMAX_BLOCK)
            });
        if !fits {
            return Err(Error::shape(
                format!("NF4: a [{rows}, {cols}] matrix"),
                "a code per 2 values, an absmax code per block and a scale per absmax block",
                format!(
                    "{} codes, {} absmax codes and {} scales",
                    codes.len(),
                    absmax_codes.len(),
                    absmax_scales.len()
                ),
            ));
        }
        Ok(Self {
            rows,
            cols,
            codes,
            absmax_codes,
            absmax_scales,
            absmax_offset,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed 4-bit codes, bitsandbytes' `quantize_4bit` output flattened.
    pub fn packed_codes(&self) -> &[u8] {
        &self.codes
    }

    /// The 8-bit absmax codes (bitsandbytes' `QuantState.absmax` when nested).
    pub fn absmax_codes(&self) -> &[u8] {
        &self.absmax_codes
    }

    /// The per-256 absmax scales (`QuantState.state2.absmax`).
    pub fn absmax_scales(&self) -> &[f32] {
        &self.absmax_scales
    }

    /// The mean subtracted from the absmaxes (`QuantState.offset`).
    pub fn absmax_offset(&self) -> f32 {
        self.absmax_offset
    }

    /// Dequantizes rows `r0..r1` into `out`, which must hold `(r1 - r0) * cols` values.
    pub fn dequantize_rows_into(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        if r0 > r1 || r1 > self.rows {
            return Err(Error::shape(
                format!("NF4: a matrix of {} rows", self.rows),
                "a row range within it",
                format!("rows {r0}..{r1}"),
            ));
        }
        if out.len() != (r1 - r0) * self.cols {
            return Err(Error::shape(
                format!(
                    "NF4: the output of rows {r0}..{r1} of {} columns",
                    self.cols
                ),
                (r1 - r0) * self.cols,
                format!("{} values", out.len()),
            ));
        }
        self.fill_blocks(r0 * (self.cols / NF4_BLOCK), out);
        Ok(())
    }

    /// The whole matrix, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.fill_blocks(0, &mut out);
        out
    }

    /// Bytes held (codes + absmax codes + scales + offset): what the format costs in memory.
    pub fn size_in_bytes(&self) -> usize {
        self.codes.len()
            + self.absmax_codes.len()
            + self.absmax_scales.len() * std::mem::size_of::<f32>()
            + std::mem::size_of::<f32>()
    }

    /// Dequantizes whole blocks from `first_block` on into `out` (a multiple of `NF4_BLOCK` long).
    fn fill_blocks(&self, first_block: usize, out: &mut [f32]) {
        let codes = &self.codes[first_block * NF4_BLOCK / 2..];
        for (i, (block_out, block_codes)) in out
            .chunks_exact_mut(NF4_BLOCK)
            .zip(codes.chunks_exact(NF4_BLOCK / 2))
            .enumerate()
        {
            // Scaling the 16 levels once per block gives the same products as bnb's per-element
            // `level * absmax`, and leaves the inner loop two table reads per byte.
            let scale = self.block_absmax(first_block + i);
            let levels = NF4_LEVELS.map(|l| l * scale);
            for (pair, &byte) in block_out.chunks_exact_mut(2).zip(block_codes) {
                pair[0] = levels[usize::from(byte >> 4)];
                pair[1] = levels[usize::from(byte & 0x0f)];
            }
        }
    }

    /// Absmax of block `b` as `dequantize_blockwise(...) + offset` computes it (two f32 roundings).
    pub fn block_absmax(&self, b: usize) -> f32 {
        DYNAMIC_MAP[usize::from(self.absmax_codes[b])] * self.absmax_scales[b / NF4_ABSMAX_BLOCK]
            + self.absmax_offset
    }
}

/// The 16 NF4 levels followed by the 256 values of the absmax map, as the dequantize kernel
/// (`kernels/nf4.cu`) reads them.
pub fn dequant_tables() -> Vec<f32> {
    NF4_LEVELS
        .iter()
        .chain(DYNAMIC_MAP.iter())
        .copied()
        .collect()
}

/// `nf4_dequant_*`: `n_bytes` packed bytes from 64-value block `first_block` on, to `2·n_bytes`
/// values of `dtype`, with absmax codes mapped through `offset`: buffers `codes`, `absmax`,
/// `scales` (one f32 per 256 absmax codes), `lut` (f32: 16 levels then the 256-entry absmax
/// map; read) and `out` (written). Each buffer starts at the matrix's start.
pub fn dequant_launch(
    dtype: DType,
    first_block: usize,
    n_bytes: usize,
    offset: f32,
) -> candle_core::Result<Launch> {
    // One past the last 64-value block the range touches.
    let end_block = first_block + (2 * n_bytes).div_ceil(NF4_BLOCK);
    let (codes, absmax, scales) = if n_bytes == 0 {
        (0, 0, 0)
    } else {
        let scales = (end_block - 1) / NF4_ABSMAX_BLOCK + 1;
        (first_block * NF4_BLOCK / 2 + n_bytes, end_block, 4 * scales)
    };
    Ok(Launch::new(
        format!("nf4_dequant_{}", launch::suffix(dtype)?),
        launch::elems(n_bytes),
    )
    .buf("codes", codes)
    .buf("absmax", absmax)
    .buf("scales", scales)
    .buf("lut", 4 * TABLES)
    .f32(offset)
    .u64(first_block)
    .u64(n_bytes)
    .buf("out", 2 * n_bytes * dtype.size_in_bytes()))
}

/// An NF4 matrix's arrays as device tensors.
#[derive(Debug, Clone)]
pub struct Nf4Device {
    cols: usize,
    /// Packed codes, u8 `[rows · cols / 2]`.
    codes: Tensor,
    /// One u8 absmax code per 64 values.
    absmax_codes: Tensor,
    /// f32: 16 NF4 levels, 256 absmax-map values, then one scale per 256 absmax codes.
    tables: Tensor,
    offset: f32,
}

const TABLES: usize = 16 + 256;

impl Nf4Device {
    /// Copies `m` to `device`.
    pub fn new(m: &Nf4Matrix, device: &Device) -> Result<Self> {
        let mut tables = dequant_tables();
        tables.extend_from_slice(m.absmax_scales());
        Ok(Self {
            cols: m.cols(),
            codes: Tensor::from_slice(m.packed_codes(), m.packed_codes().len(), device)?,
            absmax_codes: Tensor::from_slice(m.absmax_codes(), m.absmax_codes().len(), device)?,
            tables: Tensor::from_vec(tables.clone(), tables.len(), device)?,
            offset: m.absmax_offset(),
        })
    }

    /// Rows `r0..r0 + n` dequantized to `dtype`, `[n, cols]`.
    pub fn dequantize_rows(&self, r0: usize, n: usize, dtype: DType) -> Result<Tensor> {
        let op = Dequant {
            first_block: r0 * self.cols / NF4_BLOCK,
            n_bytes: n * self.cols / 2,
            offset: self.offset,
            dtype,
        };
        let flat = self
            .codes
            .apply_op3_no_bwd(&self.absmax_codes, &self.tables, &op)?;
        Ok(flat.reshape((n, self.cols))?)
    }
}

struct Dequant {
    first_block: usize,
    n_bytes: usize,
    offset: f32,
    dtype: DType,
}

impl Dequant {
    /// Whether arrays of these lengths hold the block range: the sizes of the launch, which
    /// the CUDA path checks its buffers against when it binds them.
    fn check(&self, codes: usize, absmax: usize, tables: usize) -> candle_core::Result<()> {
        let l = dequant_launch(self.dtype, self.first_block, self.n_bytes, self.offset)?;
        let have = [
            ("codes", codes),
            ("absmax", absmax),
            ("scales", 4 * tables.saturating_sub(TABLES)),
            ("lut", 4 * tables.min(TABLES)),
        ];
        for (name, bytes) in have {
            if l.size_of(name).is_some_and(|need| need > bytes) {
                candle_core::bail!("nf4-dequantize: block range outside the matrix ({name})");
            }
        }
        Ok(())
    }
}

impl CustomOp3 for Dequant {
    fn name(&self) -> &'static str {
        "nf4-dequantize"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let codes = cpu_view::<u8>(s1, l1, self.name())?;
        let absmax = cpu_view::<u8>(s2, l2, self.name())?;
        let tables = cpu_view::<f32>(s3, l3, self.name())?;
        self.check(codes.len(), absmax.len(), tables.len())?;
        let (levels, dynamic, scales) = (&tables[..16], &tables[16..TABLES], &tables[TABLES..]);
        let mut out = Vec::with_capacity(2 * self.n_bytes);
        for k in 0..self.n_bytes {
            let b = self.first_block + 2 * k / NF4_BLOCK;
            let a = dynamic[usize::from(absmax[b])] * scales[b / NF4_ABSMAX_BLOCK] + self.offset;
            let byte = codes[self.first_block * NF4_BLOCK / 2 + k];
            out.push(levels[usize::from(byte >> 4)] * a);
            out.push(levels[usize::from(byte & 15)] * a);
        }
        let t = Tensor::from_vec(out, 2 * self.n_bytes, &Device::Cpu)?.to_dtype(self.dtype)?;
        let (s, _) = t.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(c) => Ok((c.clone(), Shape::from(2 * self.n_bytes))),
            _ => candle_core::bail!("{}: not on the CPU", self.name()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{load, ptx, storage, view, Bufs};
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::CudaStorageSlice;
        let dev = s1.device();
        let codes = view(s1.as_cuda_slice::<u8>()?, l1, self.name())?;
        let absmax = view(s2.as_cuda_slice::<u8>()?, l2, self.name())?;
        let tables = view(s3.as_cuda_slice::<f32>()?, l3, self.name())?;
        // The launch checks the buffers against its sizes when it binds them.
        let (lut, scales) = (tables.slice(0..TABLES), tables.slice(TABLES..));
        let plan = dequant_launch(self.dtype, self.first_block, self.n_bytes, self.offset)?;
        let func = load(dev, "nf4", ptx::NF4, &plan)?;
        let n = 2 * self.n_bytes;
        macro_rules! dequant_into {
            ($T:ty, $wrap:path) => {{
                // SAFETY: every element is written by the kernel.
                let mut out = unsafe { dev.alloc::<$T>(n)? };
                let mut bufs = Bufs::new(&func);
                bufs.read("codes", &codes)
                    .read("absmax", &absmax)
                    .read("scales", &scales)
                    .read("lut", &lut)
                    .write("out", &mut out);
                bufs.launch(&plan)?;
                $wrap(out)
            }};
        }
        let slice = match self.dtype {
            DType::F32 => dequant_into!(f32, CudaStorageSlice::F32),
            DType::BF16 => dequant_into!(half::bf16, CudaStorageSlice::BF16),
            DType::F16 => dequant_into!(half::f16, CudaStorageSlice::F16),
            other => candle_core::bail!("{}: no kernel for {other:?}", self.name()),
        };
        Ok((storage(slice, dev), Shape::from(n)))
    }
}
