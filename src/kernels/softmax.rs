//! Attention's softmax rows on the CPU: each row's max and sum, its probabilities and the backward
//! `p · (dp - Σ p·dp)` in one vectorized pass per row, rows split across threads, instead of
//! candle's separate ops with libm's scalar `expf`, which takes its slow underflow path on every
//! masked score. The exponential is Cephes' `expf`, written to vectorize (AVX-512 or AVX2, chosen
//! at run time), flushing to 0 below `x = -87`. `model::attention` uses it for f32 scores on the
//! CPU under the `attention` switch; the unfused ops here are the reference the tests compare with.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};

use super::{cpu_view, enabled, same_shape, Kernel};
use crate::Result;

/// Whether the fused rows run for scores `s`: f32 on the CPU, attention switch on.
fn fused(s: &Tensor) -> bool {
    s.device().is_cpu() && s.dtype() == DType::F32 && enabled(Kernel::Attention)
}

/// The softmax of `s` over its last dimension, and each row's statistics `[.., 2]`
/// (max, sum of `exp(s - max)`).
pub fn forward(s: &Tensor) -> Result<(Tensor, Tensor)> {
    if fused(s) {
        let s = s.contiguous()?;
        let stats = s.apply_op1_no_bwd(&Stats)?;
        let p = s.apply_op2_no_bwd(&stats, &Probs)?;
        return Ok((p, stats));
    }
    forward_unfused(s)
}

/// [`forward`] with candle's tensor ops.
pub fn forward_unfused(s: &Tensor) -> Result<(Tensor, Tensor)> {
    let max = s.max_keepdim(D::Minus1)?;
    let e = s.broadcast_sub(&max)?.exp()?;
    let z = e.sum_keepdim(D::Minus1)?;
    let p = e.broadcast_div(&z)?;
    // Kept apart: for a row whose keys are all masked, `max` is near f32::MIN and
    // `max + log z` would round back to `max`.
    Ok((p, Tensor::cat(&[&max, &z], D::Minus1)?))
}

/// The probabilities `exp(s - max) / z` from [`forward`]'s statistics `[.., 2]`.
pub fn probs(s: &Tensor, stats: &Tensor) -> Result<Tensor> {
    if fused(s) {
        return Ok(s
            .contiguous()?
            .apply_op2_no_bwd(&stats.contiguous()?, &Probs)?);
    }
    probs_unfused(s, stats)
}

/// [`probs`] with candle's tensor ops.
pub fn probs_unfused(s: &Tensor, stats: &Tensor) -> Result<Tensor> {
    let (max, z) = (
        stats.narrow(D::Minus1, 0, 1)?,
        stats.narrow(D::Minus1, 1, 1)?,
    );
    Ok(s.broadcast_sub(&max)?.exp()?.broadcast_div(&z)?)
}

/// The gradient of the scores, `p · (dp - Σ_row p·dp) · scale`, for probabilities `p` and
/// their gradient `dp`.
pub fn scores_grad(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(p) && dp.dtype() == DType::F32 {
        return Ok(p.contiguous()?.apply_op2_no_bwd(
            &dp.contiguous()?,
            &ScoresGrad {
                scale: scale as f32,
            },
        )?);
    }
    scores_grad_unfused(p, dp, scale)
}

/// [`scores_grad`] with candle's tensor ops.
pub fn scores_grad_unfused(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    let rowdot = (p * dp)?.sum_keepdim(D::Minus1)?;
    Ok(((p * dp.broadcast_sub(&rowdot)?)? * scale)?)
}

/// Elements below which one thread runs all rows.
const PARALLEL_MIN: usize = 1 << 16;

/// Lanes the row loops keep apart so that the compiler vectorizes them (one AVX-512 register).
const LANES: usize = 16;

