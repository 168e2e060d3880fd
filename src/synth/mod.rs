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
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::harness::EvalError;
use crate::providers::chat::{ChatClient, ChatRequest, ChatResponse, FailedAttempt, FinishReason};
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

/// One request through a provider chain and what came of it: who answered, the providers that
/// failed before, tokens, cost and time; or, when every provider failed, each one's error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub started: String,
    pub latency_s: f64,
    /// The provider (its configured name) and the model that answered, as the API reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Providers of the chain that failed before it answered, with their errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FailedAttempt>,
    /// Served from the response cache (nothing paid).
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Why no reply came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Call {
    /// Sends `request` through `client` and records it; the reply, or `None` when the chain
    /// failed (the record holds the error).
    pub fn send(client: &dyn ChatClient, request: &ChatRequest) -> (Call, Option<ChatResponse>) {
        let mut call = Call {
            started: utc_now(),
            ..Call::default()
        };
        let clock = Instant::now();
        let reply = client.chat(request);
        call.latency_s = clock.elapsed().as_secs_f64();
        match reply {
            Ok(r) => {
                call.provider = Some(r.provider.clone());
                call.model = Some(r.model.clone());
                call.fallbacks = r.failed_attempts.clone();
                call.cached = r.cached;
                call.input_tokens = r.usage.input_tokens;
                call.output_tokens = r.usage.output_tokens;
                call.cost_usd = r.usage.cost_usd;
                call.finish_reason = Some(r.finish_reason.clone());
                (call, Some(r))
            }
            Err(e) => {
                call.error = Some(e.to_string());
                (call, None)
            }
        }
    }

    /// What it cost: nothing when it came from the cache.
    pub fn paid_usd(&self) -> f64 {
        if self.cached {
            0.0
        } else {
            self.cost_usd.unwrap_or(0.0)
        }
    }
}

pub use crate::data::template::utc_now;

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
