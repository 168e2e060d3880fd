//! NF4 dequantization on the device (`kernels/nf4.cu`): a QLoRA base weight kept on the GPU in
//! bitsandbytes' layout ([`crate::quant::nf4::Nf4Matrix`]), one row block at a time dequantized
//! to the compute dtype right before its GEMM (forward product and input gradient).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor};

use super::cpu_view;
use super::launch::{self, Launch};
use crate::quant::nf4::{dequant_tables, Nf4Matrix, NF4_ABSMAX_BLOCK, NF4_BLOCK};
use crate::Result;

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
