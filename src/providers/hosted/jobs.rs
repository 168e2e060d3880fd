//! The hosted-job lifecycle the CLI calls: plan (dry run), submit, status, watch,
//! cancel, list, checkpoints and download, each reading and updating the local record.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::mapping::{plan_job, JobPlan};
use super::record::{now_unix, JobRecord, JobStore, RECORD_VERSION};
use super::validate::{check_dataset, ValidationReport};
use super::{
    fine_tune_client, Checkpoint, DownloadKind, EventLevel, FineTuneApi, HostedConfig,
    HostedJobSpec, HostedProvider, JobEvent, JobStatus, RemoteJob,
};
use crate::providers::env::Env;
use crate::providers::error::{ProviderError, Result};
use crate::providers::http::HttpSettings;

/// Event ids kept per record to skip already-shown events after a restart.
const MAX_SEEN_EVENTS: usize = 5000;

/// Options of [`HostedJobs::submit`].
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Accept settings the provider would not honour exactly (as `accept_warnings = true`).
    pub accept_warnings: bool,
    /// The job file, kept in the record for reference.
    pub job_file: Option<PathBuf>,
}

/// Options of [`HostedJobs::watch`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Time between polls.
    pub poll_interval: Duration,
    /// Stop watching (the job goes on) after this long.
    pub timeout: Option<Duration>,
    /// Draw an indicatif progress bar and print events above it.
    pub progress_bar: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            poll_interval: Duration::from_secs(10),
            timeout: None,
            progress_bar: true,
        }
    }
}

/// What `watch` reports to its callback.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// The job's status changed (also sent once at the start).
    Status(RemoteJob),
    /// An event not shown before.
    Event(JobEvent),
}

/// The hosted jobs of one records directory.
#[derive(Debug, Clone)]
pub struct HostedJobs {
    store: JobStore,
    env: Env,
    settings: Option<HttpSettings>,
}

impl HostedJobs {
    /// Jobs recorded in `store`; keys and endpoint overrides come from `env`.
    pub fn new(store: JobStore, env: Env) -> Self {
        HostedJobs {
            store,
            env,
            settings: None,
        }
    }

    /// Uses these timeouts and retries for every call (instead of `[hosted]`'s or the defaults).
    pub fn with_http_settings(mut self, settings: HttpSettings) -> Self {
        self.settings = Some(settings);
        self
    }

    pub fn store(&self) -> &JobStore {
        &self.store
    }

    fn client(
        &self,
        provider: HostedProvider,
        base_url: Option<&str>,
        cfg: Option<&HostedConfig>,
    ) -> Result<Box<dyn FineTuneApi>> {
        let settings = match (&self.settings, cfg) {
            (Some(s), _) => s.clone(),
            (None, Some(cfg)) => cfg.http_settings()?,
            (None, None) => HttpSettings {
                retry: provider.default_retry(),
                ..HttpSettings::default()
            },
        };
        fine_tune_client(provider, base_url, &self.env, settings)
    }

    fn client_for(&self, record: &JobRecord) -> Result<Box<dyn FineTuneApi>> {
        self.client(record.provider, Some(&record.base_url), None)
    }

    /// Maps the job and checks its files, without any network call: what `submit`
    /// would send, or every reason it would refuse.
    pub fn plan(
        &self,
        cfg: &HostedConfig,
        spec: &HostedJobSpec,
        opts: &SubmitOptions,
    ) -> Result<(JobPlan, Vec<ValidationReport>)> {
        let plan = plan_job(cfg, spec)?;
        if !plan.warnings.is_empty() {
            if !(cfg.accept_warnings || opts.accept_warnings) {
                return Err(ProviderError::UnacceptedWarnings {
                    provider: cfg.provider.to_string(),
                    warnings: plan.warnings,
                });
            }
            for warning in &plan.warnings {
                tracing::warn!(provider = %cfg.provider, "accepted: {warning}");
            }
        }
        let kind = spec.dataset_kind();
        let mut reports = vec![check_dataset(cfg.provider, &spec.train_file, kind)?.into_result()?];
        if let Some(validation) = &spec.validation_file {
            reports.push(check_dataset(cfg.provider, validation, kind)?.into_result()?);
        }
        Ok((plan, reports))
    }

