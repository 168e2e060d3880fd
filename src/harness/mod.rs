//! The evaluation harness: candidates answer held-out prompts, a judge compares them pairwise in
//! both orders and scores traits, offline checks need no judge, and the statistics turn verdicts
//! into win rates and ratings with confidence intervals. It calls the chat providers, so it sits
//! above them; the masked scoring that training also uses stays in `eval`. After a training run
//! it evaluates the run's adapter against its base (`training`).

pub mod candidates;
pub mod checks;
pub mod config;
pub mod judge;
pub mod local;
pub mod plots;
pub mod pool;
pub mod prompts;
pub mod record;
pub mod report;
pub mod run;
pub mod stats;
pub mod tasks;
pub mod training;
pub mod verdict;

use std::path::PathBuf;

use crate::providers::ProviderError;

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Core(#[from] crate::Error),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A prompt could not be answered (too long for the model's context, say).
    #[error("prompt `{id}` (data line {line}): {source}")]
    Prompt {
        id: String,
        line: usize,
        #[source]
        source: Box<crate::Error>,
    },
    /// A judge template does not compile or render.
    #[error("{0}")]
    Template(String),
    /// An input file is wrong at a line (when known): the message names the key or field.
    #[error("{}{}: {msg}", .file.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        file: PathBuf,
        line: Option<usize>,
        msg: String,
    },
}
