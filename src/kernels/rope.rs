//! Fused rotary embedding (`kernels/rope.cu`) in the HF half-split layout, forward and input
//! gradient, reading `x: [B, H, T, D]` through its strides (the transposed view the attention
//! builds needs no copy) and writing a contiguous result; `cos, sin: [T, D]`. Same arithmetic
//! as `model::rope::apply_rotary`, with each product summed in f32 and rounded once.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, WithDType};

use super::launch::{self, Launch};
use super::{cpu_float_dispatch, cpu_view, Float};
use crate::Result;

/// `rope_*` over `x` of `dims` `[B, H, T, D]` read through `strides` (in elements, from the
/// buffer's start): buffers `x`, `cos`, `sin` (`[T, D]`; read) and `y` (written, contiguous).
pub fn kernel_launch(
    dtype: DType,
    dims: [usize; 4],
    strides: [usize; 4],
    backward: bool,
) -> candle_core::Result<Launch> {
    let es = dtype.size_in_bytes();
    let n: usize = dims.iter().product();
    // One past the farthest element the strides reach.
    let extent = if n == 0 {
        0
    } else {
        1 + dims
            .iter()
            .zip(strides)
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>()
    };
    let [_, h, t, d] = dims;
    let mut l = Launch::new(format!("rope_{}", launch::suffix(dtype)?), launch::elems(n))
        .buf("x", extent * es)
        .buf("cos", t * d * es)
        .buf("sin", t * d * es)
        .buf("y", n * es)
        .i32(h as i32)
        .i32(t as i32)
        .i32(d as i32);
    for s in strides {
        l = l.i64(s as i64);
    }
    Ok(l.u64(n).i32(backward as i32))
}

/// `x·cos + rot(x)·sin` (no autograd).
pub fn forward(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(x, cos, sin, false)
}

/// The input gradient of [`forward`] for an output gradient `g`: `g·cos + rotᵀ(g·sin)`.
pub fn backward(g: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(g, cos, sin, true)
}

fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, backward: bool) -> Result<Tensor> {
    let x = x.detach();
    let (cos, sin) = tables(cos, sin, x.dtype())?;
    Ok(x.apply_op3_no_bwd(&cos, &sin, &Rope { backward })?)
}

/// `cos` and `sin` as the op reads them: contiguous, in `dtype` (the input's).
pub fn tables(cos: &Tensor, sin: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    Ok((
        cos.detach().to_dtype(dtype)?.contiguous()?,
        sin.detach().to_dtype(dtype)?.contiguous()?,
    ))
}

/// The op of [`forward`] over `x` (any strides) and `cos, sin` from [`tables`], for an op of
/// [`crate::autograd::with_backward_value`] that writes its result directly.
pub fn forward_op() -> impl CustomOp3 + Send + Sync + 'static {
    Rope { backward: false }
}

struct Rope {
    backward: bool,
}

/// `(dims, strides)` of a 4-D view, and its start offset.
fn geometry(l: &Layout) -> candle_core::Result<([usize; 4], [usize; 4], usize)> {
    match (l.dims(), l.stride()) {
        ([b, h, t, d], [s0, s1, s2, s3]) if d % 2 == 0 => {
            Ok(([*b, *h, *t, *d], [*s0, *s1, *s2, *s3], l.start_offset()))
        }
        _ => candle_core::bail!(
            "rope: expected x as [B, H, T, D] with an even D, got {:?}",
            l.dims()
        ),
    }
}

fn rope_cpu<T: Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    dims: [usize; 4],
    st: [usize; 4],
    backward: bool,
) -> Vec<T> {
    let [b, h, t, d] = dims;
    let half = d / 2;
    let mut y = Vec::with_capacity(b * h * t * d);
    for bi in 0..b {
        for hi in 0..h {
            for ti in 0..t {
                let base = bi * st[0] + hi * st[1] + ti * st[2];
                let (c, s) = (&cos[ti * d..(ti + 1) * d], &sin[ti * d..(ti + 1) * d]);
                for di in 0..d {
                    let p = if di < half { di + half } else { di - half };
                    let (xd, xp) = (x[base + di * st[3]].f(), x[base + p * st[3]].f());
                    let v = if !backward {
                        xd * c[di].f() + if di < half { -xp } else { xp } * s[di].f()
                    } else {
                        xd * c[di].f() + if di < half { xp } else { -xp } * s[p].f()
                    };
                    y.push(T::of(v));
                }
            }
        }
    }
    y
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
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
        let (dims, st, start) = geometry(l1)?;
        if l2.dims() != [dims[2], dims[3]] || l3.dims() != [dims[2], dims[3]] {
            candle_core::bail!(
                "rope: cos/sin are {:?}, expected [{}, {}]",
                l2.dims(),
                dims[2],
                dims[3]
            );
        }
        cpu_float_dispatch!(s1, self.name(), T => {
            let x = &T::cpu_storage_as_slice(s1)?[start..];
            let cos = cpu_view::<T>(s2, l2, self.name())?;
            let sin = cpu_view::<T>(s3, l3, self.name())?;
            let y = rope_cpu(x, cos, sin, dims, st, self.backward);
            Ok((T::to_cpu_storage_owned(y), Shape::from(dims.to_vec())))
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
        let (dims, st, start) = geometry(l1)?;
        if l2.dims() != [dims[2], dims[3]] || l3.dims() != [dims[2], dims[3]] {
            candle_core::bail!(
                "rope: cos/sin are {:?}, expected [{}, {}]",
                l2.dims(),
                dims[2],
                dims[3]
            );
        }
        let dev = s1.device();
        let n: usize = dims.iter().product();
        let plan = kernel_launch(s1.dtype(), dims, st, self.backward)?;
        let func = load(dev, "rope", ptx::ROPE, &plan)?;
        cuda_float_dispatch!(s1, self.name(), |xs: T, wrap| {
            let x = xs.slice(start..);
            let cos = view(s2.as_cuda_slice::<T>()?, l2, self.name())?;
            let sin = view(s3.as_cuda_slice::<T>()?, l3, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut y = unsafe { dev.alloc::<T>(n)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("x", &x)
                .read("cos", &cos)
                .read("sin", &sin)
                .write("y", &mut y);
            bufs.launch(&plan)?;
            Ok((storage(wrap(y), dev), Shape::from(dims.to_vec())))
        })
    }
}
