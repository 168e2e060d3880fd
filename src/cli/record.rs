//! Every run records itself in the registry (`--db FILE`, default
//! `$LORA_TRAIN_HOME/registry.db`; `--no-registry` opts out): a training run as a job row
//! with its progress, metrics and, once complete, a new version of its model. A run the
//! server's worker started updates the row it was given (`LORA_TRAIN_JOB_ID`) instead of
//! creating one. The registry never stops a run: a registry that cannot be written is a
//! warning.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lora_train::config::JobConfig;
use lora_train::registry::{
    Backend, JobStatus, Method, MetricsTail, NewJob, NewModelVersion, Progress, Registry,
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
    pub fn finish(mut self, job: &JobConfig, end: TrainEnd) {
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
        if let TrainEnd::Completed(summary) = end {
            self.with(|r| register_adapter(r, id, job, summary).map(|_| ()));
        }
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
) -> lora_train::registry::Result<()> {
    let Some(adapter) = &summary.adapter_dir else {
        return Ok(());
    };
    let adapter = std::path::absolute(adapter).unwrap_or_else(|_| adapter.clone());
    let weights = adapter.join("adapter_model.safetensors");
    let sha256 = std::fs::read(&weights).ok().map(|bytes| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&bytes);
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
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
    Ok(())
}
