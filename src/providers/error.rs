//! Errors of the provider layer. Messages name the provider, the HTTP status and
//! the provider's own error type and code; they never carry request headers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// One failing line of a dataset check (`line` is 1-based; `None` for the whole file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineFailure {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LineFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Errors raised by chat clients and hosted fine-tuning.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The API key's environment variable is not set.
    #[error("{provider}: environment variable {var} is not set (API keys are read from the environment only)")]
    MissingKey { provider: String, var: String },

    /// A provider or `[hosted]` setting is invalid.
    #[error("{0}")]
    Config(String),

    /// The provider answered with an error (an error status, or an error inside a 200 body).
    #[error("{provider}: HTTP {status}{}{}: {message}", kind.as_deref().map(|k| format!(" {k}")).unwrap_or_default(), code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        provider: String,
        status: u16,
        /// The provider's error type (`rate_limit_error`, `invalid_request_error`, ...).
        kind: Option<String>,
        /// The provider's error code (`insufficient_quota`, `502`, ...).
        code: Option<String>,
        message: String,
        /// Whether another attempt could succeed (used by the retry loop and reported).
        retryable: bool,
    },

    /// The request could not be sent or its reply not received.
    #[error("{provider}: {method} {path}: {message}")]
    Transport {
        provider: String,
        method: String,
        path: String,
        message: String,
    },

    /// No reply within the per-request timeout.
    #[error("{provider}: {method} {path}: no reply within {:.1}s", timeout.as_secs_f64())]
    Timeout {
        provider: String,
        method: String,
        path: String,
        timeout: Duration,
    },

    /// The reply is not what the API documents (malformed JSON, missing field).
    #[error("{provider}: unexpected reply to {path}: {message}")]
    Decode {
        provider: String,
        path: String,
        message: String,
    },

    /// Every provider of a fallback chain failed; each attempt is listed.
    #[error("all {} providers failed: {}", failures.len(), failures.join("; "))]
    AllFailed { failures: Vec<String> },

    /// The dataset fails the provider's checks; every failing line is listed.
    #[error("{}: {} failing {} for {provider}:\n{}", path.display(), failures.len(), if failures.len() == 1 { "check" } else { "checks" }, failures.iter().map(|f| format!("  {}: {f}", path.display())).collect::<Vec<_>>().join("\n"))]
    Dataset {
        provider: String,
        path: PathBuf,
        failures: Vec<LineFailure>,
    },

    /// Job settings the provider cannot honour at all.
    #[error("[hosted] {provider}: {}", errors.join("; "))]
    Mapping {
        provider: String,
        errors: Vec<String>,
    },

    /// Job settings the provider would not honour exactly; they must be accepted explicitly.
    #[error("[hosted] {provider} would not honour these settings:\n{}\nset `accept_warnings = true` in [hosted] (or pass --accept-warnings) to submit anyway", warnings.iter().map(|w| format!("  - {w}")).collect::<Vec<_>>().join("\n"))]
    UnacceptedWarnings {
        provider: String,
        warnings: Vec<String>,
    },

    /// A job ran and failed on the provider's side.
    #[error("{provider} job {id} failed: {message}")]
    JobFailed {
        provider: String,
        id: String,
        message: String,
    },

    /// A job id is not in the local records.
    #[error("no local record for job `{id}` in {}", dir.display())]
    UnknownJob { id: String, dir: PathBuf },

    /// Reading or writing a local file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A local output path holds something the command would replace ([`crate::Error::WouldReplace`]).
    #[error(transparent)]
    WouldReplace(crate::Error),

    /// The operation is not offered by this provider.
    #[error("{provider}: {message}")]
    Unsupported { provider: String, message: String },
}

impl ProviderError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ProviderError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether a retry (or the next provider of a chain) could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Api { retryable, .. } => *retryable,
            ProviderError::Transport { .. } | ProviderError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// Results of the provider layer.
pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

impl From<crate::Error> for ProviderError {
    /// The library's file errors as ours; the atomic writes and output checks produce nothing
    /// else.
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Io { path, source } => ProviderError::Io { path, source },
            e @ crate::Error::WouldReplace { .. } => ProviderError::WouldReplace(e),
            other => ProviderError::Config(other.to_string()),
        }
    }
}

impl From<ProviderError> for crate::Error {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Io { path, source } => crate::Error::Io { path, source },
            ProviderError::WouldReplace(e) => e,
            other => crate::Error::Msg(other.to_string()),
        }
    }
}
