//! Hosted fine-tuning: the same job file trains on Together's or OpenAI's cluster. [`mapping`]
//! turns the `[hosted]` section ([`HostedConfig`]) and the keys of the other sections
//! ([`spec::HostedJobSpec`]) into the provider's create-job body; [`validate`] checks the dataset
//! first; [`together`] and [`openai`] speak the two APIs behind [`FineTuneApi`]; [`record`] keeps a
//! local record per job; [`jobs::HostedJobs`] is the lifecycle the CLI calls. Shapes follow
//! together-python (`resources/finetune.py`, `types/finetune.py`) and openai-python.

pub mod jobs;
pub mod mapping;
pub mod openai;
pub mod record;
pub mod spec;
pub mod together;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::env::{resolve_base_url, Env};
use super::error::{ProviderError, Result};
use super::http::HttpSettings;
use crate::net::retry::RetryPolicy;

pub use jobs::{HostedJobs, SubmitOptions, WatchOptions, WatchUpdate};
pub use mapping::{plan_job, JobPlan};
pub use record::{JobRecord, JobStore};
pub use spec::{HostedDpo, HostedJobSpec};
pub use validate::{check_dataset, DatasetKind, ValidationReport};

/// A hosted fine-tuning provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HostedProvider {
    #[serde(rename = "together")]
    Together,
    #[serde(rename = "openai")]
    OpenAi,
}

impl HostedProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            HostedProvider::Together => "together",
            HostedProvider::OpenAi => "openai",
        }
    }

    /// The default endpoint.
    pub fn default_base_url(self) -> &'static str {
        match self {
            HostedProvider::Together => "https://api.together.xyz/v1",
            HostedProvider::OpenAi => "https://api.openai.com/v1",
        }
    }

    /// The variable that overrides the endpoint.
    pub fn base_url_var(self) -> &'static str {
        match self {
            HostedProvider::Together => "TOGETHER_BASE_URL",
            HostedProvider::OpenAi => "OPENAI_BASE_URL",
        }
    }

    /// The variable holding the key.
    pub fn api_key_var(self) -> &'static str {
        match self {
            HostedProvider::Together => "TOGETHER_API_KEY",
            HostedProvider::OpenAi => "OPENAI_API_KEY",
        }
    }

    /// The endpoint: `explicit`, else the environment variable, else the default.
    pub fn resolve_base_url(self, explicit: Option<&str>, env: &Env) -> String {
        resolve_base_url(explicit, env, self.base_url_var(), self.default_base_url())
    }

    /// Retries as the provider's SDK does by default (Together 5, OpenAI 2).
    pub fn default_retry(self) -> RetryPolicy {
        RetryPolicy {
            max_retries: match self {
                HostedProvider::Together => 5,
                HostedProvider::OpenAi => 2,
            },
            ..RetryPolicy::default()
        }
    }
}

impl fmt::Display for HostedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HostedProvider {
    type Err = ProviderError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "together" => Ok(HostedProvider::Together),
            "openai" => Ok(HostedProvider::OpenAi),
            other => Err(ProviderError::Config(format!(
                "unknown hosted provider `{other}` (expected together or openai)"
            ))),
        }
    }
}

/// The `[hosted]` section of a job file.
///
/// ```toml
/// [hosted]
/// provider = "together"
/// model = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
/// suffix = "support-bot"
/// n_checkpoints = 2
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedConfig {
    pub provider: HostedProvider,
    /// The provider's name for the base model; defaults to the job's `[model]`.
    pub model: Option<String>,
    /// Overrides the endpoint (else `TOGETHER_BASE_URL` / `OPENAI_BASE_URL`, else the default).
    pub base_url: Option<String>,
    /// Added to the fine-tuned model's name (Together: at most 40 characters, OpenAI: 64).
    pub suffix: Option<String>,
    /// Submit even though some settings would not be honoured exactly.
    #[serde(default)]
    pub accept_warnings: bool,
    /// Together: intermediate checkpoints to keep.
    pub n_checkpoints: Option<u32>,
    /// Together: evaluations on the validation file during training.
    pub n_evals: Option<u32>,
    /// OpenAI: the learning-rate multiplier (OpenAI takes no absolute learning rate).
    pub learning_rate_multiplier: Option<f64>,
    /// Seconds between status polls while watching (default 10).
    pub poll_interval_secs: Option<f64>,
    /// Per-request timeout in seconds (default 600).
    pub timeout_secs: Option<f64>,
    /// Retries per request (default: Together 5, OpenAI 2).
    pub max_retries: Option<u32>,
}

