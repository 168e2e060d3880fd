//! The record a run keeps in its output folder beside checkpoints and the adapter: `job.toml`
//! (the resolved job), `metrics.jsonl` (a line per step and per validation), `loss.svg` (and
//! a DPO run's `rewards.svg`) and `summary.json`. One type names and writes these files, so the trainer writes each from
//! one place and readers (tests, tools, the eval harness) find them where it put them.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::metrics::{loss_plot_svg, rewards_plot_svg, EvalMetrics, MetricsLine, StepMetrics};
use crate::config::job::{JobConfig, ValidationSpec};
use crate::data::FitReport;
use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// What a finished (or interrupted) run reports, saved as `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub interrupted: bool,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub fit: FitReport,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub val_loss_before: Option<f64>,
    pub val_loss_after: Option<f64>,
    pub tokens: usize,
    pub elapsed_s: f64,
    /// The CUDA memory pool's high-water mark in MiB (CUDA runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gpu_memory_mib: Option<u64>,
    pub adapter_dir: Option<PathBuf>,
    pub output_dir: PathBuf,
}

/// The first line of the `job.toml` a run writes: what tells it from a user's file of that name.
pub const RESOLVED_JOB_HEADER: &str =
    "# The resolved job of this run, written by lora-train: every key, every path absolute.";

/// The files of one run's output folder.
#[derive(Debug, Clone)]
pub struct RunLog {
    dir: PathBuf,
}

impl RunLog {
    /// The record in `dir` (the job's `output.dir`), to read.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The record in `dir`, to write: creates the folder.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self> {
        let log = Self::new(dir);
        std::fs::create_dir_all(&log.dir).map_err(|e| Error::io(&log.dir, e))?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn job_path(&self) -> PathBuf {
        self.dir.join("job.toml")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    pub fn plot_path(&self) -> PathBuf {
        self.dir.join("loss.svg")
    }

    pub fn summary_path(&self) -> PathBuf {
        self.dir.join("summary.json")
    }

    /// Creates the folder and empties `metrics.jsonl`: a fresh run replaces the previous
    /// run's metrics.
    pub fn start_fresh(&self) -> Result<()> {
        write_atomic(&self.metrics_path(), b"")
    }

    /// Keeps only metrics lines up to `step`: on resume, the steps after the checkpoint are
    /// done again.
    pub fn resume_at(&self, step: usize) -> Result<()> {
        let kept: Vec<String> = self
            .metrics()?
            .into_iter()
            .filter(|l| l.step() <= step)
            .filter_map(|l| serde_json::to_string(&l).ok())
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_atomic(&self.metrics_path(), text.as_bytes())
    }

    /// Writes `job` with every path absolute (against the current directory where still
    /// relative) to `job.toml`, so that tools find the run's base model and data from it. A
    /// `job.toml` there that is not a run's own is refused, never replaced.
    pub fn write_job(&self, job: &JobConfig) -> Result<()> {
        if self.foreign_job_file()? {
            return Err(Error::RunFileTaken {
                path: self.job_path(),
                why: "is not a resolved job written by lora-train".into(),
            });
        }
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        let text = with_absolute_paths(job, &cwd).to_toml_string()?;
        let text = format!("{RESOLVED_JOB_HEADER}\n{text}");
        write_atomic(&self.job_path(), text.as_bytes())
    }

    /// Whether `job.toml` exists and is not one a run wrote: ours starts with
    /// [`RESOLVED_JOB_HEADER`], or (from versions before it) is exactly what writing the job
    /// it holds gives. A user's job file, even the one this run was started from, is neither.
    pub fn foreign_job_file(&self) -> Result<bool> {
        let path = self.job_path();
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&path, e)),
        };
        if text.starts_with(RESOLVED_JOB_HEADER) {
            return Ok(false);
        }
        let written_by_us = JobConfig::load_str(&text, &path, &[])
            .and_then(|job| job.to_toml_string())
            .is_ok_and(|again| again == text);
        Ok(!written_by_us)
    }

    pub fn log_step(&self, step: StepMetrics) -> Result<()> {
        self.append(&MetricsLine::Step(step))
    }

    pub fn log_eval(&self, eval: EvalMetrics) -> Result<()> {
        self.append(&MetricsLine::Eval(eval))
    }

    /// Every parsable line of `metrics.jsonl` (a torn last line after a crash is skipped).
    pub fn metrics(&self) -> Result<Vec<MetricsLine>> {
        let path = self.metrics_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// The validation loss logged at `step`, if any.
    pub fn val_loss_at(&self, step: usize) -> Result<Option<f64>> {
        Ok(self.metrics()?.iter().find_map(|l| match l {
            MetricsLine::Eval(e) if e.step == step => Some(e.val_loss),
            _ => None,
        }))
    }

    /// The training loss of every logged step, in order.
    pub fn step_losses(&self) -> Result<Vec<f64>> {
        Ok(self
            .metrics()?
            .iter()
            .filter_map(|l| match l {
                MetricsLine::Step(s) => Some(s.loss),
                _ => None,
            })
            .collect())
    }

    /// Draws the logged losses to `loss.svg` (nothing when none is logged).
    /// The plot of a DPO run's rewards.
    pub fn rewards_plot_path(&self) -> PathBuf {
        self.dir.join("rewards.svg")
    }

    /// Writes `loss.svg`, and for a DPO run `rewards.svg`.
    pub fn write_plot(&self, title: &str) -> Result<()> {
        let lines = self.metrics()?;
        if let Some(svg) = loss_plot_svg(&lines, title) {
            write_atomic(&self.plot_path(), svg.as_bytes())?;
        }
        if let Some(svg) = rewards_plot_svg(&lines, title) {
            write_atomic(&self.rewards_plot_path(), svg.as_bytes())?;
        }
        Ok(())
    }

    pub fn write_summary(&self, summary: &TrainSummary) -> Result<()> {
        let text = serde_json::to_string_pretty(summary).map_err(|source| Error::Json {
            what: "summary.json".into(),
            source,
        })?;
        write_atomic(&self.summary_path(), text.as_bytes())
    }

    fn append(&self, line: &MetricsLine) -> Result<()> {
        let path = self.metrics_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let text = serde_json::to_string(line).map_err(|source| Error::Json {
            what: "metrics.jsonl".into(),
            source,
        })?;
        writeln!(f, "{text}").map_err(|e| Error::io(&path, e))
    }
}