    /// Checks, uploads and creates the job; records it locally.
    pub fn submit(
        &self,
        cfg: &HostedConfig,
        spec: &HostedJobSpec,
        opts: &SubmitOptions,
    ) -> Result<JobRecord> {
        let (plan, _) = self.plan(cfg, spec, opts)?;
        let client = self.client(cfg.provider, cfg.base_url.as_deref(), Some(cfg))?;
        let train_file_id = client.upload(&spec.train_file)?;
        let validation_file_id = match &spec.validation_file {
            Some(path) => Some(client.upload(path)?),
            None => None,
        };
        let mut body = plan.body.clone();
        if let Value::Object(map) = &mut body {
            map.insert("training_file".into(), json!(train_file_id));
            if let Some(id) = &validation_file_id {
                map.insert("validation_file".into(), json!(id));
            }
        }
        let job = client.create(&body)?;
        tracing::info!(provider = %cfg.provider, job = %job.id, status = %job.provider_status, "job created");
        let now = now_unix();
        let mut record = JobRecord {
            version: RECORD_VERSION,
            provider: cfg.provider,
            job_id: job.id.clone(),
            base_url: client.base_url().to_string(),
            model: plan.model.clone(),
            train_file: spec.train_file.clone(),
            train_file_id,
            validation_file: spec.validation_file.clone(),
            validation_file_id,
            job_file: opts.job_file.clone(),
            request: body,
            accepted_warnings: plan.warnings.clone(),
            created_unix: now,
            updated_unix: now,
            status: JobStatus::Queued,
            provider_status: String::new(),
            output_model: None,
            error: None,
            steps_completed: None,
            total_steps: None,
            seen_events: Vec::new(),
            downloads: Vec::new(),
        };
        record.update_from(&job);
        self.store.save(&record)?;
        Ok(record)
    }

    /// A failed job's reason: the job's own error, else its last error event.
    fn fill_failure_reason(
        &self,
        client: &dyn FineTuneApi,
        record: &mut JobRecord,
        events: Option<&[JobEvent]>,
    ) -> Result<()> {
        if record.status != JobStatus::Failed || record.error.is_some() {
            return Ok(());
        }
        let fetched;
        let events = match events {
            Some(events) => events,
            None => {
                fetched = client.events(&record.job_id)?;
                &fetched
            }
        };
        record.error = events
            .iter()
            .rev()
            .find(|e| e.level == EventLevel::Error && !e.message.is_empty())
            .map(|e| e.message.clone());
        Ok(())
    }

    /// Refreshes the job from the provider and saves the record.
    pub fn status(&self, id: &str) -> Result<JobRecord> {
        let mut record = self.store.find(id)?;
        let client = self.client_for(&record)?;
        let job = client.retrieve(&record.job_id)?;
        record.update_from(&job);
        self.fill_failure_reason(client.as_ref(), &mut record, None)?;
        self.store.save(&record)?;
        Ok(record)
    }

