//! Synthetic data and conversation processing over the chat providers: `data synth` runs a
//! staged generator (each stage a prompt template and its own fallback chain, with word and
//! regex gates) into training JSONL, and `data process` improves the last reply of existing
//! conversations (a critique then a rewrite, or a fresh reply) into SFT and DPO files, optionally
//! keeping a pair only when the evaluation harness's pairwise judge prefers it in both orders.
//!
//! Both follow what users of distilabel (issues #52, #956, #1065) and LiteLLM ask for: outputs
//! are append-only JSONL committed one item at a time ([`journal`]), so an interrupted run loses
//! nothing and a re-run skips finished items; a failed call is recorded with its error, never
//! cached and never a silent empty row; every reply names the provider and model that answered
//! and the fallbacks taken; and a pair whose replies are equal is never written. It uses the
//! judge of [`crate::harness`], so it sits above it.

pub mod config;
pub mod dedupe;
pub mod generate;
pub mod journal;
pub mod process;

use std::path::PathBuf;

use crate::harness::EvalError;
use crate::providers::ProviderError;

/// What can go wrong in `data synth` and `data process`.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Core(#[from] crate::Error),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Eval(Box<EvalError>),
    /// A prompt template does not compile or render; `key` names it (`stage.1.prompt`).
    #[error("{key}: {msg}")]
    Template { key: String, msg: String },
    /// The outputs at `path` were made with another config; a re-run would mix two datasets.
    #[error("{}: made with another config (hash {found}, now {expected}); give --force to start over, or choose another output", .path.display())]
    ConfigChanged {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// An input file is wrong at a line: the message names the field.
    #[error("{}:{line}: {msg}", .file.display())]
    Input {
        file: PathBuf,
        line: usize,
        msg: String,
    },
}

impl From<EvalError> for SynthError {
    fn from(e: EvalError) -> Self {
        SynthError::Eval(Box::new(e))
    }
}

/// The current time as RFC 3339 UTC with milliseconds (`2026-12-03T05:04:00.123Z`).
pub fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, m, d) = crate::data::template::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        now.subsec_millis()
    )
}

/// The hex SHA-256 of a value's JSON.
pub fn hash_json(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(value.to_string().as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}