/// `job` with its file paths joined to `cwd` where still relative. `model.source` only when
/// that names something that exists: `org/name` is a hub id, not a path.
fn with_absolute_paths(job: &JobConfig, cwd: &Path) -> JobConfig {
    let absolute = |p: &Path| -> PathBuf {
        if p.is_relative() && !p.as_os_str().is_empty() {
            cwd.join(p)
        } else {
            p.to_path_buf()
        }
    };
    let mut job = job.clone();
    job.data.train = absolute(&job.data.train);
    if let Some(ValidationSpec::File(file)) = &mut job.data.validation {
        *file = absolute(file);
    }
    if let Some(dir) = &mut job.lora.init_adapter {
        *dir = absolute(dir);
    }
    job.output.dir = absolute(&job.output.dir);
    if let Some(report) = &mut job.report {
        report.prompts = absolute(&report.prompts);
    }
    if let Some(eval) = &mut job.eval {
        eval.for_each_path(|_, p| *p = absolute(p));
    }
    let source = Path::new(&job.model.source);
    if source.is_relative() && !job.model.source.is_empty() && cwd.join(source).exists() {
        job.model.source = cwd.join(source).to_string_lossy().into_owned();
    }
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: usize, loss: f64) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 0.0,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens: 10,
            tokens_per_second: 100.0,
            elapsed_s: 1.0,
            conversations: 2,
            preference: None,
        }
    }

    #[test]
    fn resume_drops_the_lines_after_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let log = RunLog::create(tmp.path().join("run")).unwrap();
        log.start_fresh().unwrap();
        log.log_eval(EvalMetrics {
            step: 0,
            epoch: 0.0,
            val_loss: 3.0,
            val_tokens: 5,
            preference: None,
        })
        .unwrap();
        for s in 1..=4 {
            log.log_step(step(s, s as f64)).unwrap();
        }
        log.resume_at(2).unwrap();
        assert_eq!(log.step_losses().unwrap(), vec![1.0, 2.0]);
        assert_eq!(log.val_loss_at(0).unwrap(), Some(3.0));
        log.start_fresh().unwrap();
        assert!(log.metrics().unwrap().is_empty());
    }

    #[test]
    fn a_job_toml_is_ours_with_the_header_or_as_older_runs_wrote_it() {
        let tmp = tempfile::tempdir().unwrap();
        let log = RunLog::create(tmp.path().join("run")).unwrap();
        assert!(!log.foreign_job_file().unwrap(), "absent is no one's");
        let text = format!(
            "[model]\nsource = \"org/name\"\n[data]\ntrain = \"{}\"\n[output]\ndir = \"{}\"\n",
            tmp.path().join("t.jsonl").display(),
            log.dir().display()
        );
        // A user's job file, even the one of this run.
        std::fs::write(log.job_path(), &text).unwrap();
        assert!(log.foreign_job_file().unwrap());
        let err = log.write_job(&JobConfig::load_str(&text, &log.job_path(), &[]).unwrap());
        assert!(matches!(err, Err(Error::RunFileTaken { .. })), "{err:?}");
        assert_eq!(std::fs::read_to_string(log.job_path()).unwrap(), text);
        // What a run of an older version wrote: the job as written, without the header.
        let job = JobConfig::load_str(&text, &log.job_path(), &[]).unwrap();
        std::fs::write(log.job_path(), job.to_toml_string().unwrap()).unwrap();
        assert!(!log.foreign_job_file().unwrap());
        log.write_job(&job).unwrap();
        let written = std::fs::read_to_string(log.job_path()).unwrap();
        assert!(written.starts_with(RESOLVED_JOB_HEADER), "{written}");
        assert!(!log.foreign_job_file().unwrap());
    }

    #[test]
    fn job_paths_become_absolute_and_hub_ids_stay() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("model")).unwrap();
        let text = "[model]\nsource = \"org/name\"\n[data]\ntrain = \"t.jsonl\"\nvalidation = \"v.jsonl\"\n\
                    [output]\ndir = \"out\"\n";
        // A job file in the current directory (or a `--set` path) leaves paths relative.
        let mut job = JobConfig::load_str(text, Path::new("job.toml"), &[]).unwrap();
        let abs = with_absolute_paths(&job, tmp.path());
        assert_eq!(abs.model.source, "org/name");
        assert_eq!(abs.data.train, tmp.path().join("t.jsonl"));
        assert!(
            matches!(abs.data.validation, Some(ValidationSpec::File(f)) if f == tmp.path().join("v.jsonl"))
        );
        assert_eq!(abs.output.dir, tmp.path().join("out"));
        job.model.source = "model".into();
        let abs = with_absolute_paths(&job, tmp.path());
        assert_eq!(abs.model.source, tmp.path().join("model").to_string_lossy());
    }
}
