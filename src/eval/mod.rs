//! Scoring: the masked cross-entropy of chat examples, per token through the LM head in vocab
//! blocks ([`loss`]) and per example in right-padded batches ([`score`]). Training's validation
//! and the `score` command use it, so it sits below `train`.

pub mod loss;
pub mod score;

pub use loss::nll_rows;
pub use score::{
    score_examples, score_examples_until, ExampleScore, ScoreReport, DEFAULT_SCORE_BATCH,
};
