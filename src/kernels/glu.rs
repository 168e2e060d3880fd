//! Fused gated-MLP activation (`kernels/glu.cu`): `act(g)·u` for SwiGLU (`silu`) and GeGLU
//! (`gelu` with the tanh approximation), and both input gradients in one pass. The unfused path
//! keeps `g`, `act(g)` and `u` for the backward pass; this keeps `g` and `u`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, WithDType};

use super::launch::{self, Launch};
use super::{cpu_float_dispatch, cpu_view, round_to, same_shape, Float};
use crate::Result;

/// The activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// Llama's SwiGLU.
    Silu,
    /// Gemma's GeGLU with `gelu_pytorch_tanh` (Candle's `gelu` is the tanh approximation).
    GeluTanh,
}

/// `glu_fwd_*` over `n` elements: buffers `g`, `u` (read) and `y` (written).
pub fn fwd_launch(dtype: DType, n: usize, act: MlpActivation) -> candle_core::Result<Launch> {
    let bytes = n * dtype.size_in_bytes();
    Ok(Launch::new(
        format!("glu_fwd_{}", launch::suffix(dtype)?),
        launch::elems(n),
    )
    .buf("g", bytes)
    .buf("u", bytes)
    .buf("y", bytes)
    .u64(n)
    .i32(act_code(act)))
}

/// `glu_bwd_*`: buffers `g`, `u`, `dy` (read) and `dg_du` (written: `2n` elements, `dg` then
/// `du`).
pub fn bwd_launch(dtype: DType, n: usize, act: MlpActivation) -> candle_core::Result<Launch> {
    let bytes = n * dtype.size_in_bytes();
    Ok(Launch::new(
        format!("glu_bwd_{}", launch::suffix(dtype)?),
        launch::elems(n),
    )
    .buf("g", bytes)
    .buf("u", bytes)
    .buf("dy", bytes)
    .buf("dg_du", 2 * bytes)
    .u64(n)
    .i32(act_code(act)))
}

/// `act(g)·u` for contiguous `g` and `u` of one shape (no autograd).
pub fn forward(g: &Tensor, u: &Tensor, act: MlpActivation) -> Result<Tensor> {
    let (g, u) = (g.detach().contiguous()?, u.detach().contiguous()?);
    Ok(g.apply_op2_no_bwd(&u, &forward_op(act))?)
}

/// The op of [`forward`] over contiguous `g` and `u`, for an op of
/// [`crate::autograd::with_backward_value`] that writes its result directly.
pub fn forward_op(act: MlpActivation) -> impl CustomOp2 + Send + Sync + 'static {
    Glu { act }
}

/// `(dg, du)` of [`forward`] for an output gradient `dy` (no autograd).
pub fn backward(
    g: &Tensor,
    u: &Tensor,
    dy: &Tensor,
    act: MlpActivation,
) -> Result<(Tensor, Tensor)> {
    let (g, u) = (g.detach().contiguous()?, u.detach().contiguous()?);
    let dy = dy.detach().to_dtype(g.dtype())?.contiguous()?;
    let both = g.apply_op3_no_bwd(&u, &dy, &GluBwd { act })?;
    Ok((both.get(0)?, both.get(1)?))
}

struct Glu {
    act: MlpActivation,
}

struct GluBwd {
    act: MlpActivation,
}

fn act_code(act: MlpActivation) -> i32 {
    match act {
        MlpActivation::Silu => 0,
        MlpActivation::GeluTanh => 1,
    }
}

/// `(act(x), act'(x))` in f32.
fn act_and_grad(x: f32, act: MlpActivation) -> (f32, f32) {
    match act {
        MlpActivation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
        MlpActivation::GeluTanh => {
            let k = 0.797_884_6_f32; // sqrt(2 / pi)
            let t = (k * (x + 0.044715 * x * x * x)).tanh();
            let a = 0.5 * x * (1.0 + t);
            let da = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
            (a, da)
        }
    }
}

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "fused-glu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(l1, l2, self.name())?;
        cpu_float_dispatch!(s1, self.name(), T => {
            let g = cpu_view::<T>(s1, l1, self.name())?;
            let u = cpu_view::<T>(s2, l2, self.name())?;
            let y: Vec<T> = g
                .iter()
                .zip(u)
                .map(|(g, u)| T::of(round_to::<T>(act_and_grad(g.f(), self.act).0) * u.f()))
                .collect();
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
        same_shape(l1, l2, self.name())?;
        let dev = s1.device();
        let n = l1.shape().elem_count();
        let plan = fwd_launch(s1.dtype(), n, self.act)?;
        let func = load(dev, "glu", ptx::GLU, &plan)?;
        cuda_float_dispatch!(s1, self.name(), |gs: T, wrap| {
            let g = view(gs, l1, self.name())?;
            let u = view(s2.as_cuda_slice::<T>()?, l2, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut y = unsafe { dev.alloc::<T>(n)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("g", &g).read("u", &u).write("y", &mut y);
            bufs.launch(&plan)?;
            Ok((storage(wrap(y), dev), l1.shape().clone()))
        })
    }
}

/// `[2, ..shape]`: the two gradients stacked.
fn stacked(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.dims());
    Shape::from(dims)
}

impl CustomOp3 for GluBwd {
    fn name(&self) -> &'static str {
        "fused-glu-backward"
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
        same_shape(l1, l2, self.name())?;
        same_shape(l1, l3, self.name())?;
        cpu_float_dispatch!(s1, self.name(), T => {
            let g = cpu_view::<T>(s1, l1, self.name())?;
            let u = cpu_view::<T>(s2, l2, self.name())?;
            let dy = cpu_view::<T>(s3, l3, self.name())?;
            let n = g.len();
            let mut out = vec![T::of(0.0); 2 * n];
            for i in 0..n {
                let (a, da) = act_and_grad(g[i].f(), self.act);
                let d = dy[i].f();
                out[i] = T::of(d * u[i].f() * da);
                out[n + i] = T::of(d * round_to::<T>(a));
            }
            Ok((T::to_cpu_storage_owned(out), stacked(l1)))
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
        same_shape(l1, l2, self.name())?;
        same_shape(l1, l3, self.name())?;
        let dev = s1.device();
        let n = l1.shape().elem_count();
        let plan = bwd_launch(s1.dtype(), n, self.act)?;
        let func = load(dev, "glu", ptx::GLU, &plan)?;
        cuda_float_dispatch!(s1, self.name(), |gs: T, wrap| {
            let g = view(gs, l1, self.name())?;
            let u = view(s2.as_cuda_slice::<T>()?, l2, self.name())?;
            let dy = view(s3.as_cuda_slice::<T>()?, l3, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut out = unsafe { dev.alloc::<T>(2 * n)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("g", &g)
                .read("u", &u)
                .read("dy", &dy)
                .write("dg_du", &mut out);
            bufs.launch(&plan)?;
            Ok((storage(wrap(out), dev), stacked(l1)))
        })
    }
}
