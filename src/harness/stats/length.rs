//! The length-controlled win rate, as AlpacaEval 2 reports it: a logistic fit of each prompt's
//! score (win 1, tie ½, loss 0) on `tanh(Δlen / σ)`, with σ the standard deviation of the
//! length differences, read at Δlen = 0. A judge that rewards length alone gets ½.

/// P(win | Δlen = 0) for the first candidate from `(score, len_first − len_second)` per prompt;
/// `None` for no prompts. With all Δlen equal, it is the plain win rate.
pub fn lc_win_rate(games: &[(f64, f64)]) -> Option<f64> {
    let n = games.len();
    if n == 0 {
        return None;
    }
    let mean_d = games.iter().map(|g| g.1).sum::<f64>() / n as f64;
    let sigma = (games.iter().map(|g| (g.1 - mean_d).powi(2)).sum::<f64>() / n as f64).sqrt();
    let xs: Vec<f64> = games
        .iter()
        .map(|g| {
            if sigma > 0.0 {
                (g.1 / sigma).tanh()
            } else {
                0.0
            }
        })
        .collect();
    let (b0, _) = logistic_fit(&xs, &games.iter().map(|g| g.0).collect::<Vec<_>>());
    Some(sigmoid(b0))
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Intercept and slope of a logistic regression of fractional `y` on `x` by Newton's method,
/// with a small ridge (1e-6) that keeps a clean sweep finite; the slope stays 0 when `x` is 0.
fn logistic_fit(x: &[f64], y: &[f64]) -> (f64, f64) {
    const RIDGE: f64 = 1e-6;
    let (mut b0, mut b1) = (0.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut g0, mut g1) = (-RIDGE * b0, -RIDGE * b1);
        let (mut h00, mut h01, mut h11) = (RIDGE, 0.0, RIDGE);
        for (&xi, &yi) in x.iter().zip(y) {
            let p = sigmoid(b0 + b1 * xi);
            let r = yi - p;
            g0 += r;
            g1 += r * xi;
            let w = p * (1.0 - p);
            h00 += w;
            h01 += w * xi;
            h11 += w * xi * xi;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-300 {
            break;
        }
        let d0 = (h11 * g0 - h01 * g1) / det;
        let d1 = (h00 * g1 - h01 * g0) / det;
        b0 += d0;
        b1 += d1;
        if d0.abs().max(d1.abs()) < 1e-12 {
            break;
        }
    }
    (b0, b1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lengths_give_the_plain_win_rate() {
        let games = [(1.0, 0.0), (1.0, 0.0), (0.0, 0.0), (0.5, 0.0)];
        assert!((lc_win_rate(&games).unwrap() - 0.625).abs() < 1e-6);
        assert_eq!(lc_win_rate(&[]), None);
    }

    #[test]
    fn wins_that_come_only_from_length_are_controlled_away() {
        // The longer reply always wins, and each candidate is longer half the time.
        let games: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                if i % 2 == 0 {
                    (1.0, 50.0)
                } else {
                    (0.0, -50.0)
                }
            })
            .collect();
        let lc = lc_win_rate(&games).unwrap();
        assert!((lc - 0.5).abs() < 1e-3, "{lc}");
        // A candidate that wins three prompts in four whatever the lengths keeps its ¾.
        let games: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                let score = if i % 8 >= 6 { 0.0 } else { 1.0 };
                (score, if i % 2 == 0 { 50.0 } else { -50.0 })
            })
            .collect();
        let lc = lc_win_rate(&games).unwrap();
        assert!((lc - 0.75).abs() < 1e-4, "{lc}");
    }
}
