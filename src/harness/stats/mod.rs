//! Statistics of an evaluation, written out so every number is reproducible from the verdicts:
//! per-prompt games from the two judge orders ([`games`]), Bradley-Terry ratings and online Elo
//! ([`ratings`]), the length-controlled win rate ([`length`]), and seeded bootstrap and Wilson
//! intervals ([`interval`]). `scripts/make_eval_stats_fixtures.py` is the reference.

pub mod games;
pub mod interval;
pub mod length;
pub mod ratings;

pub use games::{Game, PairTally};
pub use interval::{bootstrap_ci, mean_ci, percentile, summarize, wilson_ci, Summary};
pub use length::lc_win_rate;
pub use ratings::{bradley_terry, bradley_terry_ci, online_elo, RatedGame, Rating};
