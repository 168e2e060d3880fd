//! Fused RMSNorm forward and input gradient (`kernels/rms_norm.cu`): one pass per row
//! instead of the unfused path's square, mean, add, sqrt, divide, cast and multiply tensors.
//! Same arithmetic as `model::norm::RmsNorm`: Llama rounds `x·r` to the input
//! dtype before the weight multiply, Gemma (`unit_offset`) scales by `1 + w` in f32.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType};

use super::launch::{self, Launch};
use super::{cpu_float_dispatch, cpu_view, round_to, Float};
use crate::Result;

/// `rms_norm_fwd_*` over `rows` rows of `cols`: buffers `x`, `w` (read) and `y` (written).
pub fn fwd_launch(
    dtype: DType,
    rows: usize,
    cols: usize,
    eps: f32,
    unit_offset: bool,
) -> candle_core::Result<Launch> {
    row_launch("fwd", &["x", "w", "y"], dtype, rows, cols, eps, unit_offset)
}

/// `rms_norm_bwd_*`: buffers `x`, `w`, `g` (the output gradient; read) and `dx` (written).
pub fn bwd_launch(
    dtype: DType,
    rows: usize,
    cols: usize,
    eps: f32,
    unit_offset: bool,
) -> candle_core::Result<Launch> {
    row_launch(
        "bwd",
        &["x", "w", "g", "dx"],
        dtype,
        rows,
        cols,
        eps,
        unit_offset,
    )
}

/// A block per row; the buffers `bufs` (each `rows × cols`, but the weight `w` of `cols`),
/// then the kernels' common scalars.
fn row_launch(
    pass: &str,
    bufs: &[&'static str],
    dtype: DType,
    rows: usize,
    cols: usize,
    eps: f32,
    unit_offset: bool,
) -> candle_core::Result<Launch> {
    let es = dtype.size_in_bytes();
    let kernel = format!("rms_norm_{pass}_{}", launch::suffix(dtype)?);
    let mut l = Launch::new(kernel, launch::rows(rows, launch::row_threads(cols)));
    for &name in bufs {
        let elems = if name == "w" { cols } else { rows * cols };
        l = l.buf(name, elems * es);
    }
    Ok(l.i32(cols as i32).f32(eps).i32(unit_offset as i32))
}

/// `RMSNorm(x) ∘ w` over the last dimension of a contiguous `x` (no autograd).
pub fn forward(x: &Tensor, w: &Tensor, eps: f64, unit_offset: bool) -> Result<Tensor> {
    let x = x.detach().contiguous()?;
    let w = w.detach().to_dtype(x.dtype())?.contiguous()?;
    Ok(x.apply_op2_no_bwd(&w, &forward_op(eps, unit_offset))?)
}

/// The op of [`forward`] over a contiguous `x` and `w` in `x`'s dtype, for an op of
/// [`crate::autograd::with_backward_value`] that writes its result directly.
pub fn forward_op(eps: f64, unit_offset: bool) -> impl CustomOp2 + Send + Sync + 'static {
    Fwd {
        eps: eps as f32,
        unit_offset,
    }
}

/// The input gradient of [`forward`] for an output gradient `g` (no autograd).
pub fn backward(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64, unit_offset: bool) -> Result<Tensor> {
    let x = x.detach().contiguous()?;
    let w = w.detach().to_dtype(x.dtype())?.contiguous()?;
    let g = g.detach().to_dtype(x.dtype())?.contiguous()?;
    let op = Bwd {
        eps: eps as f32,
        unit_offset,
    };
    Ok(x.apply_op3_no_bwd(&w, &g, &op)?)
}

struct Fwd {
    eps: f32,
    unit_offset: bool,
}

struct Bwd {
    eps: f32,
    unit_offset: bool,
}

fn cols_of(l: &Layout) -> candle_core::Result<usize> {
    match l.dims().last() {
        Some(&c) if c > 0 => Ok(c),
        _ => candle_core::bail!("rms-norm: empty last dimension"),
    }
}

fn weight_of<T: Float>(w: &[T], i: usize, unit_offset: bool) -> f32 {
    if unit_offset {
        1.0 + w[i].f()
    } else {
        w[i].f()
    }
}