impl HostedConfig {
    /// A config naming only the provider.
    pub fn new(provider: HostedProvider) -> Self {
        HostedConfig {
            provider,
            model: None,
            base_url: None,
            suffix: None,
            accept_warnings: false,
            n_checkpoints: None,
            n_evals: None,
            learning_rate_multiplier: None,
            poll_interval_secs: None,
            timeout_secs: None,
            max_retries: None,
        }
    }

    /// Parses the raw `[hosted]` table of a job file.
    pub fn from_table(table: toml::Table) -> Result<Self> {
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                ProviderError::Config(format!("[hosted]: {}", e.message()))
            })
    }

    /// Timeouts and retries from this section.
    pub fn http_settings(&self) -> Result<HttpSettings> {
        let mut settings = HttpSettings {
            retry: self.provider.default_retry(),
            ..HttpSettings::default()
        };
        if let Some(secs) = self.timeout_secs {
            if !(secs.is_finite() && secs > 0.0) {
                return Err(ProviderError::Config(format!(
                    "[hosted] timeout_secs must be a positive number of seconds, got {secs}"
                )));
            }
            settings.timeout = Duration::from_secs_f64(secs);
        }
        if let Some(n) = self.max_retries {
            settings.retry.max_retries = n;
        }
        Ok(settings)
    }

    /// The poll interval for `watch`.
    pub fn poll_interval(&self) -> Result<Duration> {
        match self.poll_interval_secs {
            None => Ok(Duration::from_secs(10)),
            Some(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(ProviderError::Config(format!(
                "[hosted] poll_interval_secs must be a positive number of seconds, got {s}"
            ))),
        }
    }
}

/// Our view of a job's state, mapped from each provider's status names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, validating files or waiting for hardware.
    Queued,
    /// Training, or packaging the result.
    Running,
    /// A cancel was requested and is in progress.
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
    /// A status name this version does not know.
    Unknown,
}

impl JobStatus {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the provider reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteJob {
    pub id: String,
    pub status: Option<JobStatus>,
    /// The provider's own status name.
    pub provider_status: String,
    pub model: Option<String>,
    /// The fine-tuned model's name, once known.
    pub output_model: Option<String>,
    pub created_at: Option<String>,
    /// Why the job failed, when it did.
    pub error: Option<String>,
    pub steps_completed: Option<u64>,
    pub total_steps: Option<u64>,
    pub epochs_completed: Option<u64>,
    pub trained_tokens: Option<u64>,
}

impl RemoteJob {
    /// The mapped status (`Unknown` when not reported).
    pub fn status(&self) -> JobStatus {
        self.status.unwrap_or(JobStatus::Unknown)
    }
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    Info,
    Warning,
    Error,
}

impl EventLevel {
    /// Parses any of the spellings the APIs use (`Info`, `info`, `warn`, `legacy_ierror`...).
    pub fn parse(level: Option<&str>) -> Self {
        let level = level.unwrap_or("").to_ascii_lowercase();
        if level.contains("err") {
            EventLevel::Error
        } else if level.contains("warn") {
            EventLevel::Warning
        } else {
            EventLevel::Info
        }
    }
}

/// One event of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// A key unique within the job (the event id, or hash, or time and message).
    pub id: String,
    pub created_at: Option<String>,
    pub level: EventLevel,
    /// The event type, lower-cased (`job_start`, `metrics`, ...).
    pub kind: Option<String>,
    pub message: String,
    pub step: Option<u64>,
    pub total_steps: Option<u64>,
    pub train_loss: Option<f64>,
}

