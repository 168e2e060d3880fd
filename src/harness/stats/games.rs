//! One game per prompt and pair: the judge sees the pair in both orders, and only a direction
//! both orders agree on counts (MT-Bench's rule). A disagreement is a tie, counted also as
//! inconsistent, so `wins_first + wins_second + ties = n`. A strong verdict in both orders
//! weighs `strong_weight` games in the win rate and the ratings (Arena-Hard uses 3).

use crate::harness::verdict::Verdict;

/// The outcome of one prompt for a pair (first, second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Game {
    /// The first candidate won in both orders; `strong` when both verdicts were strong.
    First {
        strong: bool,
    },
    Second {
        strong: bool,
    },
    /// Both orders said tie.
    Tie,
    /// The orders disagreed: a tie that also counts as inconsistent.
    Inconsistent,
}

impl Game {
    /// The game from the verdict with the first candidate shown as A, and the verdict with it
    /// shown as B.
    pub fn from_orders(first_as_a: Verdict, first_as_b: Verdict) -> Self {
        let (one, two) = (first_as_a, first_as_b.swapped());
        if one.direction() != two.direction() {
            return Game::Inconsistent;
        }
        let strong = one.strong() && two.strong();
        match one.direction() {
            1 => Game::First { strong },
            -1 => Game::Second { strong },
            _ => Game::Tie,
        }
    }

    /// The first candidate's score: 1 for a win, ½ for a tie (inconsistent included), 0 for a loss.
    pub fn score_first(self) -> f64 {
        match self {
            Game::First { .. } => 1.0,
            Game::Second { .. } => 0.0,
            Game::Tie | Game::Inconsistent => 0.5,
        }
    }

    /// How many games this one weighs.
    pub fn weight(self, strong_weight: u32) -> f64 {
        match self {
            Game::First { strong: true } | Game::Second { strong: true } => strong_weight as f64,
            _ => 1.0,
        }
    }

    /// The same game seen from the second candidate.
    pub fn swapped(self) -> Self {
        match self {
            Game::First { strong } => Game::Second { strong },
            Game::Second { strong } => Game::First { strong },
            other => other,
        }
    }
}

/// The counts of one pair over its prompts, and the first candidate's win rate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairTally {
    pub wins_first: usize,
    pub wins_second: usize,
    /// Ties of every kind, the inconsistent prompts included.
    pub ties: usize,
    pub inconsistent: usize,
    /// Weighted games: a strong win counts `strong_weight` times.
    weighted_first: f64,
    weighted_second: f64,
}

impl PairTally {
    pub fn of(games: &[Game], strong_weight: u32) -> Self {
        let mut t = PairTally::default();
        for &g in games {
            match g {
                Game::First { .. } => {
                    t.wins_first += 1;
                    t.weighted_first += g.weight(strong_weight);
                }
                Game::Second { .. } => {
                    t.wins_second += 1;
                    t.weighted_second += g.weight(strong_weight);
                }
                Game::Tie => t.ties += 1,
                Game::Inconsistent => {
                    t.ties += 1;
                    t.inconsistent += 1;
                }
            }
        }
        t
    }

    pub fn n(&self) -> usize {
        self.wins_first + self.wins_second + self.ties
    }

    /// (wins + ties/2) / n for the first candidate, over weighted games; `None` with no games.
    pub fn win_rate_first(&self) -> Option<f64> {
        let ties = self.ties as f64;
        let total = self.weighted_first + self.weighted_second + ties;
        (total > 0.0).then(|| (self.weighted_first + ties / 2.0) / total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn orders_that_agree_give_the_result_and_others_an_inconsistent_tie() {
        // First shown as A wins; shown as B, "B>A" is also a win for it.
        assert_eq!(
            Game::from_orders(BetterA, BetterB),
            Game::First { strong: false }
        );
        assert_eq!(
            Game::from_orders(MuchBetterA, MuchBetterB),
            Game::First { strong: true }
        );
        assert_eq!(
            Game::from_orders(MuchBetterA, BetterB),
            Game::First { strong: false }
        );
        assert_eq!(
            Game::from_orders(BetterB, MuchBetterA),
            Game::Second { strong: false }
        );
        assert_eq!(Game::from_orders(Tie, Tie), Game::Tie);
        // A judge that always prefers the reply shown first is inconsistent on every prompt.
        assert_eq!(Game::from_orders(BetterA, BetterA), Game::Inconsistent);
        assert_eq!(Game::from_orders(Tie, BetterB), Game::Inconsistent);
    }

    #[test]
    fn counts_add_up_and_ties_are_half_a_win() {
        let games = [
            Game::First { strong: true },
            Game::First { strong: false },
            Game::Second { strong: false },
            Game::Tie,
            Game::Inconsistent,
        ];
        let t = PairTally::of(&games, 1);
        assert_eq!(
            (t.wins_first, t.wins_second, t.ties, t.inconsistent),
            (2, 1, 2, 1)
        );
        assert_eq!(t.n(), games.len());
        assert!((t.win_rate_first().unwrap() - 3.0 / 5.0).abs() < 1e-15);
        // A strong win weighs three games: (3 + 1 + 1) / (3 + 1 + 1 + 2).
        let t3 = PairTally::of(&games, 3);
        assert_eq!(t3.n(), games.len());
        assert!((t3.win_rate_first().unwrap() - 5.0 / 7.0).abs() < 1e-15);
        assert_eq!(PairTally::of(&[], 1).win_rate_first(), None);
    }
}