fn fwd_rows<T: Float>(x: &[T], w: &[T], cols: usize, eps: f32, unit_offset: bool) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(cols) {
        let ss: f32 = row.iter().map(|v| v.f() * v.f()).sum();
        let r = 1.0 / (ss / cols as f32 + eps).sqrt();
        y.extend(row.iter().enumerate().map(|(i, v)| {
            let n = v.f() * r;
            if unit_offset {
                T::of(n * weight_of(w, i, true))
            } else {
                T::of(round_to::<T>(n) * w[i].f())
            }
        }));
    }
    y
}

fn bwd_rows<T: Float>(
    x: &[T],
    w: &[T],
    g: &[T],
    cols: usize,
    eps: f32,
    unit_offset: bool,
) -> Vec<T> {
    let mut dx = Vec::with_capacity(x.len());
    for (xr, gr) in x.chunks_exact(cols).zip(g.chunks_exact(cols)) {
        let (mut ss, mut hx) = (0f32, 0f32);
        for (i, (v, g)) in xr.iter().zip(gr).enumerate() {
            ss += v.f() * v.f();
            hx += g.f() * weight_of(w, i, unit_offset) * v.f();
        }
        let r = 1.0 / (ss / cols as f32 + eps).sqrt();
        let c = r * r * r * hx / cols as f32;
        dx.extend(
            xr.iter()
                .zip(gr)
                .enumerate()
                .map(|(i, (v, g))| T::of(g.f() * weight_of(w, i, unit_offset) * r - v.f() * c)),
        );
    }
    dx
}

impl CustomOp2 for Fwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = cols_of(l1)?;
        cpu_float_dispatch!(s1, self.name(), T => {
            let x = cpu_view::<T>(s1, l1, self.name())?;
            let w = cpu_view::<T>(s2, l2, self.name())?;
            let y = fwd_rows(x, w, cols, self.eps, self.unit_offset);
            Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{cuda_float_dispatch, load, ptx, storage, view, Bufs};
        let dev = s1.device();
        let cols = cols_of(l1)?;
        let rows = l1.shape().elem_count() / cols;
        let plan = fwd_launch(s1.dtype(), rows, cols, self.eps, self.unit_offset)?;
        let func = load(dev, "rms_norm", ptx::RMS_NORM, &plan)?;
        cuda_float_dispatch!(s1, self.name(), |xs: T, wrap| {
            let x = view(xs, l1, self.name())?;
            let w = view(s2.as_cuda_slice::<T>()?, l2, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut y = unsafe { dev.alloc::<T>(rows * cols)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("x", &x).read("w", &w).write("y", &mut y);
            bufs.launch(&plan)?;
            Ok((storage(wrap(y), dev), l1.shape().clone()))
        })
    }
}

impl CustomOp3 for Bwd {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
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
        let cols = cols_of(l1)?;
        cpu_float_dispatch!(s1, self.name(), T => {
            let x = cpu_view::<T>(s1, l1, self.name())?;
            let w = cpu_view::<T>(s2, l2, self.name())?;
            let g = cpu_view::<T>(s3, l3, self.name())?;
            let dx = bwd_rows(x, w, g, cols, self.eps, self.unit_offset);
            Ok((T::to_cpu_storage_owned(dx), l1.shape().clone()))
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
        let dev = s1.device();
        let cols = cols_of(l1)?;
        let rows = l1.shape().elem_count() / cols;
        let plan = bwd_launch(s1.dtype(), rows, cols, self.eps, self.unit_offset)?;
        let func = load(dev, "rms_norm", ptx::RMS_NORM, &plan)?;
        cuda_float_dispatch!(s1, self.name(), |xs: T, wrap| {
            let x = view(xs, l1, self.name())?;
            let w = view(s2.as_cuda_slice::<T>()?, l2, self.name())?;
            let g = view(s3.as_cuda_slice::<T>()?, l3, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut dx = unsafe { dev.alloc::<T>(rows * cols)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("x", &x)
                .read("w", &w)
                .read("g", &g)
                .write("dx", &mut dx);
            bufs.launch(&plan)?;
            Ok((storage(wrap(dx), dev), l1.shape().clone()))
        })
    }
}
