//! Fused AdamW update (`kernels/adamw.cu`): one op per LoRA parameter instead of the ~14 tensor
//! ops (each an allocation and a launch) of the unfused update in
//! `train::optimizer::AdamW`, with the clipping factor folded in. At 8B there are 448
//! LoRA tensors, so the unfused step is thousands of tiny launches. The arithmetic is the
//! unfused path's, op for op, in f32 (each product or sum with a scalar is one rounding, as in
//! candle's affine op), so the two give the same parameters.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

use super::cpu_view;
use super::launch::{self, Launch};
use crate::Result;

/// The update's scalars, in f32 as the kernel takes them (computed in f64 by the caller, as
/// the unfused path's scalar ops cast them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalars {
    /// The gradient clipping factor (1: none).
    pub coef: f32,
    pub b1: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// `1 - lr · weight_decay`.
    pub decay: f32,
    /// `1 / sqrt(1 - b2^t)`.
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    /// `lr / (1 - b1^t)`.
    pub step_size: f32,
}

/// `adamw_f32` over `n` values: buffers `p`, `g`, `state` (`[m; v]`, at least `2n`; read) and
/// `out` (`[m'; v'; p']`, written).
pub fn launch(n: usize, s: &Scalars) -> Launch {
    Launch::new("adamw_f32".into(), launch::elems(n))
        .buf("p", 4 * n)
        .buf("g", 4 * n)
        .buf("state", 8 * n)
        .buf("out", 12 * n)
        .u64(n)
        .f32(s.coef)
        .f32(s.b1)
        .f32(s.one_minus_b1)
        .f32(s.b2)
        .f32(s.one_minus_b2)
        .f32(s.decay)
        .f32(s.inv_sqrt_bc2)
        .f32(s.eps)
        .f32(s.step_size)
}

/// One update of the f32 parameter `p` by its gradient `g` from `state` (`[2, n]` or more rows:
/// the moments `m` and `v` of `p`'s `n` values, flattened): `[3, n]` holding `m'`, `v'` and the
/// new parameter (no autograd).
pub fn update(p: &Tensor, g: &Tensor, state: &Tensor, s: &Scalars) -> Result<Tensor> {
    let n = p.elem_count();
    let p = p.detach().flatten_all()?.contiguous()?;
    let g = g
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .contiguous()?;
    let state = state.detach().flatten_all()?.contiguous()?;
    if p.dtype() != DType::F32 || g.elem_count() != n || state.elem_count() < 2 * n {
        return Err(crate::Error::shape(
            "fused AdamW",
            "an f32 parameter of n values, a gradient of n and a state of 2n",
            format!(
                "parameter {:?} {:?}, gradient of {} values, state of {} values",
                p.dims(),
                p.dtype(),
                g.elem_count(),
                state.elem_count()
            ),
        ));
    }
    let out = p.apply_op3_no_bwd(&g, &state, &Op(*s))?;
    Ok(out.reshape((3, n))?)
}

struct Op(Scalars);

/// One value's update: `(m', v', p')`, each line one op of the unfused path.
fn step(p: f32, g: f32, m: f32, v: f32, s: &Scalars) -> (f32, f32, f32) {
    let gc = g * s.coef;
    let m = m * s.b1 + gc * s.one_minus_b1;
    let v = v * s.b2 + (gc * gc) * s.one_minus_b2;
    let denom = v.sqrt() * s.inv_sqrt_bc2 + s.eps;
    let update = (m / denom) * s.step_size;
    (m, v, p * s.decay - update)
}

impl CustomOp3 for Op {
    fn name(&self) -> &'static str {
        "fused-adamw"
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
        let p = cpu_view::<f32>(s1, l1, self.name())?;
        let g = cpu_view::<f32>(s2, l2, self.name())?;
        let state = cpu_view::<f32>(s3, l3, self.name())?;
        let n = p.len();
        let mut out = vec![0f32; 3 * n];
        for i in 0..n {
            let (m, v, q) = step(p[i], g[i], state[i], state[n + i], &self.0);
            out[i] = m;
            out[n + i] = v;
            out[2 * n + i] = q;
        }
        Ok((CpuStorage::F32(out), Shape::from(3 * n)))
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
        let n = l1.shape().elem_count();
        let plan = launch(n, &self.0);
        let func = load(dev, "adamw", ptx::ADAMW, &plan)?;
        let p = view(s1.as_cuda_slice::<f32>()?, l1, self.name())?;
        let g = view(s2.as_cuda_slice::<f32>()?, l2, self.name())?;
        let state = view(s3.as_cuda_slice::<f32>()?, l3, self.name())?;
        // SAFETY: every element is written by the kernel.
        let mut out = unsafe { dev.alloc::<f32>(3 * n)? };
        let mut bufs = Bufs::new(&func);
        bufs.read("p", &p).read("g", &g).read("state", &state);
        bufs.write("out", &mut out);
        bufs.launch(&plan)?;
        Ok((storage(CudaStorageSlice::F32(out), dev), Shape::from(3 * n)))
    }
}