/// `exp(x)` for `x ≤ 88`, within ~1 ulp of libm's, 0 below -87; branch-free so that it
/// vectorizes (Cephes `expf`).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = poly * r * r + r + 1.0;
    let biased = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32) + 127;
    let y = er * f32::from_bits((biased << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let m = tail.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    acc.iter().fold(m, |m, &x| m.max(x))
}

/// Sum of `f(i)` over a row of `n`, in `LANES` partial sums.
#[inline(always)]
fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    let tail: f32 = (full..n).map(&f).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn stats_rows(s: &[f32], tk: usize, out: &mut [f32]) {
    for (row, o) in s.chunks_exact(tk).zip(out.chunks_exact_mut(2)) {
        let m = row_max(row);
        o[0] = m;
        o[1] = lane_sum(tk, |i| exp(row[i] - m));
    }
}

#[inline(always)]
fn probs_rows(s: &[f32], stats: &[f32], tk: usize, out: &mut [f32]) {
    for ((row, st), o) in s
        .chunks_exact(tk)
        .zip(stats.chunks_exact(2))
        .zip(out.chunks_exact_mut(tk))
    {
        let (m, inv) = (st[0], 1.0 / st[1]);
        for (y, &x) in o.iter_mut().zip(row) {
            *y = exp(x - m) * inv;
        }
    }
}

#[inline(always)]
fn grad_rows(p: &[f32], dp: &[f32], tk: usize, scale: f32, out: &mut [f32]) {
    for ((pr, dr), o) in p
        .chunks_exact(tk)
        .zip(dp.chunks_exact(tk))
        .zip(out.chunks_exact_mut(tk))
    {
        let rowdot = lane_sum(tk, |i| pr[i] * dr[i]);
        for ((y, &p), &d) in o.iter_mut().zip(pr).zip(dr) {
            *y = p * (d - rowdot) * scale;
        }
    }
}

/// The row loops, compiled for this CPU's widest vectors.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Stats {
        s: &'a [f32],
    },
    Probs {
        s: &'a [f32],
        stats: &'a [f32],
    },
    Grad {
        p: &'a [f32],
        dp: &'a [f32],
        scale: f32,
    },
}

impl Rows<'_> {
    /// Rows `range` of `tk` elements each, into `out` (that range's output).
    #[inline(always)]
    fn run_plain(self, tk: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let span = rows.start * tk..rows.end * tk;
        match self {
            Rows::Stats { s } => stats_rows(&s[span], tk, out),
            Rows::Probs { s, stats } => {
                probs_rows(&s[span], &stats[rows.start * 2..rows.end * 2], tk, out)
            }
            Rows::Grad { p, dp, scale } => grad_rows(&p[span.clone()], &dp[span], tk, scale, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn run_avx512(self, tk: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        self.run_plain(tk, rows, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(self, tk: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        self.run_plain(tk, rows, out)
    }

    fn run(self, tk: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked above).
                return unsafe { self.run_avx512(tk, rows, out) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { self.run_avx2(tk, rows, out) };
            }
        }
        self.run_plain(tk, rows, out)
    }

    /// All `n_rows` rows, split across candle's CPU threads when there are enough of them to
    /// pay for the threads (not a decoding step's); `width` output elements per row.
    fn run_parallel(self, tk: usize, n_rows: usize, width: usize) -> Vec<f32> {
        let mut out = vec![0f32; n_rows * width];
        let threads = if n_rows * tk < PARALLEL_MIN {
            1
        } else {
            candle_core::utils::get_num_threads().clamp(1, n_rows.max(1))
        };
        if threads == 1 {
            // No thread to spawn for one chunk (a decoding step's rows, a small block).
            self.run(tk, 0..n_rows, &mut out);
            return out;
        }
        let per = n_rows.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (i, chunk) in out.chunks_mut(per * width).enumerate() {
                let rows = i * per..i * per + chunk.len() / width;
                scope.spawn(move || self.run(tk, rows, chunk));
            }
        });
        out
    }
}

/// The last dimension and the number of rows of a `[.., tk]` layout.
fn rows_of(l: &Layout) -> (usize, usize) {
    let tk = l.dims().last().copied().unwrap_or(1).max(1);
    (tk, l.shape().elem_count() / tk)
}

struct Stats;

