//! FlashAttention-2 forward and backward on CUDA (`kernels/attention.cu`; Dao 2023, Algorithms 1
//! and 2): causal, with an optional sliding window, key padding and packed rows (the varlen form,
//! as segment starts: see `model::mask::Segments`), grouped-query heads read in
//! place, bf16/f16 on tensor cores with f32 accumulation, head dims 64, 128 and 256, no
//! soft-capping. Only each row's log-sum-exp is kept; backward recomputes the probabilities tile by
//! tile. Same semantics as `model::attention::attention` with `model::mask::attention_mask`; a row
//! with no allowed key gets a zero output, `lse = +inf` and zero gradients.

use candle_core::{DType, Tensor};

use super::launch::{self, Launch};
use crate::{Error, Result};

/// The attention's score scale, the absolute position of the first query (keys sit at
/// `0..offset + Tq`) and the sliding window (`pos_q - pos_k < window`) if any.
#[derive(Debug, Clone, Copy)]
pub struct FlashParams {
    pub scale: f32,
    pub offset: usize,
    pub window: Option<usize>,
}

/// The head dims the kernels are built for.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// Whether the kernel handles these inputs: CUDA device, bf16/f16, head dim 64/128/256,
/// H % KVH == 0.
pub fn supported(q: &Tensor, k: &Tensor) -> bool {
    cfg!(feature = "cuda")
        && q.device().is_cuda()
        && k.device().same_device(q.device())
        && matches!(q.dtype(), DType::BF16 | DType::F16)
        && k.dtype() == q.dtype()
        && match (q.dims4(), k.dims4()) {
            (Ok((b, h, _, d)), Ok((kb, kvh, _, kd))) => {
                b == kb && d == kd && HEAD_DIMS.contains(&d) && kvh > 0 && h % kvh == 0
            }
            _ => false,
        }
}

/// `(o [B,H,Tq,D], lse [B,H,Tq] f32)`. `key_valid`: optional u8 `[B, Tk]`, 1 = real token.
/// `segment_starts`: for packed rows, u32 `[B, Tq]`, where each query's conversation starts
/// (offset 0; each row's starts as `model::mask::Segments` checks them).
pub fn flash_fwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_valid: Option<&Tensor>,
    segment_starts: Option<&Tensor>,
    p: &FlashParams,
) -> Result<(Tensor, Tensor)> {
    let dims = Dims::check(q, k, v, key_valid, p)?;
    dims.check_segments(segment_starts, p)?;
    #[cfg(feature = "cuda")]
    {
        imp::forward(q, k, v, (key_valid, segment_starts), p, &dims)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = dims;
        Err(Error::unsupported(
            "flash attention",
            "needs the cuda feature",
        ))
    }
}

/// `(dq, dk, dv)` shaped like `q, k, v`, for the output `o`, its log-sum-exp `lse` and the
/// output gradient `grad_o`.
#[allow(clippy::too_many_arguments)]
pub fn flash_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    grad_o: &Tensor,
    key_valid: Option<&Tensor>,
    segment_starts: Option<&Tensor>,
    p: &FlashParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = Dims::check(q, k, v, key_valid, p)?;
    dims.check_segments(segment_starts, p)?;
    for (name, t) in [("o", o), ("grad_o", grad_o)] {
        if t.dims() != q.dims() || t.dtype() != q.dtype() {
            return Err(Error::shape(
                "flash attention backward",
                format!("q's {:?} {:?}", q.dims(), q.dtype()),
                format!("{name} is {:?} {:?}", t.dims(), t.dtype()),
            ));
        }
    }
    if lse.dims() != [dims.b, dims.h, dims.tq] || lse.dtype() != DType::F32 {
        return Err(Error::shape(
            "flash attention backward",
            format!("f32 [{}, {}, {}]", dims.b, dims.h, dims.tq),
            format!("lse is {:?} {:?}", lse.dims(), lse.dtype()),
        ));
    }
    #[cfg(feature = "cuda")]
    {
        let masks = (key_valid, segment_starts);
        imp::backward(q, k, v, o, lse, grad_o, masks, p, &dims)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = dims;
        Err(Error::unsupported(
            "flash attention",
            "needs the cuda feature",
        ))
    }
}

/// The kernels' `window` argument for `tk` keys: the window, or 0 where none is set or it can
/// mask nothing (`pos_q - pos_k <= tk - 1` always).
pub fn kernel_window(window: Option<usize>, tk: usize) -> usize {
    match window {
        Some(w) if w < tk => w,
        _ => 0,
    }
}

