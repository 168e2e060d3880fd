//! Local job records: one JSON file per submitted job, written atomically, so that
//! status, watch, cancel, list and download work after a restart.
//!
//! A record holds what is needed to reach the job again (provider, endpoint, job id)
//! and what was last seen of it. It never holds a key: keys are read from the
//! environment on every command.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{safe_file_name, HostedProvider, JobStatus, RemoteJob};
use crate::fsutil::write_atomic;
use crate::providers::error::{ProviderError, Result};

/// The current record layout.
pub const RECORD_VERSION: u32 = 1;

/// What we keep about one hosted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub version: u32,
    pub provider: HostedProvider,
    /// The provider's job id.
    pub job_id: String,
    /// The endpoint the job was created on.
    pub base_url: String,
    /// The provider's base model name.
    pub model: String,
    pub train_file: PathBuf,
    pub train_file_id: String,
    pub validation_file: Option<PathBuf>,
    pub validation_file_id: Option<String>,
    /// The job file it came from, when the caller gave one.
    pub job_file: Option<PathBuf>,
    /// The create-job body as sent.
    pub request: serde_json::Value,
    /// Warnings the user accepted at submission.
    pub accepted_warnings: Vec<String>,
    pub created_unix: u64,
    pub updated_unix: u64,
    pub status: JobStatus,
    pub provider_status: String,
    pub output_model: Option<String>,
    pub error: Option<String>,
    pub steps_completed: Option<u64>,
    pub total_steps: Option<u64>,
    /// Ids of events already shown, so that a restarted watch shows only new ones.
    #[serde(default)]
    pub seen_events: Vec<String>,
    /// Files downloaded for this job.
    #[serde(default)]
    pub downloads: Vec<PathBuf>,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JobRecord {
    /// Takes in what the provider reported.
    pub fn update_from(&mut self, job: &RemoteJob) {
        self.status = job.status();
        self.provider_status = job.provider_status.clone();
        if job.output_model.is_some() {
            self.output_model = job.output_model.clone();
        }
        if job.error.is_some() {
            self.error = job.error.clone();
        }
        if job.steps_completed.is_some() {
            self.steps_completed = job.steps_completed;
        }
        if job.total_steps.is_some() {
            self.total_steps = job.total_steps;
        }
        self.updated_unix = now_unix();
    }
}

/// A directory of job records.
#[derive(Debug, Clone)]
pub struct JobStore {
    dir: PathBuf,
}

impl JobStore {
    /// Records in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JobStore { dir: dir.into() }
    }

    /// `hosted` in the tool's home folder ([`crate::fsutil::home`]).
    pub fn default_dir() -> Result<PathBuf> {
        crate::fsutil::home()
            .map(|home| home.join("hosted"))
            .ok_or_else(|| {
                ProviderError::Config(
                    "cannot find the home directory (neither LORA_TRAIN_HOME nor HOME is set); give a records directory"
                        .to_string(),
                )
            })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, provider: HostedProvider, job_id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.json",
            provider.as_str(),
            safe_file_name(job_id)
        ))
    }

    /// Writes `record` atomically.
    pub fn save(&self, record: &JobRecord) -> Result<PathBuf> {
        let path = self.path(record.provider, &record.job_id);
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| ProviderError::Config(format!("job record cannot be serialized: {e}")))?;
        write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// Every record, oldest first. Unreadable files are skipped with a warning.
    pub fn list(&self) -> Result<Vec<JobRecord>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ProviderError::io(&self.dir, e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| ProviderError::io(&self.dir, e))?.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "skipping unreadable job record: {e}")
                }
            }
        }
        records.sort_by(|a, b| (a.created_unix, &a.job_id).cmp(&(b.created_unix, &b.job_id)));
        Ok(records)
    }

    /// The record whose job id is `id`, or the only one starting with `id`.
    pub fn find(&self, id: &str) -> Result<JobRecord> {
        let records = self.list()?;
        if let Some(exact) = records.iter().find(|r| r.job_id == id) {
            return Ok(exact.clone());
        }
        let matches: Vec<&JobRecord> = records
            .iter()
            .filter(|r| !id.is_empty() && r.job_id.starts_with(id))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ProviderError::UnknownJob {
                id: id.to_string(),
                dir: self.dir.clone(),
            }),
            many => Err(ProviderError::Config(format!(
                "job id `{id}` is ambiguous: {}",
                many.iter()
                    .map(|r| r.job_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}
