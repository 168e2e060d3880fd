//! NF4 ("4-bit NormalFloat") with double quantization, as bitsandbytes stores QLoRA base weights
//! (Dettmers et al., 2023, "QLoRA", section 3): blocks of 64 scaled by their absmax and rounded to
//! 16 levels, the absmaxes quantized again to 8 bits. Bit-compatible with bitsandbytes'
//! `quantize_4bit(..., quant_type="nf4", compress_statistics=True)` and `dequantize_4bit` on its
//! CPU backend (DEVELOPERS.md, "NF4 and bitsandbytes"). Blocks never span rows (`cols % 64 == 0`),
//! so any row range dequantizes on its own.

use std::sync::OnceLock;

pub use crate::kernels::nf4::{dequant_tables, Nf4Matrix, NF4_ABSMAX_BLOCK, NF4_BLOCK};
use crate::kernels::nf4::{DYNAMIC_MAP, NF4_LEVELS};
use crate::{Error, Result};

/// Size of the CPU kernel's value -> 8-bit code table (`kLUTSize` in `csrc/cpu_ops.cpp`).
const DYNAMIC_LUT_SIZE: usize = 65536;

impl Nf4Matrix {
    /// Quantizes a row-major `[rows, cols]` f32 matrix; `cols` must be a multiple of 64.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(NF4_BLOCK) {
            return Err(Error::shape(
                "NF4 columns",
                format!("a multiple of the block size {NF4_BLOCK}"),
                cols,
            ));
        }
        let numel = rows
            .checked_mul(cols)
            .filter(|&n| n == data.len())
            .ok_or_else(|| {
                Error::shape(
                    format!("NF4: a [{rows}, {cols}] matrix"),
                    format!("{rows}x{cols}"),
                    format!("{} values", data.len()),
                )
            })?;
        if numel == 0 {
            return Err(Error::unsupported(
                "NF4",
                format!("cannot quantize an empty [{rows}, {cols}] matrix"),
            ));
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::unsupported(
                "NF4",
                format!(
                    "non-finite value {} at row {}, column {}",
                    data[i],
                    i / cols,
                    i % cols
                ),
            ));
        }

        let bounds = nf4_midpoints();
        let mut codes = Vec::with_capacity(numel / 2);
        let mut absmax = Vec::with_capacity(numel / NF4_BLOCK);
        for block in data.chunks_exact(NF4_BLOCK) {
            let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            absmax.push(amax);
            // torch: `A * (1.0 / absmax.clamp(min=1e-38))`, so an all-zero block maps to level 0.0.
            let inv = 1.0 / amax.max(1e-38);
            let level = |x: f32| -> u8 {
                let v = (x * inv).clamp(-1.0, 1.0);
                bounds.iter().map(|&b| u8::from(b < v)).sum()
            };
            codes.extend(
                block
                    .chunks_exact(2)
                    .map(|p| (level(p[0]) << 4) | level(p[1])),
            );
        }

        let absmax_offset = torch_mean(&absmax);
        let (absmax_codes, absmax_scales) = quantize_absmax(&absmax, absmax_offset);
        Self::from_parts(
            rows,
            cols,
            codes,
            absmax_codes,
            absmax_scales,
            absmax_offset,
        )
    }
}

/// Decision boundaries between consecutive NF4 levels, `(code[i] + code[i + 1]) / 2` in f32.
fn nf4_midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_LEVELS[i] + NF4_LEVELS[i + 1]) / 2.0)
}

/// The CPU kernel's table from a value bin in [-1, 1] to the `DYNAMIC_MAP` index whose midpoint
/// interval holds the bin's left edge (`build_quantize_lut` in `csrc/cpu_ops.cpp`).
fn dynamic_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let mid: [f32; 255] = std::array::from_fn(|i| 0.5 * (DYNAMIC_MAP[i] + DYNAMIC_MAP[i + 1]));
        let mut code = 0usize;
        (0..DYNAMIC_LUT_SIZE)
            .map(|i| {
                let val = -1.0 + (2.0 * i as f32) / (DYNAMIC_LUT_SIZE - 1) as f32;
                while code < mid.len() && mid[code] < val {
                    code += 1;
                }
                code as u8
            })
            .collect()
    })
}

/// `norm_to_lut_index` in `csrc/cpu_ops.cpp`: truncation, after adding one half.
fn dynamic_lut_index(v: f32) -> usize {
    let v = v.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5 * (DYNAMIC_LUT_SIZE - 1) as f32 + 0.5) as usize
}

