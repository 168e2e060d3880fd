//! Every run records itself in the registry (`--db FILE`, default `$LORA_TRAIN_HOME/registry.db`;
//! `--no-registry` opts out): a training run as a job row with its progress, metrics, data and
//! model version; an evaluation with its comparisons; a hosted job as its provider reports it;
//! data-tool outputs as datasets. A run the server's worker started updates the row it was given
//! (`LORA_TRAIN_JOB_ID`). The registry never stops a run: a failed write is a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lora_train::config::JobConfig;
use lora_train::harness::record::{record_evaluation, EvalSource};
use lora_train::harness::report::EvalReport;
use lora_train::providers::hosted::{HostedProvider, JobRecord};
use lora_train::registry::{
    Backend, JobKind, JobStatus, Method, MetricsTail, NewDataset, NewJob, NewModelVersion,
    Progress, Registry,
};
use lora_train::serve::JOB_ID_VAR;
use lora_train::train::{StopSignal, TrainSummary};

/// The global flags' choice.
#[derive(Debug, Clone)]
struct Choice {
    db: Option<PathBuf>,
    off: bool,
}

static CHOICE: OnceLock<Choice> = OnceLock::new();

/// Remembers `--db` and `--no-registry` for the commands that record.
pub fn init(db: Option<PathBuf>, off: bool) {
    let _ = CHOICE.set(Choice { db, off });
}

/// The registry file to use, `None` with `--no-registry` (or with no home folder).
pub fn db_path() -> Option<PathBuf> {
    let choice = CHOICE.get().cloned().unwrap_or(Choice {
        db: None,
        off: false,
    });
    match choice {
        Choice { off: true, .. } => None,
        Choice { db: Some(db), .. } => Some(db),
        Choice { db: None, .. } => Registry::default_path(),
    }
}

/// Opens the registry to record into, or warns and returns `None`.
pub fn open() -> Option<Registry> {
    let path = db_path()?;
    match Registry::open(&path) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("not recording this run: {e}");
            None
        }
    }
}

fn warn(e: impl std::fmt::Display) {
    tracing::warn!("registry: {e}");
}

/// A training run's row, while it runs.
pub struct TrainRecord {
    reg: Arc<Mutex<Registry>>,
    id: i64,
    /// The server's worker reads the metrics of the runs it started; a CLI run reads its own.
    tail: Option<(Arc<AtomicBool>, std::thread::JoinHandle<MetricsTail>)>,
    /// The run's `metrics.jsonl`, once training has started.
    metrics: Option<PathBuf>,
    from_server: bool,
}