impl CustomOp1 for Stats {
    fn name(&self) -> &'static str {
        "softmax-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = cpu_view::<f32>(s, l, self.name())?;
        let (tk, n) = rows_of(l);
        let out = Rows::Stats { s }.run_parallel(tk, n, 2);
        let mut dims = l.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = 2;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

struct Probs;

impl CustomOp2 for Probs {
    fn name(&self) -> &'static str {
        "softmax-probs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (tk, n) = rows_of(l1);
        if l2.shape().elem_count() != 2 * n {
            candle_core::bail!(
                "{}: {} statistics for {n} rows of scores {:?}",
                self.name(),
                l2.shape().elem_count(),
                l1.dims()
            );
        }
        let s = cpu_view::<f32>(s1, l1, self.name())?;
        let stats = cpu_view::<f32>(s2, l2, self.name())?;
        let out = Rows::Probs { s, stats }.run_parallel(tk, n, tk);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct ScoresGrad {
    scale: f32,
}

impl CustomOp2 for ScoresGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(l1, l2, self.name())?;
        let p = cpu_view::<f32>(s1, l1, self.name())?;
        let dp = cpu_view::<f32>(s2, l2, self.name())?;
        let (tk, n) = rows_of(l1);
        let out = Rows::Grad {
            p,
            dp,
            scale: self.scale,
        }
        .run_parallel(tk, n, tk);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_flushes_underflow() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.013_7;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// Scores like a causal block's: scaled products plus an `f32::MIN` mask, with a row whose
    /// keys are all masked (as left padding makes) and a row length that is not a multiple of
    /// the vector lanes.
    fn masked_scores(rows: usize, tk: usize) -> Result<Tensor> {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f32, 3.0, (2, 3, rows, tk), &dev)?;
        let mut mask = vec![0f32; rows * tk];
        for i in 0..rows {
            for j in 0..tk {
                if j + rows > i + tk || i == 1 {
                    mask[i * tk + j] = f32::MIN;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, rows, tk), &dev)?;
        Ok(s.broadcast_add(&mask)?)
    }

    #[test]
    fn fused_rows_match_the_tensor_ops() -> Result<()> {
        for (rows, tk) in [(7, 37), (5, 64), (2, 2)] {
            let s = masked_scores(rows, tk)?;
            let (p, stats) = forward(&s)?;
            let (p_ref, stats_ref) = forward_unfused(&s)?;
            assert_eq!(stats.dims(), stats_ref.dims());
            assert!(max_abs_diff(&p, &p_ref)? < 1e-6, "probs, {rows}x{tk}");
            let max = stats.narrow(D::Minus1, 0, 1)?;
            assert_eq!(
                max_abs_diff(&max, &stats_ref.narrow(D::Minus1, 0, 1)?)?,
                0.0
            );
            let z = stats.narrow(D::Minus1, 1, 1)?;
            let z_ref = stats_ref.narrow(D::Minus1, 1, 1)?;
            assert!(max_abs_diff(&(z / &z_ref)?, &z_ref.ones_like()?)? < 1e-6);
            // The all-masked row is uniform, as with the tensor ops.
            let row = p.narrow(2, 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
            assert!(row.iter().all(|&x| (x - 1.0 / tk as f32).abs() < 1e-6));

            // Probabilities again from narrowed (non-contiguous) statistics, as backward reads them.
            let st = stats.narrow(2, 1, rows - 1)?;
            let sn = s.narrow(2, 1, rows - 1)?;
            let again = probs(&sn, &st)?;
            assert!(max_abs_diff(&again, &p.narrow(2, 1, rows - 1)?)? < 1e-7);
            assert!(max_abs_diff(&again, &probs_unfused(&sn, &st)?)? < 1e-6);

            let dp = Tensor::randn(0f32, 1.0, s.dims(), &Device::Cpu)?;
            let ds = scores_grad(&p, &dp, 0.125)?;
            let ds_ref = scores_grad_unfused(&p, &dp, 0.125)?;
            assert!(max_abs_diff(&ds, &ds_ref)? < 1e-6, "grad, {rows}x{tk}");
        }
        Ok(())
    }

    #[test]
    fn rows_split_across_threads_are_the_rows_of_one_thread() -> Result<()> {
        let (n, tk) = (6 * 300, 40);
        let s = masked_scores(300, tk)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(n * tk >= PARALLEL_MIN);
        let rows = Rows::Stats { s: &s };
        let mut whole = vec![0f32; n * 2];
        rows.run(tk, 0..n, &mut whole);
        assert_eq!(rows.run_parallel(tk, n, 2), whole);
        Ok(())
    }
}
