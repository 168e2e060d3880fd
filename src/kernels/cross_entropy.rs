//! Fused cross-entropy over one vocabulary block of logits (`kernels/cross_entropy.cu`), for
//! [`crate::eval::loss::head_nll`]: the head's `[n, block]` logits come from one GEMM, and
//! this folds them into each row's running `(max, sum of exp, target logit)` in one pass,
//! or turns them into the block's logit gradient `(softmax − onehot)·grad` in one pass,
//! reading the logits in their own dtype (no f32 copy, no one-hot tensor).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType};

use super::launch::{self, Launch};
use super::{cpu_float_dispatch, cpu_view, Float};
use crate::Result;

/// `ce_block_fwd_*` for `n` rows of a block of `len` logits of `dtype` starting at vocabulary
/// id `start`, soft-capped at `cap` (0: none): buffers `stats`, `logits`, `targets` (read) and
/// `stats_out` (written, `[n, 3]` f32).
pub fn stats_launch(
    dtype: DType,
    n: usize,
    len: usize,
    start: usize,
    cap: f32,
) -> candle_core::Result<Launch> {
    let geometry = launch::rows(n, launch::row_threads(len));
    Ok(
        Launch::new(format!("ce_block_fwd_{}", launch::suffix(dtype)?), geometry)
            .buf("stats", n * 3 * 4)
            .buf("logits", n * len * dtype.size_in_bytes())
            .buf("targets", n * 4)
            .buf("stats_out", n * 3 * 4)
            .i32(len as i32)
            .i32(start as i32)
            .f32(cap),
    )
}

/// `ce_block_bwd_*`: buffers `logits`, `targets`, `lse_grad` (`[n, 2]` f32; read) and `dl`
/// (written, the block's `[n, len]` gradient in `dtype`).
pub fn grad_launch(
    dtype: DType,
    n: usize,
    len: usize,
    start: usize,
    cap: f32,
) -> candle_core::Result<Launch> {
    let bytes = n * len * dtype.size_in_bytes();
    Ok(Launch::new(
        format!("ce_block_bwd_{}", launch::suffix(dtype)?),
        launch::elems(n * len),
    )
    .buf("logits", bytes)
    .buf("targets", n * 4)
    .buf("lse_grad", n * 2 * 4)
    .buf("dl", bytes)
    .i32(n as i32)
    .i32(len as i32)
    .i32(start as i32)
    .f32(cap))
}

/// Running statistics `[n, 3]` (f32) before any block: max −∞, sum 0, target logit 0.
pub fn initial_stats(n: usize, device: &candle_core::Device) -> Result<Tensor> {
    let init: Vec<f32> = (0..n).flat_map(|_| [f32::NEG_INFINITY, 0.0, 0.0]).collect();
    Ok(Tensor::from_vec(init, (n, 3), device)?)
}

/// Folds `logits: [n, len]` (vocabulary ids `start..start + len`, soft-capped first when
/// `softcap` is set) into `stats: [n, 3]`; `targets: [n]` u32 absolute ids.
pub fn block_stats(
    stats: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    start: usize,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let op = Stats {
        start,
        cap: softcap.unwrap_or(0.0) as f32,
    };
    let logits = logits.detach().contiguous()?;
    Ok(stats
        .detach()
        .contiguous()?
        .apply_op3_no_bwd(&logits, &targets.contiguous()?, &op)?)
}

/// `d loss / d logits` of one block: `(exp(z − lse) − onehot)·grad (·(1 − (z/cap)²))`, in the
/// logits' dtype, with `lse_grad: [n, 2]` f32 = each row's `(lse, grad)`.
pub fn block_grad(
    logits: &Tensor,
    targets: &Tensor,
    lse_grad: &Tensor,
    start: usize,
    softcap: Option<f64>,
) -> Result<Tensor> {
    let op = Grad {
        start,
        cap: softcap.unwrap_or(0.0) as f32,
    };
    let lse_grad = lse_grad.to_dtype(DType::F32)?.contiguous()?;
    Ok(logits
        .detach()
        .contiguous()?
        .apply_op3_no_bwd(&targets.contiguous()?, &lse_grad, &op)?)
}

struct Stats {
    start: usize,
    cap: f32,
}

struct Grad {
    start: usize,
    cap: f32,
}

fn capped(l: f32, cap: f32) -> f32 {
    if cap > 0.0 {
        cap * (l / cap).tanh()
    } else {
        l
    }
}

fn rows_cols(l: &Layout, op: &str) -> candle_core::Result<(usize, usize)> {
    match l.dims() {
        [n, len] => Ok((*n, *len)),
        d => candle_core::bail!("{op}: expected [n, len] logits, got {d:?}"),
    }
}

