//! Scoring: the masked cross-entropy of chat examples, per token through the LM head in vocab
//! blocks ([`loss`]) and per example in right-padded batches ([`score`]). Training's validation
//! and the `score` command use it, so it sits below `train`. [`EVAL_OUTPUT`] names what an
//! evaluation's output folder holds, so a training run can own its `eval/` folder too.

pub mod loss;
pub mod score;

pub use loss::nll_rows;
pub use score::{
    score_examples, score_examples_until, ExampleScore, ScoreReport, DEFAULT_SCORE_BATCH,
};

/// An evaluation's output folder (`lora-train eval`'s `output.dir`, a training run's `eval/`):
/// its reports, answers, cache and plots. Anything else there is the user's.
pub const EVAL_OUTPUT: crate::fsutil::Artifact = crate::fsutil::Artifact {
    what: "an eval output folder",
    files: &["report.json", "report.md", "judgments.jsonl"],
    folders: &["generations", "cache", "plots"],
};
