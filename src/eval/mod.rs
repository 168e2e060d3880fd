//! Evaluation: masked cross-entropy of chat datasets (the `score` command), and later
//! perplexity, judges and ratings.

pub mod loss;
pub mod score;

pub use loss::nll_rows;
pub use score::{score_examples, ExampleScore, ScoreReport, DEFAULT_SCORE_BATCH};