/// Second level: `quantize_blockwise(absmax - offset, blocksize=256)` on bnb's CPU kernel.
/// Returns one `DYNAMIC_MAP` index per absmax and one f32 scale per 256 absmaxes.
fn quantize_absmax(absmax: &[f32], offset: f32) -> (Vec<u8>, Vec<f32>) {
    let lut = dynamic_lut();
    let mut codes = Vec::with_capacity(absmax.len());
    let mut scales = Vec::with_capacity(absmax.len().div_ceil(NF4_ABSMAX_BLOCK));
    for block in absmax.chunks(NF4_ABSMAX_BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, a| m.max((a - offset).abs()));
        scales.push(amax);
        if amax == 0.0 {
            // The kernel writes code 0 here; the scale of 0 makes its value irrelevant.
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / amax;
        codes.extend(
            block
                .iter()
                .map(|a| lut[dynamic_lut_index((a - offset) * inv)]),
        );
    }
    (codes, scales)
}

/// torch's CPU `Tensor.mean()` of a contiguous f32 vector: `sum / n` in f32.
fn torch_mean(x: &[f32]) -> f32 {
    torch_sum(x) / x.len() as f32
}

/// Lanes of torch's `Vectorized<float>` on an AVX2 CPU.
const TORCH_LANES: usize = 8;

/// torch's single-threaded CPU f32 sum (`aten/src/ATen/native/cpu/SumKernel.cpp`,
/// `vectorized_inner_sum`): a cascade sum over 8-lane vectors, then the scalar tail, then the lanes.
fn torch_sum(x: &[f32]) -> f32 {
    if x.len() < TORCH_LANES {
        return cascade_row_sum(x.len(), |i| x[i]);
    }
    let vectors = x.len() / TORCH_LANES;
    let lanes = cascade_row_sum(vectors, |i| {
        Lanes(std::array::from_fn(|l| x[i * TORCH_LANES + l]))
    });
    let mut acc = 0.0f32;
    for &v in &x[vectors * TORCH_LANES..] {
        acc += v;
    }
    for v in lanes.0 {
        acc += v;
    }
    acc
}

/// An accumulator of torch's cascade sum: an f32 or a vector of f32 lanes.
trait SumAcc: Copy {
    const ZERO: Self;
    fn add(self, other: Self) -> Self;
}

impl SumAcc for f32 {
    const ZERO: Self = 0.0;
    fn add(self, other: Self) -> Self {
        self + other
    }
}

#[derive(Clone, Copy)]
struct Lanes([f32; TORCH_LANES]);

impl SumAcc for Lanes {
    const ZERO: Self = Lanes([0.0; TORCH_LANES]);
    fn add(self, other: Self) -> Self {
        Lanes(std::array::from_fn(|l| self.0[l] + other.0[l]))
    }
}

