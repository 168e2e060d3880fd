//! Ratings from the per-prompt games: Bradley-Terry by maximum likelihood (ties are half a win
//! for each side, as in FastChat), on the Elo scale with the anchor at 1000, with bootstrap CIs
//! over prompts and a CI-aware rank; and online Elo (K = 4) in data order. A candidate outside
//! the anchor's strongly connected part of the win graph has no finite estimate: it is reported
//! as unbounded, with a CI from the rounds where it was finite, never as a huge number.

use super::games::Game;
use super::interval::{interval, resamples};

/// Elo's scale: 400 points per factor of ten in the odds.
const SCALE: f64 = 400.0 / std::f64::consts::LN_10;
pub const INITIAL: f64 = 1000.0;
/// Online Elo's step.
pub const ELO_K: f64 = 4.0;

/// One prompt's game between candidates `first` and `second` (indices).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatedGame {
    pub prompt: usize,
    pub first: usize,
    pub second: usize,
    pub game: Game,
}

/// A candidate's Bradley-Terry rating.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rating {
    /// `None` when the maximum-likelihood rating is unbounded.
    pub rating: Option<f64>,
    pub unbounded: bool,
    pub ci95: Option<[f64; 2]>,
    /// 1 + the number of candidates whose CI lies wholly above this one's.
    pub rank: usize,
}

/// Weighted credit `w[i][j]` of i over j (a tie gives each side half) and games `n[i][j]`.
struct Tally {
    w: Vec<Vec<f64>>,
    n: Vec<Vec<f64>>,
}

impl Tally {
    fn new(k: usize, games: impl IntoIterator<Item = RatedGame>, strong_weight: u32) -> Self {
        let mut t = Tally {
            w: vec![vec![0.0; k]; k],
            n: vec![vec![0.0; k]; k],
        };
        for g in games {
            let (i, j) = (g.first, g.second);
            if i == j || i >= k || j >= k {
                continue;
            }
            let weight = g.game.weight(strong_weight);
            let s = g.game.score_first();
            t.w[i][j] += weight * s;
            t.w[j][i] += weight * (1.0 - s);
            t.n[i][j] += weight;
            t.n[j][i] += weight;
        }
        t
    }

    /// The candidates that can reach `anchor` and be reached from it along "won credit over".
    fn finite_part(&self, anchor: usize) -> Vec<bool> {
        let k = self.w.len();
        let reach = |forward: bool| {
            let mut seen = vec![false; k];
            let mut stack = vec![anchor];
            seen[anchor] = true;
            while let Some(i) = stack.pop() {
                for (j, seen_j) in seen.iter_mut().enumerate() {
                    let edge = if forward { self.w[i][j] } else { self.w[j][i] };
                    if edge > 0.0 && !*seen_j {
                        *seen_j = true;
                        stack.push(j);
                    }
                }
            }
            seen
        };
        let (from, to) = (reach(true), reach(false));
        from.iter().zip(&to).map(|(a, b)| *a && *b).collect()
    }

    fn log_likelihood(&self, theta: &[f64], members: &[usize]) -> f64 {
        let mut ll = 0.0;
        for (a, &i) in members.iter().enumerate() {
            for &j in &members[a + 1..] {
                if self.n[i][j] > 0.0 {
                    let d = theta[i] - theta[j];
                    // w_ij·log σ(d) + w_ji·log σ(−d), with log σ(x) = −softplus(−x).
                    ll += self.w[i][j] * -softplus(-d) + self.w[j][i] * -softplus(d);
                }
            }
        }
        ll
    }

