//! Inverted dropout from a counter-based hash (`kernels/dropout.cu`), for the LoRA input: element
//! `i` of a tensor is kept when the top 32 bits of `splitmix64(key + (i + 1)·φ)` fall below
//! `keep · 2^32`, so the mask is a function of `(key, i)` alone. The forward input and the
//! backward gradient are masked alike without keeping a mask tensor, a checkpoint replay draws
//! the same mask, and the CPU, the kernel and the unfused path (a host-drawn mask tensor times
//! the input) agree bit for bit.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::launch::{self, Launch};
use super::{cpu_float_dispatch, cpu_view, Float, Kernel};
use crate::Result;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether element `i` is kept under `key` for a keep threshold from [`threshold`].
pub fn kept(key: u64, i: u64, threshold: u64) -> bool {
    (mix64(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN))) >> 32) < threshold
}

/// `keep · 2^32`, rounded: the bound the hash's top 32 bits are compared with.
pub fn threshold(keep: f64) -> u64 {
    ((keep.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64).min(1 << 32)
}

/// The scale `1 / keep` as a tensor of `dtype` holds it (f32 and wider hold the f32 as is).
fn scale_in(keep: f64, dtype: DType) -> f32 {
    let s = (1.0 / keep) as f32;
    match dtype {
        DType::BF16 => super::round_to::<half::bf16>(s),
        DType::F16 => super::round_to::<half::f16>(s),
        _ => s,
    }
}

/// `t` with the dropout of `key` (keep probability `keep`) applied: each element kept and
/// scaled by `1 / keep` as rounded to `scale_dtype` (the dtype of the tensor whose mask this
/// repeats), or zeroed. Runs the kernel (or its CPU implementation) where [`Kernel::Dropout`]
/// is in use, else multiplies by a mask drawn on the host; the results are the same.
pub fn apply(t: &Tensor, key: u64, keep: f64, scale_dtype: DType) -> Result<Tensor> {
    if super::use_fused(Kernel::Dropout, t.device()) {
        apply_fused(t, key, keep, scale_dtype)
    } else {
        apply_unfused(t, key, keep, scale_dtype)
    }
}

/// [`apply`] by the fused op.
pub fn apply_fused(t: &Tensor, key: u64, keep: f64, scale_dtype: DType) -> Result<Tensor> {
    let op = Op {
        key,
        threshold: threshold(keep),
        scale: scale_in(keep, scale_dtype),
    };
    Ok(t.detach().contiguous()?.apply_op1_no_bwd(&op)?)
}

/// [`apply`] as a product with a mask tensor drawn on the host.
pub fn apply_unfused(t: &Tensor, key: u64, keep: f64, scale_dtype: DType) -> Result<Tensor> {
    let (th, scale) = (threshold(keep), scale_in(keep, scale_dtype));
    let mask: Vec<f32> = (0..t.elem_count() as u64)
        .map(|i| if kept(key, i, th) { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, t.shape(), t.device())?.to_dtype(t.dtype())?;
    Ok((t.detach().contiguous()? * mask)?)
}

/// `dropout_*` over `n` values: buffers `x` (read) and `y` (written).
pub fn launch(
    dtype: DType,
    n: usize,
    key: u64,
    threshold: u64,
    scale: f32,
) -> candle_core::Result<Launch> {
    let bytes = n * dtype.size_in_bytes();
    Ok(Launch::new(
        format!("dropout_{}", launch::suffix(dtype)?),
        launch::elems(n),
    )
    .buf("x", bytes)
    .buf("y", bytes)
    .u64(n)
    .arg(launch::Arg::U64(key))
    .arg(launch::Arg::U64(threshold))
    .f32(scale))
}

struct Op {
    key: u64,
    threshold: u64,
    scale: f32,
}

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        cpu_float_dispatch!(s, self.name(), T => {
            let x = cpu_view::<T>(s, l, self.name())?;
            let scale = super::round_to::<T>(self.scale);
            let y: Vec<T> = x
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let m = if kept(self.key, i as u64, self.threshold) { scale } else { 0.0 };
                    T::of(v.f() * m)
                })
                .collect();
            Ok((<T as candle_core::WithDType>::to_cpu_storage_owned(y), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{cuda_float_dispatch, load, ptx, storage, view, Bufs};
        let dev = s.device();
        let n = l.shape().elem_count();
        let plan = launch(s.dtype(), n, self.key, self.threshold, self.scale)?;
        let func = load(dev, "dropout", ptx::DROPOUT, &plan)?;
        cuda_float_dispatch!(s, self.name(), |xs: T, wrap| {
            let x = view(xs, l, self.name())?;
            // SAFETY: every element is written by the kernel.
            let mut y = unsafe { dev.alloc::<T>(n)? };
            let mut bufs = Bufs::new(&func);
            bufs.read("x", &x).write("y", &mut y);
            bufs.launch(&plan)?;
            Ok((storage(wrap(y), dev), l.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<u32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    #[test]
    fn fused_and_unfused_dropout_agree_bit_for_bit() {
        let x = Tensor::randn(0f32, 1., (37, 29), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let x = x.to_dtype(dtype).unwrap();
            for scale_dtype in [dtype, DType::BF16] {
                let f = apply_fused(&x, 12345, 0.9, scale_dtype).unwrap();
                let u = apply_unfused(&x, 12345, 0.9, scale_dtype).unwrap();
                assert_eq!(f.dtype(), dtype);
                assert_eq!(
                    values(&f),
                    values(&u),
                    "{dtype:?} scaled in {scale_dtype:?}"
                );
            }
        }
    }

    #[test]
    fn the_mask_keeps_its_share_and_depends_on_the_key_only() {
        let n = 200_000;
        let ones = Tensor::ones(n, DType::F32, &Device::Cpu).unwrap();
        let a = apply_fused(&ones, 7, 0.8, DType::F32).unwrap();
        let kept: Vec<f32> = a.to_vec1().unwrap();
        let share = kept.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
        assert!((share - 0.8).abs() < 0.005, "kept {share}");
        assert!(kept.iter().all(|v| *v == 0.0 || *v == 1.25));
        // Another tensor of the same size (the gradient) gets the same mask under the key.
        let twos = (&ones * 2.0).unwrap();
        let b: Vec<f32> = apply_fused(&twos, 7, 0.8, DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(kept.iter().zip(&b).all(|(x, y)| (*x == 0.0) == (*y == 0.0)));
        let c: Vec<f32> = apply_fused(&ones, 8, 0.8, DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        let same = kept
            .iter()
            .zip(&c)
            .filter(|(x, y)| (**x == 0.0) == (**y == 0.0))
            .count();
        assert!(same < n * 3 / 4, "keys 7 and 8 draw nearly the same mask");
        assert_eq!(threshold(1.0), 1 << 32);
        assert_eq!(threshold(0.0), 0);
    }
}