/// How a training run ended.
pub enum TrainEnd<'a> {
    Completed(&'a TrainSummary),
    Stopped(Option<StopSignal>, &'a TrainSummary),
    Failed(&'a anyhow::Error),
}

impl TrainRecord {
    /// Starts recording a local training run of `job`, read from `config`.
    pub fn begin(job: &JobConfig, config: &Path, resume: bool) -> Option<TrainRecord> {
        let reg = open()?;
        let output = job.output.dir.to_string_lossy().into_owned();
        let given = std::env::var(JOB_ID_VAR).ok();
        let id = match given.as_deref().map(str::parse::<i64>) {
            Some(Ok(id)) => match reg.job(id) {
                Ok(_) => id,
                Err(e) => {
                    warn(format!("{JOB_ID_VAR}={id}: {e}"));
                    return None;
                }
            },
            Some(Err(_)) => {
                warn(format!("{JOB_ID_VAR} is not a job id"));
                return None;
            }
            None => match begin_cli_row(&reg, job, config, &output, resume) {
                Ok(id) => id,
                Err(e) => {
                    warn(e);
                    return None;
                }
            },
        };
        if let Err(e) = reg.set_job_outputs(id, Some(&output), None) {
            warn(e);
        }
        let recorded = NewDataset::from_file(&job.data.train, Some(format!("job:{id}")))
            .and_then(|d| reg.record_dataset(&d));
        if let Err(e) = recorded {
            warn(e);
        }
        Some(TrainRecord {
            reg: Arc::new(Mutex::new(reg)),
            id,
            tail: None,
            metrics: None,
            from_server: given.is_some(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Registry) -> lora_train::registry::Result<T>) -> Option<T> {
        let reg = self.reg.lock().unwrap_or_else(|p| p.into_inner());
        f(&reg).map_err(warn).ok()
    }

    /// The model is loaded and the data prepared: training starts.
    pub fn training(&mut self, total_steps: usize, metrics: &Path) {
        let id = self.id;
        self.with(|r| {
            if r.job(id)?.status == JobStatus::Preparing {
                r.move_job(id, JobStatus::Training, None)?;
            }
            r.set_progress(
                id,
                &Progress {
                    current_step: 0,
                    total_steps: Some(total_steps as i64),
                    ..Default::default()
                },
            )
        });
        self.metrics = Some(metrics.to_path_buf());
        if self.from_server {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (reg, flag, path) = (self.reg.clone(), stop.clone(), metrics.to_path_buf());
        let spawned = std::thread::Builder::new()
            .name("registry-metrics".into())
            .spawn(move || {
                let mut tail = MetricsTail::new(id, &path);
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let reg = reg.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = tail.poll(&reg) {
                        warn(e);
                    }
                }
                tail
            });
        match spawned {
            Ok(handle) => self.tail = Some((stop, handle)),
            Err(e) => warn(e),
        }
    }

    /// Records how the run ended; a completed run's adapter becomes a new model version.
    /// Returns the run's job id and the version registered (`name@version`), if any.
    pub fn finish(mut self, job: &JobConfig, end: TrainEnd) -> (i64, Option<String>) {
        let id = self.id;
        // Every line is in the registry before the end is: whoever sees the end sees them.
        let tail = match self.tail.take() {
            Some((stop, handle)) => {
                stop.store(true, Ordering::Relaxed);
                handle.join().ok()
            }
            None => self.metrics.as_deref().map(|m| MetricsTail::new(id, m)),
        };
        if let Some(mut tail) = tail {
            self.with(|r| tail.poll(r));
        }
        let (status, error) = match &end {
            TrainEnd::Completed(_) => (JobStatus::Completed, None),
            TrainEnd::Stopped(Some(StopSignal::Terminate), s) => (
                JobStatus::Failed,
                Some(format!(
                    "terminated (SIGTERM), interrupted at step {}; start it again to resume",
                    s.steps
                )),
            ),
            TrainEnd::Stopped(_, _) => (JobStatus::Cancelled, None),
            TrainEnd::Failed(e) => (JobStatus::Failed, Some(format!("{e:#}"))),
        };
        self.with(|r| {
            let now = r.job(id)?.status;
            if now == JobStatus::Queued {
                r.move_job(id, JobStatus::Preparing, None)?;
            }
            if !r.job(id)?.status.is_terminal() {
                r.move_job(id, status, error.as_deref())?;
            }
            Ok(())
        });
        let registered = match end {
            TrainEnd::Completed(summary) => self
                .with(|r| register_adapter(r, id, job, summary))
                .flatten(),
            _ => None,
        };
        (id, registered)
    }
}

/// The row of a CLI run: a new one, or with `--resume` the unfinished row of the same output
/// folder, queued again.
fn begin_cli_row(
    reg: &Registry,
    job: &JobConfig,
    config: &Path,
    output: &str,
    resume: bool,
) -> lora_train::registry::Result<i64> {
    if resume {
        if let Some(row) = reg.unfinished_job_in(output)? {
            reg.move_job(row.id, JobStatus::Queued, None)?;
            reg.move_job(row.id, JobStatus::Preparing, None)?;
            return Ok(row.id);
        }
    }
    let name = job
        .output
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let text = std::fs::read_to_string(config).unwrap_or_default();
    let id = reg.create_job(&NewJob {
        name,
        kind: JobKind::Train,
        backend: Backend::Local,
        method: match job.is_dpo() {
            true => Method::Dpo,
            false => Method::Sft,
        },
        config_toml: text,
        config_path: std::path::absolute(config)
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        status: JobStatus::Queued,
        autostart: false,
        output_dir: Some(output.to_string()),
        total_steps: None,
    })?;
    reg.move_job(id, JobStatus::Preparing, None)?;
    Ok(id)
}

/// Registers a completed run's adapter as the next version of the job's model, with the
/// version it started from (`lora.init_adapter`, when that is registered) as its parent.
fn register_adapter(
    reg: &Registry,
    id: i64,
    job: &JobConfig,
    summary: &TrainSummary,
) -> lora_train::registry::Result<Option<String>> {
    let Some(adapter) = &summary.adapter_dir else {
        return Ok(None);
    };
    let adapter = std::path::absolute(adapter).unwrap_or_else(|_| adapter.clone());
    let sha256 = lora_train::export::peft::adapter_sha256(&adapter);
    let name = reg.job(id)?.name;
    let parent = match &job.lora.init_adapter {
        Some(dir) => {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            reg.version_with_adapter(&dir.to_string_lossy())?
                .filter(|v| v.name == name)
                .map(|v| v.version)
        }
        None => None,
    };
    let mut metrics = serde_json::Map::new();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            metrics.insert(k.into(), v.into());
        }
    };
    put("val_loss", summary.val_loss_after);
    put("val_loss_before", summary.val_loss_before);
    put("train_loss", summary.last_loss);
    put(
        "tokens_per_second",
        Some(summary.tokens as f64 / summary.elapsed_s.max(1e-9)),
    );
    let base = job
        .model
        .name
        .clone()
        .unwrap_or_else(|| job.model.source.clone());
    let v = reg.register_model(&NewModelVersion {
        name,
        base_model: base,
        adapter_path: Some(adapter.to_string_lossy().into_owned()),
        adapter_sha256: sha256,
        remote_model: None,
        job_id: Some(id),
        parent_version: parent,
        metrics,
    })?;
    tracing::info!("registered {}@{} in the registry", v.name, v.version);
    Ok(Some(format!("{}@{}", v.name, v.version)))
}

/// The job row the server's worker gave this process (`LORA_TRAIN_JOB_ID`), when it names
/// one in `reg`.
fn given_job(reg: &Registry) -> Option<i64> {
    let raw = std::env::var(JOB_ID_VAR).ok()?;
    match raw.parse::<i64>() {
        Ok(id) => reg.job(id).map_err(warn).ok().map(|_| id),
        Err(_) => {
            warn(format!("{JOB_ID_VAR} is not a job id"));
            None
        }
    }
}

/// The command line that made a file, as its provenance.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut words = vec!["lora-train"];
    words.extend(args.iter().map(String::as_str));
    super::shell::join(words)
}

/// Records the JSONL files a run wrote or read as datasets, with their provenance.
pub fn datasets<'a>(paths: impl IntoIterator<Item = &'a Path>, provenance: &str) {
    let Some(reg) = open() else {
        return;
    };
    for path in paths {
        let recorded = NewDataset::from_file(path, Some(provenance.to_string()))
            .and_then(|d| reg.record_dataset(&d));
        if let Err(e) = recorded {
            warn(e);
        }
    }
}