/// `row_sum` in SumKernel.cpp: four interleaved partial sums (`ilp_factor`), each a 4-level cascade.
fn cascade_row_sum<T: SumAcc>(size: usize, item: impl Fn(usize) -> T) -> T {
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let rows = size / ILP;
    let ceil_log2 = if rows <= 2 {
        1
    } else {
        usize::BITS - (rows - 1).leading_zeros()
    } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;

    let mut acc = [[T::ZERO; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= rows {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = a.add(item(i * ILP + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = std::mem::replace(&mut acc[j - 1], [T::ZERO; ILP]);
            for (a, l) in acc[j].iter_mut().zip(lower) {
                *a = a.add(l);
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    for i in i..rows {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = a.add(item(i * ILP + k));
        }
    }
    let mut partial = acc[0];
    for level in &acc[1..] {
        for (p, l) in partial.iter_mut().zip(level) {
            *p = p.add(*l);
        }
    }
    for i in rows * ILP..size {
        partial[0] = partial[0].add(item(i));
    }
    let mut total = partial[0];
    for p in &partial[1..] {
        total = total.add(*p);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Box-Muller; 1 - u keeps the logarithm finite.
                let u: f32 = 1.0 - rng.random::<f32>();
                let v: f32 = rng.random();
                (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
            })
            .collect()
    }

    fn fixture_bits(key: &str) -> Vec<u32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/nf4/tables.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    #[test]
    fn tables_equal_bitsandbytes() {
        let nf4: Vec<u32> = NF4_LEVELS.iter().map(|x| x.to_bits()).collect();
        assert_eq!(nf4, fixture_bits("nf4_bits"));
        let dynamic: Vec<u32> = DYNAMIC_MAP.iter().map(|x| x.to_bits()).collect();
        assert_eq!(dynamic, fixture_bits("dynamic_signed_bits"));
    }

    #[test]
    fn dynamic_lut_is_monotone_and_spans_the_map() {
        let lut = dynamic_lut();
        assert_eq!(lut.len(), DYNAMIC_LUT_SIZE);
        assert!(lut.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((lut[0], lut[DYNAMIC_LUT_SIZE - 1]), (0, 255));
        // bnb 0.50.2: quantize_blockwise(torch.tensor([0.0, 1.0, -1.0, 0.5]), create_dynamic_map(), 256)
        // gives codes [131, 255, 0, 219]: the 65536 bins are too coarse to land 0.0 on code 127.
        let codes: Vec<u8> = [0.0, 1.0, -1.0, 0.5]
            .map(|v| lut[dynamic_lut_index(v)])
            .to_vec();
        assert_eq!(codes, [131, 255, 0, 219]);
    }

    #[test]
    fn torch_sum_adds_every_element_once() {
        // Small integers sum exactly in any order, so a dropped or doubled element shows.
        for n in [1, 5, 8, 31, 32, 33, 515, 2048, 2049, 40_000] {
            let x: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
            let exact: u64 = (0..n as u64).map(|i| i % 97).sum();
            assert_eq!(torch_sum(&x), exact as f32, "n = {n}");
        }
    }

    #[test]
    fn round_trip_error_is_bounded() {
        let (rows, cols) = (48, 320);
        let x = gaussian(rows * cols, 7);
        let q = Nf4Matrix::quantize(&x, rows, cols).unwrap();
        let y = q.dequantize();
        let err2: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum();
        let ref2: f32 = x.iter().map(|a| a * a).sum();
        let rel_rmse = (err2 / ref2).sqrt();
        assert!(rel_rmse < 0.12, "relative RMSE {rel_rmse}");
        assert!(
            rel_rmse > 0.05,
            "relative RMSE {rel_rmse} is too good for 4 bits"
        );
        for (b, (xb, yb)) in x.chunks(NF4_BLOCK).zip(y.chunks(NF4_BLOCK)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let amax_err = (q.block_absmax(b) - amax).abs();
            // Half the widest NF4 gap (-1.0..-0.6962), plus what the 8-bit absmax lost.
            let bound = 0.152 * amax + amax_err + 1e-6;
            for (a, c) in xb.iter().zip(yb) {
                assert!(
                    (a - c).abs() <= bound,
                    "block {b}: {a} -> {c}, bound {bound}"
                );
            }
            assert!(
                amax_err <= 0.01 * amax,
                "block {b}: absmax {amax} -> {}",
                q.block_absmax(b)
            );
        }
    }

    #[test]
    fn zero_rows_stay_zero_and_levels_round_trip() {
        let cols = 64;
        let mut x = vec![0.0f32; 3 * cols];
        for (i, v) in x[cols..2 * cols].iter_mut().enumerate() {
            *v = NF4_LEVELS[i % 16] * 2.5;
        }
        let q = Nf4Matrix::quantize(&x, 3, cols).unwrap();
        let y = q.dequantize();
        assert!(y[..cols].iter().chain(&y[2 * cols..]).all(|&v| v == 0.0));
        assert!(
            q.packed_codes()[..cols / 2].iter().all(|&b| b == 0x77),
            "0.0 is NF4 code 7"
        );
        for (i, v) in y[cols..2 * cols].iter().enumerate() {
            assert_eq!(
                q.packed_codes()[cols / 2 + i / 2] >> (4 * (1 - i % 2)) & 0x0f,
                (i % 16) as u8
            );
            assert!(
                (v - x[cols + i]).abs() <= 0.01 * 2.5,
                "{i}: {} -> {v}",
                x[cols + i]
            );
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Nf4Matrix::quantize(&[0.0; 96], 1, 96).is_err());
        assert!(Nf4Matrix::quantize(&[0.0; 64], 2, 64).is_err());
        assert!(Nf4Matrix::quantize(&[], 0, 64).is_err());
        let mut x = vec![1.0f32; 128];
        x[70] = f32::NAN;
        let msg = Nf4Matrix::quantize(&x, 2, 64).unwrap_err().to_string();
        assert!(msg.contains("row 1, column 6"), "{msg}");
    }

    #[test]
    fn size_is_about_4_127_bits_per_weight() {
        let q = Nf4Matrix::quantize(&gaussian(1536 * 576, 1), 1536, 576).unwrap();
        let blocks: usize = 1536 * 576 / 64;
        assert_eq!(
            q.size_in_bytes(),
            1536 * 576 / 2 + blocks + 4 * blocks.div_ceil(256) + 4
        );
    }
}