/// A saved checkpoint of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The name to download or deploy it by.
    pub name: String,
    pub step: Option<u64>,
    pub created_at: Option<String>,
    pub kind: Option<String>,
    pub train_loss: Option<f64>,
    pub valid_loss: Option<f64>,
}

/// What to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadKind {
    /// The LoRA adapter alone.
    Adapter,
    /// The base model with the adapter merged in.
    Merged,
    /// The intermediate checkpoint saved at this step.
    Step(u64),
}

/// The calls every hosted provider offers.
pub trait FineTuneApi: Send + Sync {
    fn provider(&self) -> HostedProvider;
    /// The endpoint in use.
    fn base_url(&self) -> &str;
    /// Uploads a training or validation file; returns its file id.
    fn upload(&self, path: &Path) -> Result<String>;
    /// Creates a job from a create-job body (file ids filled in).
    fn create(&self, body: &serde_json::Value) -> Result<RemoteJob>;
    fn retrieve(&self, id: &str) -> Result<RemoteJob>;
    fn list(&self) -> Result<Vec<RemoteJob>>;
    fn cancel(&self, id: &str) -> Result<RemoteJob>;
    /// The job's events, oldest first.
    fn events(&self, id: &str) -> Result<Vec<JobEvent>>;
    fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>>;
    /// Downloads into `dest_dir`; returns the file written. `progress(done, total)`. A file of
    /// the same name there is replaced only when `force` is set.
    fn download(
        &self,
        id: &str,
        kind: DownloadKind,
        dest_dir: &Path,
        force: bool,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf>;
}

/// A client for `provider` at `base_url` (else the environment's, else the default).
pub fn fine_tune_client(
    provider: HostedProvider,
    base_url: Option<&str>,
    env: &Env,
    settings: HttpSettings,
) -> Result<Box<dyn FineTuneApi>> {
    let key = env.api_key(provider.as_str(), provider.api_key_var())?;
    let base_url = provider.resolve_base_url(base_url, env);
    Ok(match provider {
        HostedProvider::Together => {
            Box::new(together::TogetherFineTune::new(base_url, key, settings))
        }
        HostedProvider::OpenAi => Box::new(openai::OpenAiFineTune::new(base_url, key, settings)),
    })
}

/// A string field of a JSON reply (numbers are given as text).
pub(crate) fn json_str(value: &serde_json::Value, key: &str) -> Option<String> {
    match value.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A non-negative integer field of a JSON reply.
pub(crate) fn json_u64(value: &serde_json::Value, key: &str) -> Option<u64> {
    value.get(key).and_then(serde_json::Value::as_u64)
}

/// A file name made of safe characters only.
pub(crate) fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "job".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosted_section_parses_and_rejects_unknown_keys() {
        let cfg: HostedConfig =
            toml::from_str("provider = \"together\"\nsuffix = \"bot\"\nn_checkpoints = 2").unwrap();
        assert_eq!(cfg.provider, HostedProvider::Together);
        assert_eq!(cfg.n_checkpoints, Some(2));
        assert!(!cfg.accept_warnings);
        let err =
            toml::from_str::<HostedConfig>("provider = \"together\"\napi_key = \"x\"").unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
        assert!(toml::from_str::<HostedConfig>("provider = \"azure\"").is_err());
    }

    #[test]
    fn levels_and_names() {
        assert_eq!(EventLevel::parse(Some("Warning")), EventLevel::Warning);
        assert_eq!(EventLevel::parse(Some("legacy_ierror")), EventLevel::Error);
        assert_eq!(EventLevel::parse(None), EventLevel::Info);
        assert_eq!(safe_file_name("user/model:ft-1"), "user_model_ft-1");
        assert_eq!(safe_file_name("../x"), "_x");
    }
}