    /// Polls until the job ends (or `timeout`), reporting status changes and new events.
    /// A job that failed on the provider's side is returned as [`ProviderError::JobFailed`].
    pub fn watch(
        &self,
        id: &str,
        opts: &WatchOptions,
        on_update: &mut dyn FnMut(&WatchUpdate),
    ) -> Result<JobRecord> {
        let mut record = self.store.find(id)?;
        let client = self.client_for(&record)?;
        let bar = if opts.progress_bar {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{spinner} {prefix} {msg} [{bar:30}] {pos}/{len} steps",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("{} {}", record.provider, record.job_id));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        let started = Instant::now();
        let mut last_status: Option<(JobStatus, String)> = None;
        loop {
            let job = client.retrieve(&record.job_id)?;
            let events = client.events(&record.job_id)?;
            for event in &events {
                if record.seen_events.contains(&event.id) {
                    continue;
                }
                record.seen_events.push(event.id.clone());
                if let (Some(step), Some(total)) = (event.step, event.total_steps) {
                    bar.set_length(total);
                    bar.set_position(step);
                }
                if opts.progress_bar {
                    bar.println(format!(
                        "[{}] {}",
                        event.kind.as_deref().unwrap_or("event"),
                        event.message
                    ));
                }
                on_update(&WatchUpdate::Event(event.clone()));
            }
            let overflow = record.seen_events.len().saturating_sub(MAX_SEEN_EVENTS);
            record.seen_events.drain(..overflow);

            record.update_from(&job);
            self.fill_failure_reason(client.as_ref(), &mut record, Some(&events))?;
            if let (Some(done), Some(total)) = (job.steps_completed, job.total_steps) {
                bar.set_length(total);
                bar.set_position(done);
            }
            let status = (record.status, record.provider_status.clone());
            if last_status.as_ref() != Some(&status) {
                bar.set_message(format!("{} ({})", record.status, record.provider_status));
                on_update(&WatchUpdate::Status(job.clone()));
                last_status = Some(status);
            }
            self.store.save(&record)?;
            if record.status.is_terminal() {
                break;
            }
            if opts.timeout.is_some_and(|t| started.elapsed() >= t) {
                tracing::info!(job = %record.job_id, status = %record.status, "stopped watching; the job goes on");
                break;
            }
            std::thread::sleep(opts.poll_interval);
        }
        bar.finish_and_clear();
        if record.status == JobStatus::Failed {
            return Err(ProviderError::JobFailed {
                provider: record.provider.to_string(),
                id: record.job_id.clone(),
                message: record.error.clone().unwrap_or_else(|| {
                    format!("status `{}`, no reason given", record.provider_status)
                }),
            });
        }
        Ok(record)
    }

    /// Asks the provider to cancel the job.
    pub fn cancel(&self, id: &str) -> Result<JobRecord> {
        let mut record = self.store.find(id)?;
        let client = self.client_for(&record)?;
        let job = client.cancel(&record.job_id)?;
        record.update_from(&job);
        self.store.save(&record)?;
        tracing::info!(job = %record.job_id, status = %record.provider_status, "cancel requested");
        Ok(record)
    }

    /// The local records, oldest first.
    pub fn list(&self) -> Result<Vec<JobRecord>> {
        self.store.list()
    }

    /// The provider's own list of jobs (including ones submitted elsewhere).
    pub fn list_remote(
        &self,
        provider: HostedProvider,
        base_url: Option<&str>,
    ) -> Result<Vec<RemoteJob>> {
        self.client(provider, base_url, None)?.list()
    }

    /// The job's events, oldest first.
    pub fn events(&self, id: &str) -> Result<Vec<JobEvent>> {
        let record = self.store.find(id)?;
        self.client_for(&record)?.events(&record.job_id)
    }

    /// The job's saved checkpoints.
    pub fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>> {
        let record = self.store.find(id)?;
        self.client_for(&record)?.checkpoints(&record.job_id)
    }

    /// Downloads the adapter (or merged model, or a checkpoint) into `dest_dir`; a file of the
    /// same name there is replaced only when `force` is set.
    pub fn download(
        &self,
        id: &str,
        kind: DownloadKind,
        dest_dir: &Path,
        progress_bar: bool,
        force: bool,
    ) -> Result<PathBuf> {
        let mut record = self.store.find(id)?;
        let client = self.client_for(&record)?;
        let bar = if progress_bar {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            ) {
                bar.set_style(style);
            }
            bar.set_message(format!("downloading {}", record.job_id));
            bar
        } else {
            ProgressBar::hidden()
        };
        let path = client.download(&record.job_id, kind, dest_dir, force, &mut |done, total| {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        })?;
        bar.finish_and_clear();
        record.downloads.push(path.clone());
        record.updated_unix = now_unix();
        self.store.save(&record)?;
        Ok(path)
    }
}
