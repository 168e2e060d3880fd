//! Intervals: a seeded bootstrap over prompts (the resampling unit, so both judge orders of a
//! prompt move together), percentiles as numpy's default linear method computes them, the
//! mean and sample standard deviation, and Wilson's score interval for pass rates.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The 95% interval's two tails.
const LOWER: f64 = 0.025;
const UPPER: f64 = 0.975;

/// `rounds` resamples of the indices `0..n`, each `n` long, drawn with replacement from a
/// generator seeded with `seed`: the same seed gives the same rounds.
pub fn resamples(n: usize, rounds: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = StdRng::seed_from_u64(seed);
    if n == 0 {
        return Vec::new();
    }
    (0..rounds)
        .map(|_| (0..n).map(|_| rng.random_range(0..n)).collect())
        .collect()
}

/// The `q` quantile (0 ≤ q ≤ 1) of `values` by linear interpolation between order statistics
/// (numpy's `percentile` default). `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// The 95% percentile interval of `stat` over `rounds` bootstrap resamples of `n` prompts; the
/// statistic sees each round's indices and may decline a round (`None`, e.g. no games). `None`
/// when every round declined.
pub fn bootstrap_ci(
    n: usize,
    rounds: usize,
    seed: u64,
    mut stat: impl FnMut(&[usize]) -> Option<f64>,
) -> Option<[f64; 2]> {
    let values: Vec<f64> = resamples(n, rounds, seed)
        .iter()
        .filter_map(|idx| stat(idx))
        .filter(|v| v.is_finite())
        .collect();
    interval(&values)
}

/// The 95% bootstrap interval of the mean of `values`, each value one resampling unit.
pub fn mean_ci(values: &[f64], rounds: usize, seed: u64) -> Option<[f64; 2]> {
    bootstrap_ci(values.len(), rounds, seed, |idx| {
        Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64)
    })
}

/// The 2.5% and 97.5% percentiles of `values`.
pub fn interval(values: &[f64]) -> Option<[f64; 2]> {
    Some([percentile(values, LOWER)?, percentile(values, UPPER)?])
}

/// Mean, sample standard deviation (n − 1; 0 for a single value) and count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Summary { mean, std, n })
}

/// Wilson's 95% score interval for `passed` successes out of `n`; `None` for `n = 0`.
pub fn wilson_ci(passed: usize, n: usize) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let z = 1.959_963_984_540_054_f64;
    let (n, p) = (n as f64, passed as f64 / n as f64);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    Some([(centre - half).max(0.0), (centre + half).min(1.0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_as_numpy_does() {
        let v = [3.0, 1.0, 4.0, 1.0, 5.0];
        // numpy.percentile([3, 1, 4, 1, 5], [0, 2.5, 50, 97.5, 100])
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert!((percentile(&v, 0.025).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert!((percentile(&v, 0.975).unwrap() - 4.9).abs() < 1e-12);
        assert_eq!(percentile(&v, 1.0), Some(5.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_seeded_bootstrap_repeats_and_contains_the_estimate() {
        let data: Vec<f64> = (0..50).map(|i| ((i * 37) % 11) as f64).collect();
        let mean =
            |idx: &[usize]| Some(idx.iter().map(|&i| data[i]).sum::<f64>() / idx.len() as f64);
        let a = bootstrap_ci(data.len(), 500, 7, mean).unwrap();
        let b = bootstrap_ci(data.len(), 500, 7, mean).unwrap();
        assert_eq!(a, b);
        assert_eq!(mean_ci(&data, 500, 7), Some(a));
        let c = bootstrap_ci(data.len(), 500, 8, mean).unwrap();
        assert_ne!(a, c);
        let point = summarize(&data).unwrap().mean;
        assert!(a[0] < point && point < a[1], "{a:?} vs {point}");
        assert_eq!(bootstrap_ci(0, 100, 0, mean), None);
    }

    #[test]
    fn summaries_use_the_sample_deviation() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(summarize(&[2.0]).unwrap().std, 0.0);
    }

    #[test]
    fn wilson_intervals_match_the_formula_and_stay_in_range() {
        // statsmodels.stats.proportion.proportion_confint(8, 10, method="wilson")
        let [lo, hi] = wilson_ci(8, 10).unwrap();
        assert!(
            (lo - 0.490_162_3).abs() < 1e-6 && (hi - 0.943_317_8).abs() < 1e-6,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson_ci(0, 5).unwrap();
        assert_eq!(lo, 0.0);
        assert!(hi > 0.0 && hi < 1.0);
        assert_eq!(wilson_ci(0, 0), None);
    }
}