/// Checked sizes of one call; `window` is 0 when no window can mask anything.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub b: usize,
    pub h: usize,
    pub kvh: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub window: usize,
}

/// The kernels' shared trailing arguments: head counts, lengths, offset, window and scale.
fn tail_args(l: Launch, dims: &Dims, p: &FlashParams) -> Launch {
    let ints = [dims.h, dims.kvh, dims.tq, dims.tk, p.offset, dims.window];
    ints.into_iter()
        .fold(l, |l, n| l.i32(n as i32))
        .f32(p.scale)
}

/// `flash_fwd_{d}_*`: buffers `q`, `k`, `v`, `key_valid` (`[B, Tk]` u8) when `key_valid`,
/// `segment_starts` (`[B, Tq]` u32) when `segments` (read) and `o` (`[B, H, Tq, D]` of
/// `dtype`), `lse` (`[B, H, Tq]` f32; written).
pub fn fwd_launch(
    dtype: DType,
    dims: &Dims,
    p: &FlashParams,
    key_valid: bool,
    segments: bool,
) -> candle_core::Result<Launch> {
    let es = dtype.size_in_bytes();
    let kernel = format!("flash_fwd_{}_{}", dims.d, launch::suffix(dtype)?);
    let l = Launch::new(kernel, launch::flash_fwd(dims.b, dims.h, dims.tq, dims.d))
        .buf("q", dims.q_bytes(es))
        .buf("k", dims.kv_bytes(es))
        .buf("v", dims.kv_bytes(es))
        .buf_or_null("key_valid", key_valid.then_some(dims.b * dims.tk))
        .buf_or_null("segment_starts", segments.then_some(dims.b * dims.tq * 4))
        .buf("o", dims.q_bytes(es))
        .buf("lse", dims.rows() * 4);
    Ok(tail_args(l, dims, p))
}

/// `flash_bwd_delta_*`, `delta = rowsum(dO ∘ O)` over the `B·H·Tq` rows: buffers `o`, `g`
/// (read) and `delta` (written, f32).
pub fn delta_launch(dtype: DType, dims: &Dims) -> candle_core::Result<Launch> {
    let es = dtype.size_in_bytes();
    let kernel = format!("flash_bwd_delta_{}", launch::suffix(dtype)?);
    Ok(Launch::new(kernel, launch::flash_bwd_delta(dims.rows()))
        .buf("o", dims.q_bytes(es))
        .buf("g", dims.q_bytes(es))
        .buf("delta", dims.rows() * 4)
        .i32(dims.rows() as i32)
        .i32(dims.d as i32))
}

/// `flash_bwd_{d}_*`: buffers `q`, `k`, `v`, `g` (dO), `lse`, `delta`, `key_valid` when
/// `key_valid`, `segment_starts` when `segments` (read) and `dq`, `dk`, `dv` (zeroed f32 shaped
/// like q, k, v, added into).
pub fn bwd_launch(
    dtype: DType,
    dims: &Dims,
    p: &FlashParams,
    key_valid: bool,
    segments: bool,
) -> candle_core::Result<Launch> {
    let es = dtype.size_in_bytes();
    let kernel = format!("flash_bwd_{}_{}", dims.d, launch::suffix(dtype)?);
    let l = Launch::new(kernel, launch::flash_bwd(dims.b, dims.h, dims.tk, dims.d))
        .buf("q", dims.q_bytes(es))
        .buf("k", dims.kv_bytes(es))
        .buf("v", dims.kv_bytes(es))
        .buf("g", dims.q_bytes(es))
        .buf("lse", dims.rows() * 4)
        .buf("delta", dims.rows() * 4)
        .buf_or_null("key_valid", key_valid.then_some(dims.b * dims.tk))
        .buf_or_null("segment_starts", segments.then_some(dims.b * dims.tq * 4))
        .buf("dq", dims.q_bytes(4))
        .buf("dk", dims.kv_bytes(4))
        .buf("dv", dims.kv_bytes(4));
    Ok(tail_args(l, dims, p))
}