impl CustomOp3 for Stats {
    fn name(&self) -> &'static str {
        "fused-ce-block"
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
        let (n, len) = rows_cols(l2, self.name())?;
        let stats = cpu_view::<f32>(s1, l1, self.name())?;
        let targets = cpu_view::<u32>(s3, l3, self.name())?;
        if stats.len() != n * 3 || targets.len() != n {
            candle_core::bail!("{}: stats/targets do not match {n} rows", self.name());
        }
        cpu_float_dispatch!(s2, self.name(), T => {
            let logits = cpu_view::<T>(s2, l2, self.name())?;
            let mut out = Vec::with_capacity(n * 3);
            for (i, row) in logits.chunks_exact(len).enumerate() {
                let m = row.iter().map(|l| capped(l.f(), self.cap)).fold(f32::NEG_INFINITY, f32::max);
                let s: f32 = row.iter().map(|l| (capped(l.f(), self.cap) - m).exp()).sum();
                let (m0, s0, t0) = (stats[3 * i], stats[3 * i + 1], stats[3 * i + 2]);
                let m1 = m0.max(m);
                let s1 = if s0 > 0.0 { s0 * (m0 - m1).exp() } else { 0.0 } + s * (m - m1).exp();
                let t = targets[i] as usize;
                let tl = if t >= self.start && t < self.start + len {
                    capped(row[t - self.start].f(), self.cap)
                } else {
                    t0
                };
                out.extend([m1, s1, tl]);
            }
            Ok((CpuStorage::F32(out), l1.shape().clone()))
        })
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
        use super::cuda::{cuda_float_dispatch, load, ptx, storage, view, Bufs};
        use candle_core::cuda_backend::CudaStorageSlice;
        let (n, len) = rows_cols(l2, self.name())?;
        let dev = s1.device();
        let plan = stats_launch(s2.dtype(), n, len, self.start, self.cap)?;
        let func = load(dev, "cross_entropy", ptx::CROSS_ENTROPY, &plan)?;
        let stats = view(s1.as_cuda_slice::<f32>()?, l1, self.name())?;
        let targets = view(s3.as_cuda_slice::<u32>()?, l3, self.name())?;
        // SAFETY: every element is written by the kernel.
        let mut out = unsafe { dev.alloc::<f32>(n * 3)? };
        cuda_float_dispatch!(s2, self.name(), |ls: _T, _wrap| {
            let logits = view(ls, l2, self.name())?;
            let mut bufs = Bufs::new(&func);
            bufs.read("stats", &stats)
                .read("logits", &logits)
                .read("targets", &targets)
                .write("stats_out", &mut out);
            bufs.launch(&plan)?;
        });
        Ok((storage(CudaStorageSlice::F32(out), dev), l1.shape().clone()))
    }
}

impl CustomOp3 for Grad {
    fn name(&self) -> &'static str {
        "fused-ce-block-grad"
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
        let (n, len) = rows_cols(l1, self.name())?;
        let targets = cpu_view::<u32>(s2, l2, self.name())?;
        let lg = cpu_view::<f32>(s3, l3, self.name())?;
        if targets.len() != n || lg.len() != 2 * n {
            candle_core::bail!("{}: targets/lse do not match {n} rows", self.name());
        }
        cpu_float_dispatch!(s1, self.name(), T => {
            let logits = cpu_view::<T>(s1, l1, self.name())?;
            let mut out = Vec::with_capacity(n * len);
            for (i, row) in logits.chunks_exact(len).enumerate() {
                let (lse, g) = (lg[2 * i], lg[2 * i + 1]);
                let t = targets[i] as usize;
                out.extend(row.iter().enumerate().map(|(j, l)| {
                    let z = capped(l.f(), self.cap);
                    let hit = if self.start + j == t { 1.0 } else { 0.0 };
                    let mut d = ((z - lse).exp() - hit) * g;
                    if self.cap > 0.0 {
                        d *= 1.0 - (z / self.cap) * (z / self.cap);
                    }
                    T::of(d)
                }));
            }
            Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
        })
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
        use super::cuda::{cuda_float_dispatch, load, ptx, storage, view, Bufs};
        let (n, len) = rows_cols(l1, self.name())?;
        let dev = s1.device();
        let plan = grad_launch(s1.dtype(), n, len, self.start, self.cap)?;
        let func = load(dev, "cross_entropy", ptx::CROSS_ENTROPY, &plan)?;
        let targets = view(s2.as_cuda_slice::<u32>()?, l2, self.name())?;
        let lg = view(s3.as_cuda_slice::<f32>()?, l3, self.name())?;
        cuda_float_dispatch!(s1, self.name(), |ls: T, wrap| {
            let logits = view(ls, l1, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>(n * len)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("logits", &logits)
                .read("targets", &targets)
                .read("lse_grad", &lg)
                .write("dl", &mut out);
            bufs.launch(&plan)?;
            Ok((storage(wrap(out), dev), l1.shape().clone()))
        })
    }
}