/// Follows a hosted job in the registry: its row (backend, provider's id) is made at
/// submission and moved as the provider reports; once it succeeds, the provider's fine-tuned
/// model becomes a version of the job's model (`remote_model`).
pub fn hosted(record: &JobRecord) {
    let Some(reg) = open() else {
        return;
    };
    if let Err(e) = follow_hosted(&reg, record) {
        warn(e);
    }
}

fn follow_hosted(reg: &Registry, r: &JobRecord) -> lora_train::registry::Result<()> {
    use lora_train::providers::hosted::JobStatus as Remote;
    let backend = match r.provider {
        HostedProvider::Together => Backend::Together,
        HostedProvider::OpenAi => Backend::OpenAi,
    };
    let id = match (reg.job_by_remote(backend, &r.job_id)?, given_job(reg)) {
        (Some(job), _) => job.id,
        // The server's worker runs this submission for a row of its own.
        (None, Some(id)) => {
            reg.set_job_outputs(id, None, Some(&r.job_id))?;
            let train = NewDataset::from_file(&r.train_file, Some(format!("job:{id}")))?;
            reg.record_dataset(&train)?;
            id
        }
        (None, None) => {
            let text = r
                .job_file
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            let table: Option<toml::Table> = text.as_deref().and_then(|t| t.parse().ok());
            // The job's name as a local run's: its output folder's name.
            let name = table
                .as_ref()
                .and_then(|t| t.get("output")?.get("dir")?.as_str().map(PathBuf::from))
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| r.job_id.clone());
            let dpo = table
                .as_ref()
                .and_then(|t| t.get("train")?.get("method")?.as_str().map(|m| m == "dpo"))
                .unwrap_or(false);
            let id = reg.create_job(&NewJob {
                name,
                kind: JobKind::Train,
                backend,
                method: match dpo {
                    true => Method::Dpo,
                    false => Method::Sft,
                },
                config_toml: text.unwrap_or_else(|| r.request.to_string()),
                config_path: r
                    .job_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                status: JobStatus::Queued,
                autostart: false,
                output_dir: None,
                total_steps: r.total_steps.map(|t| t as i64),
            })?;
            reg.set_job_outputs(id, None, Some(&r.job_id))?;
            let train = NewDataset::from_file(&r.train_file, Some(format!("job:{id}")))?;
            reg.record_dataset(&train)?;
            id
        }
    };
    if let Some(done) = r.steps_completed {
        reg.set_progress(
            id,
            &Progress {
                current_step: done as i64,
                total_steps: r.total_steps.map(|t| t as i64),
                ..Default::default()
            },
        )?;
    }
    let to = match r.status {
        Remote::Queued | Remote::Unknown => JobStatus::Queued,
        Remote::Running => JobStatus::Training,
        Remote::Cancelling => JobStatus::Cancelling,
        Remote::Succeeded => JobStatus::Completed,
        Remote::Failed => JobStatus::Failed,
        Remote::Cancelled => JobStatus::Cancelled,
    };
    reg.advance_job(id, to, r.error.as_deref())?;
    if let (Remote::Succeeded, Some(model)) = (r.status, &r.output_model) {
        let job = reg.job(id)?;
        let known = match reg.model_versions(&job.name) {
            Ok(versions) => versions.iter().any(|v| v.job_id == Some(id)),
            Err(lora_train::registry::RegistryError::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        if !known {
            let v = reg.register_model(&NewModelVersion {
                name: job.name,
                base_model: r.model.clone(),
                remote_model: Some(model.clone()),
                job_id: Some(id),
                ..Default::default()
            })?;
            tracing::info!("registered {}@{} in the registry", v.name, v.version);
        }
    }
    Ok(())
}

/// A server-run evaluation's job row, moved to running while the harness works.
pub struct EvalJob {
    reg: Registry,
    id: i64,
}

impl EvalJob {
    /// The row this eval runs for, when the server's worker started it.
    pub fn begin() -> Option<EvalJob> {
        std::env::var_os(JOB_ID_VAR)?;
        let reg = open()?;
        let id = given_job(&reg)?;
        let moved = reg.job(id).and_then(|j| match j.status {
            JobStatus::Preparing => reg.move_job(id, JobStatus::Training, None).map(|_| ()),
            _ => Ok(()),
        });
        if let Err(e) = moved {
            warn(e);
        }
        Some(EvalJob { reg, id })
    }

    /// Records the evaluation under this row and completes it, or fails it with `error`.
    pub fn finish(self, done: Result<(&EvalReport, &Path), &anyhow::Error>) {
        let (status, error) = match done {
            Ok((report, dir)) => {
                record_eval(&self.reg, report, dir, Some(self.id), Default::default());
                (JobStatus::Completed, None)
            }
            Err(e) => (JobStatus::Failed, Some(format!("{e:#}"))),
        };
        let moved = self.reg.job(self.id).and_then(|j| match j.status {
            s if s.is_terminal() => Ok(()),
            // A cancel request stopped it: cancelled, not failed.
            JobStatus::Cancelling if status == JobStatus::Failed => self
                .reg
                .move_job(self.id, JobStatus::Cancelled, None)
                .map(|_| ()),
            _ => self
                .reg
                .move_job(self.id, status, error.as_deref())
                .map(|_| ()),
        });
        if let Err(e) = moved {
            warn(e);
        }
    }
}

/// Records an evaluation's report (with its comparisons, and its candidates' numbers in their
/// registered versions); `known` maps candidate names to versions the caller knows.
pub fn record_eval(
    reg: &Registry,
    report: &EvalReport,
    dir: &Path,
    job_id: Option<i64>,
    known: BTreeMap<String, String>,
) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "eval".into());
    let source = EvalSource {
        job_id,
        name,
        output_dir: Some(dir),
        known,
    };
    match record_evaluation(reg, report, &source) {
        Ok(id) => tracing::info!("recorded evaluation {id} in the registry"),
        Err(e) => warn(e),
    }
}