    /// Log-strengths of `members` (the anchor at 0) by Newton's method on the concave
    /// log-likelihood, halving a step that would not raise it.
    fn fit(&self, anchor: usize, members: &[usize]) -> Vec<f64> {
        let k = self.w.len();
        let mut theta = vec![0.0; k];
        let free: Vec<usize> = members.iter().copied().filter(|&i| i != anchor).collect();
        if free.is_empty() {
            return theta;
        }
        let m = free.len();
        for _ in 0..200 {
            let mut grad = vec![0.0; m];
            let mut hess = vec![vec![0.0; m]; m];
            for (a, &i) in free.iter().enumerate() {
                for &j in members {
                    if i == j || self.n[i][j] == 0.0 {
                        continue;
                    }
                    let s = sigmoid(theta[i] - theta[j]);
                    grad[a] += self.w[i][j] - self.n[i][j] * s;
                    let c = self.n[i][j] * s * (1.0 - s);
                    hess[a][a] += c;
                    if let Some(b) = free.iter().position(|&f| f == j) {
                        hess[a][b] -= c;
                    }
                }
            }
            // Newton: (−H) δ = g, with −H positive definite on the finite part.
            let Some(step) = solve(hess, grad) else { break };
            let before = self.log_likelihood(&theta, members);
            let mut t = 1.0;
            let mut next = theta.clone();
            loop {
                for (a, &i) in free.iter().enumerate() {
                    next[i] = theta[i] + t * step[a];
                }
                if self.log_likelihood(&next, members) >= before - 1e-12 || t < 1e-6 {
                    break;
                }
                t /= 2.0;
            }
            let moved = free
                .iter()
                .map(|&i| (next[i] - theta[i]).abs())
                .fold(0.0, f64::max);
            theta = next;
            if moved < 1e-13 {
                break;
            }
        }
        theta
    }