impl Dims {
    /// The sizes of `q [B, H, Tq, D]`, `k`, `v [B, KVH, Tk, D]` and `key_valid [B, Tk]`, or an
    /// error naming what the kernels cannot take.
    pub fn check(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        key_valid: Option<&Tensor>,
        p: &FlashParams,
    ) -> Result<Dims> {
        let err = |m: String| Error::unsupported("flash attention", m);
        let (b, h, tq, d) = q
            .dims4()
            .map_err(|_| err(format!("q must be [B, H, T, D], got {:?}", q.dims())))?;
        let (kb, kvh, tk, kd) = k
            .dims4()
            .map_err(|_| err(format!("k must be [B, KVH, T, D], got {:?}", k.dims())))?;
        if v.dims() != k.dims() {
            return Err(err(format!("v is {:?} but k is {:?}", v.dims(), k.dims())));
        }
        if kb != b || kd != d {
            return Err(err(format!(
                "q {:?} and k {:?} disagree on batch or head dim",
                q.dims(),
                k.dims()
            )));
        }
        if !HEAD_DIMS.contains(&d) {
            return Err(err(format!("head dim {d} is not one of {HEAD_DIMS:?}")));
        }
        if kvh == 0 || h % kvh != 0 {
            return Err(err(format!(
                "{h} query heads do not group over {kvh} kv heads"
            )));
        }
        for (name, t) in [("k", k), ("v", v)] {
            if t.dtype() != q.dtype() {
                return Err(err(format!(
                    "{name} is {:?} but q is {:?}",
                    t.dtype(),
                    q.dtype()
                )));
            }
        }
        if !matches!(q.dtype(), DType::BF16 | DType::F16) {
            return Err(err(format!(
                "needs bf16 or f16 inputs, got {:?}",
                q.dtype()
            )));
        }
        if p.offset + tq != tk {
            return Err(err(format!(
                "{} keys for {tq} queries at offset {}",
                tk, p.offset
            )));
        }
        if let Some(kv) = key_valid {
            if kv.dims() != [b, tk] || kv.dtype() != DType::U8 {
                return Err(Error::shape(
                    "flash attention",
                    format!("u8 [{b}, {tk}]"),
                    format!("key_valid is {:?} {:?}", kv.dims(), kv.dtype()),
                ));
            }
        }
        if p.window == Some(0) {
            return Err(err("a sliding window must be positive".into()));
        }
        let window = kernel_window(p.window, tk);
        let fits = |n: usize| i32::try_from(n).is_ok();
        // Grid rows: query tiles of 64 and key tiles of 32 stay under CUDA's 65535.
        if !fits(b * h * tq)
            || !fits(b * kvh * tk)
            || tq.div_ceil(64) > 65535
            || tk.div_ceil(32) > 65535
        {
            return Err(err(format!(
                "sizes {:?} {:?} are too large for the kernel",
                q.dims(),
                k.dims()
            )));
        }
        Ok(Dims {
            b,
            h,
            kvh,
            tq,
            tk,
            d,
            window,
        })
    }

    /// That `segment_starts`, if given, is u32 `[B, Tq]` for a pass without a cache.
    pub fn check_segments(&self, segment_starts: Option<&Tensor>, p: &FlashParams) -> Result<()> {
        let Some(s) = segment_starts else {
            return Ok(());
        };
        if s.dims() != [self.b, self.tq] || s.dtype() != DType::U32 {
            return Err(Error::shape(
                "flash attention",
                format!("u32 [{}, {}]", self.b, self.tq),
                format!("segment_starts is {:?} {:?}", s.dims(), s.dtype()),
            ));
        }
        if p.offset != 0 {
            return Err(Error::unsupported(
                "flash attention",
                "packed rows (segment starts) with cached keys",
            ));
        }
        Ok(())
    }

    /// Bytes of a `[B, H, Tq, D]` tensor of `es`-byte elements (q, o, dO).
    fn q_bytes(&self, es: usize) -> usize {
        self.b * self.h * self.tq * self.d * es
    }

    /// Bytes of a `[B, KVH, Tk, D]` tensor of `es`-byte elements (k, v).
    fn kv_bytes(&self, es: usize) -> usize {
        self.b * self.kvh * self.tk * self.d * es
    }

    /// Rows of queries, `B · H · Tq`.
    fn rows(&self) -> usize {
        self.b * self.h * self.tq
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaDevice, CudaStorage, DType, Device, Layout, Storage, Tensor};

    use super::{bwd_launch, delta_launch, fwd_launch, Dims, FlashParams};
    use crate::kernels::cuda::{load, ptx, view, Bufs, KernelFn};
    use crate::kernels::launch::Launch;
    use crate::{Error, Result};

    const OP: &str = "flash attention";
    /// Dynamic shared memory a launch may use without opting in.
    const DEFAULT_SMEM: usize = 48 * 1024;

    fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
        match t.device() {
            Device::Cuda(d) => Ok(d.clone()),
            other => Err(Error::unsupported(
                OP,
                format!("tensors must be on a CUDA device, got {other:?}"),
            )),
        }
    }

    /// Contiguous, starting on a 16-byte boundary (the kernels load rows 16 bytes at a time).
    fn aligned(t: &Tensor) -> Result<Tensor> {
        let t = t.contiguous()?;
        Ok(if t.layout().start_offset() % 8 == 0 {
            t
        } else {
            t.force_contiguous()?
        })
    }

    fn cuda_view<'a, T: CudaDType>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, T>> {
        match s {
            Storage::Cuda(c) => Ok(view(c.as_cuda_slice::<T>()?, l, OP)?),
            _ => Err(Error::unsupported(OP, "tensors must be on a CUDA device")),
        }
    }

    fn to_tensor<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice, shape: &[usize]) -> Tensor {
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone()));
        Tensor::from_storage(storage, shape, BackpropOp::none(), false)
    }

    /// Loads `plan`'s kernel, letting it use the dynamic shared memory its geometry asks for.
    fn load_flash(dev: &CudaDevice, plan: &Launch) -> Result<KernelFn> {
        let smem = plan.geometry.smem;
        if smem as usize > DEFAULT_SMEM {
            // The attribute belongs to the function handle, which the device caches per module,
            // so it holds for the launches through `load` too.
            let func = dev.get_or_load_custom_func(&plan.kernel, "attention", ptx::ATTENTION)?;
            dev.cuda_stream().context().bind_to_thread().w()?;
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .w()?;
        }
        Ok(load(dev, "attention", ptx::ATTENTION, plan)?)
    }

    /// The optional key validity and segment starts.
    type Masks<'a> = (Option<&'a Tensor>, Option<&'a Tensor>);

    fn contiguous_masks((a, b): Masks<'_>) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            a.map(|t| t.contiguous()).transpose()?,
            b.map(|t| t.contiguous()).transpose()?,
        ))
    }

    pub(super) fn forward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        masks: Masks<'_>,
        p: &FlashParams,
        dims: &Dims,
    ) -> Result<(Tensor, Tensor)> {
        let (q, k, v) = (aligned(q)?, aligned(k)?, aligned(v)?);
        let (kv, seg) = contiguous_masks(masks)?;
        let masks = (kv.as_ref(), seg.as_ref());
        match q.dtype() {
            DType::BF16 => forward_typed::<half::bf16>(&q, &k, &v, masks, p, dims),
            DType::F16 => forward_typed::<half::f16>(&q, &k, &v, masks, p, dims),
            other => Err(Error::unsupported(
                OP,
                format!("needs bf16 or f16 inputs, got {other:?}"),
            )),
        }
    }

    fn forward_typed<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (key_valid, segment_starts): Masks<'_>,
        p: &FlashParams,
        dims: &Dims,
    ) -> Result<(Tensor, Tensor)> {
        let dev = cuda_device(q)?;
        let &Dims { b, h, tq, d, .. } = dims;
        let rows = b * h * tq;
        let mut o = dev.alloc_zeros::<T>(rows * d)?;
        let mut lse = dev.alloc_zeros::<f32>(rows)?;
        if rows > 0 {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let qv = cuda_view::<T>(&qs, ql)?;
            let kv = cuda_view::<T>(&ks, kl)?;
            let vv = cuda_view::<T>(&vs, vl)?;
            let valid = key_valid.map(|t| t.storage_and_layout());
            let valid_view = match &valid {
                Some((s, l)) => Some(cuda_view::<u8>(s, l)?),
                None => None,
            };
            let seg = segment_starts.map(|t| t.storage_and_layout());
            let seg_view = match &seg {
                Some((s, l)) => Some(cuda_view::<u32>(s, l)?),
                None => None,
            };
            let plan = fwd_launch(q.dtype(), dims, p, valid_view.is_some(), seg_view.is_some())?;
            let func = load_flash(&dev, &plan)?;
            let mut bufs = Bufs::new(&func);
            bufs.read("q", &qv).read("k", &kv).read("v", &vv);
            if let Some(kv) = &valid_view {
                bufs.read("key_valid", kv);
            }
            if let Some(sv) = &seg_view {
                bufs.read("segment_starts", sv);
            }
            bufs.write("o", &mut o).write("lse", &mut lse);
            // Every buffer holds the [B, H|KVH, T, D] elements the checked dims say, and the
            // dynamic shared memory is the kernel's own formula (it traps if given less).
            bufs.launch(&plan)?;
        }
        Ok((
            to_tensor(o, &dev, &[b, h, tq, d]),
            to_tensor(lse, &dev, &[b, h, tq]),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        lse: &Tensor,
        grad_o: &Tensor,
        masks: Masks<'_>,
        p: &FlashParams,
        dims: &Dims,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v, g) = (aligned(q)?, aligned(k)?, aligned(v)?, aligned(grad_o)?);
        let (o, lse) = (o.contiguous()?, lse.contiguous()?);
        let (kv, seg) = contiguous_masks(masks)?;
        let args = (&q, &k, &v, &o, &lse, &g, (kv.as_ref(), seg.as_ref()));
        let (dq, dk, dv) = match q.dtype() {
            DType::BF16 => backward_typed::<half::bf16>(args, p, dims)?,
            DType::F16 => backward_typed::<half::f16>(args, p, dims)?,
            other => {
                return Err(Error::unsupported(
                    OP,
                    format!("needs bf16 or f16 inputs, got {other:?}"),
                ))
            }
        };
        Ok((
            dq.to_dtype(q.dtype())?,
            dk.to_dtype(q.dtype())?,
            dv.to_dtype(q.dtype())?,
        ))
    }

    type BwdArgs<'a> = (
        &'a Tensor,
        &'a Tensor,
        &'a Tensor,
        &'a Tensor,
        &'a Tensor,
        &'a Tensor,
        Masks<'a>,
    );

    /// The f32 sums `(dq, dk, dv)`.
    fn backward_typed<T: CudaDType + DeviceRepr>(
        (q, k, v, o, lse, g, (key_valid, segment_starts)): BwdArgs<'_>,
        p: &FlashParams,
        dims: &Dims,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = cuda_device(q)?;
        let &Dims {
            b,
            h,
            kvh,
            tq,
            tk,
            d,
            ..
        } = dims;
        let rows = b * h * tq;
        let mut dq = dev.alloc_zeros::<f32>(rows * d)?;
        let mut dk = dev.alloc_zeros::<f32>(b * kvh * tk * d)?;
        let mut dv = dev.alloc_zeros::<f32>(b * kvh * tk * d)?;
        if rows > 0 {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (os, ol) = o.storage_and_layout();
            let (gs, gl) = g.storage_and_layout();
            let (ls, ll) = lse.storage_and_layout();
            let qv = cuda_view::<T>(&qs, ql)?;
            let kv = cuda_view::<T>(&ks, kl)?;
            let vv = cuda_view::<T>(&vs, vl)?;
            let ov = cuda_view::<T>(&os, ol)?;
            let gv = cuda_view::<T>(&gs, gl)?;
            let lv = cuda_view::<f32>(&ls, ll)?;
            let valid = key_valid.map(|t| t.storage_and_layout());
            let valid_view = match &valid {
                Some((s, l)) => Some(cuda_view::<u8>(s, l)?),
                None => None,
            };

            // SAFETY: every row is written by its warp before the backward kernel reads it.
            let mut delta = unsafe { dev.alloc::<f32>(rows)? };
            let plan = delta_launch(q.dtype(), dims)?;
            let func = load(&dev, "attention", ptx::ATTENTION, &plan)?;
            let mut bufs = Bufs::new(&func);
            bufs.read("o", &ov)
                .read("g", &gv)
                .write("delta", &mut delta);
            bufs.launch(&plan)?;

            let seg = segment_starts.map(|t| t.storage_and_layout());
            let seg_view = match &seg {
                Some((s, l)) => Some(cuda_view::<u32>(s, l)?),
                None => None,
            };
            let plan = bwd_launch(q.dtype(), dims, p, valid_view.is_some(), seg_view.is_some())?;
            let func = load_flash(&dev, &plan)?;
            let mut bufs = Bufs::new(&func);
            bufs.read("q", &qv)
                .read("k", &kv)
                .read("v", &vv)
                .read("g", &gv);
            bufs.read("lse", &lv).read("delta", &delta);
            if let Some(kv) = &valid_view {
                bufs.read("key_valid", kv);
            }
            if let Some(sv) = &seg_view {
                bufs.read("segment_starts", sv);
            }
            // dq, dk and dv are zeroed f32 buffers of q's and k's element counts that the kernel
            // adds into.
            bufs.write("dq", &mut dq)
                .write("dk", &mut dk)
                .write("dv", &mut dv);
            bufs.launch(&plan)?;
        }
        Ok((
            to_tensor(dq, &dev, &[b, h, tq, d]),
            to_tensor(dk, &dev, &[b, kvh, tk, d]),
            to_tensor(dv, &dev, &[b, kvh, tk, d]),
        ))
    }
}