    /// Each candidate's share of its weighted credit: above ½ means its unbounded rating is +∞.
    fn leans_up(&self, i: usize) -> bool {
        let won: f64 = self.w[i].iter().sum();
        let played: f64 = self.n[i].iter().sum();
        won * 2.0 > played
    }
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None` if `a` is singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let m = b.len();
    for col in 0..m {
        let pivot = (col..m).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, rest) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (off, row) in rest.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[col + 1 + off] -= f * b[col];
        }
    }
    let mut x = vec![0.0; m];
    for row in (0..m).rev() {
        let tail: f64 = (row + 1..m).map(|c| a[row][c] * x[c]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

/// Bradley-Terry ratings of `k` candidates on the Elo scale, `anchor` at 1000; `None` for a
/// candidate whose maximum-likelihood rating is unbounded.
pub fn bradley_terry(
    k: usize,
    games: &[RatedGame],
    anchor: usize,
    strong_weight: u32,
) -> Vec<Option<f64>> {
    fit_ratings(&Tally::new(k, games.iter().copied(), strong_weight), anchor)
}

fn fit_ratings(tally: &Tally, anchor: usize) -> Vec<Option<f64>> {
    let finite = tally.finite_part(anchor);
    let members: Vec<usize> = (0..finite.len()).filter(|&i| finite[i]).collect();
    let theta = tally.fit(anchor, &members);
    (0..finite.len())
        .map(|i| finite[i].then(|| INITIAL + SCALE * theta[i]))
        .collect()
}

/// Ratings with bootstrap CIs over prompts (`rounds` resamples of the `n_prompts` prompts,
/// seeded) and CI-aware ranks.
pub fn bradley_terry_ci(
    k: usize,
    games: &[RatedGame],
    anchor: usize,
    strong_weight: u32,
    n_prompts: usize,
    rounds: usize,
    seed: u64,
) -> Vec<Rating> {
    let full = Tally::new(k, games.iter().copied(), strong_weight);
    let point = fit_ratings(&full, anchor);
    let mut by_prompt: Vec<Vec<RatedGame>> = vec![Vec::new(); n_prompts];
    for g in games {
        if let Some(list) = by_prompt.get_mut(g.prompt) {
            list.push(*g);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); k];
    for round in resamples(n_prompts, rounds, seed) {
        let tally = Tally::new(
            k,
            round.iter().flat_map(|&p| by_prompt[p].iter().copied()),
            strong_weight,
        );
        for (i, r) in fit_ratings(&tally, anchor).into_iter().enumerate() {
            if let Some(r) = r {
                samples[i].push(r);
            }
        }
    }
    let ci: Vec<Option<[f64; 2]>> = samples.iter().map(|s| interval(s)).collect();
    // For ranking, an unbounded rating without a finite round sits at its infinity.
    let span: Vec<[f64; 2]> = (0..k)
        .map(|i| match (ci[i], point[i]) {
            (Some(c), _) => c,
            (None, Some(r)) => [r, r],
            (None, None) if full.leans_up(i) => [f64::INFINITY; 2],
            (None, None) => [f64::NEG_INFINITY; 2],
        })
        .collect();
    (0..k)
        .map(|i| Rating {
            rating: point[i],
            unbounded: point[i].is_none(),
            ci95: ci[i],
            rank: 1
                + (0..k)
                    .filter(|&j| j != i && span[j][0] > span[i][1])
                    .count(),
        })
        .collect()
}

/// Online Elo over the games in the order given, every candidate starting at 1000; a game
/// weighing `w` is played `w` times.
pub fn online_elo(k: usize, games: &[RatedGame], strong_weight: u32) -> Vec<f64> {
    let mut r = vec![INITIAL; k];
    for g in games {
        let (i, j) = (g.first, g.second);
        if i == j || i >= k || j >= k {
            continue;
        }
        for _ in 0..g.game.weight(strong_weight) as u32 {
            let expected = 1.0 / (1.0 + 10f64.powf((r[j] - r[i]) / 400.0));
            let delta = ELO_K * (g.game.score_first() - expected);
            r[i] += delta;
            r[j] -= delta;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn games(
        first: usize,
        second: usize,
        wins: usize,
        losses: usize,
        ties: usize,
    ) -> Vec<RatedGame> {
        let mut out = Vec::new();
        let kinds = std::iter::repeat_n(Game::First { strong: false }, wins)
            .chain(std::iter::repeat_n(Game::Second { strong: false }, losses))
            .chain(std::iter::repeat_n(Game::Tie, ties));
        for game in kinds {
            out.push(RatedGame {
                prompt: out.len(),
                first,
                second,
                game,
            });
        }
        out
    }

    #[test]
    fn two_candidates_follow_the_closed_form() {
        // p = (wins + ties/2) / n; rating difference = 400·log10(p / (1 − p)).
        let g = games(1, 0, 13, 5, 4);
        let p: f64 = (13.0 + 2.0) / 22.0;
        let r = bradley_terry(2, &g, 0, 1);
        assert_eq!(r[0], Some(1000.0));
        let want = 1000.0 + 400.0 * (p / (1.0 - p)).log10();
        assert!((r[1].unwrap() - want).abs() < 1e-9, "{r:?} vs {want}");
    }

    #[test]
    fn a_clean_sweep_is_unbounded_not_huge() {
        let g = games(1, 0, 10, 0, 0);
        let r = bradley_terry(2, &g, 0, 1);
        assert_eq!(r, vec![Some(1000.0), None]);
        let rated = bradley_terry_ci(2, &g, 0, 1, g.len(), 200, 0);
        assert!(rated[1].unbounded && rated[1].rating.is_none());
        // Every resample is a sweep too: no finite round, and it ranks first.
        assert_eq!(rated[1].ci95, None);
        assert_eq!((rated[0].rank, rated[1].rank), (2, 1));
    }

    #[test]
    fn bootstrap_cis_repeat_and_contain_the_estimate() {
        let mut g = games(1, 0, 30, 12, 8);
        let more = games(2, 0, 20, 20, 10);
        let offset = g.len();
        g.extend(more.into_iter().map(|x| RatedGame {
            prompt: x.prompt + offset,
            ..x
        }));
        let n = g.len();
        let a = bradley_terry_ci(3, &g, 0, 1, n, 300, 11);
        let b = bradley_terry_ci(3, &g, 0, 1, n, 300, 11);
        assert_eq!(a, b);
        for r in &a {
            let [lo, hi] = r.ci95.unwrap();
            let x = r.rating.unwrap();
            assert!(lo <= x && x <= hi, "{r:?}");
        }
        // Candidate 1 clearly beats the anchor; candidate 2 ties it: 1 ranks above both only if
        // its interval clears theirs.
        assert!(a[1].rating.unwrap() > a[2].rating.unwrap());
    }

    #[test]
    fn online_elo_moves_by_k_times_the_surprise() {
        let g = games(0, 1, 1, 0, 0);
        let r = online_elo(2, &g, 1);
        assert!(
            (r[0] - 1002.0).abs() < 1e-12 && (r[1] - 998.0).abs() < 1e-12,
            "{r:?}"
        );
        let strong = vec![RatedGame {
            prompt: 0,
            first: 0,
            second: 1,
            game: Game::First { strong: true },
        }];
        let r3 = online_elo(2, &strong, 3);
        assert!(r3[0] > 1005.9 && r3[0] < 1006.0, "{r3:?}");
    }
}
