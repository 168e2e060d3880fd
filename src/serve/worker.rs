//! The job worker: a thread that starts queued local jobs one at a time, each as a child process
//! of this binary (`lora-train --config JOB`, or `lora-train eval --config EVAL` for an eval job,
//! with `--db REGISTRY` and its row in `LORA_TRAIN_JOB_ID`), so a crashed run cannot take the
//! server down. It tails the run's `metrics.jsonl`, turns a cancel request into SIGINT (checkpoint,
//! then exit 130), and maps the exit code: 0 completed, 130 cancelled, else failed with the
//! log's last error line (143: terminated).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::registry::{Job, JobKind, JobStatus, MetricsTail, Registry, Result};

use super::db::Db;
use super::process;

/// The environment variable that gives a child its job row.
pub const JOB_ID_VAR: &str = "LORA_TRAIN_JOB_ID";

/// The eval file of an evaluation job, in its folder.
pub const EVAL_FILE: &str = "eval.toml";

/// How often the worker looks at its child and the queue when nothing wakes it.
const POLL: Duration = Duration::from_millis(250);

/// What the worker needs to start a job.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This binary.
    pub exe: PathBuf,
    /// The folder of each job's files: `JOBS/ID/job.toml`, `JOBS/ID/train.log`.
    pub jobs_root: PathBuf,
}

/// A handle to wake the worker (a job was queued or cancelled) and to stop it.
#[derive(Clone, Default)]
pub struct WorkerHandle {
    inner: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl WorkerHandle {
    /// Asks the worker to look at the queue now.
    pub fn wake(&self) {
        let (flag, cv) = &*self.inner;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Asks the worker to stop its job (SIGTERM, so it checkpoints) and end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn sleep(&self, timeout: Duration) {
        let (flag, cv) = &*self.inner;
        let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = cv
            .wait_timeout_while(guard, timeout, |woken| !*woken)
            .unwrap_or_else(|p| p.into_inner());
        *guard = false;
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The job's files.
pub fn job_dir(jobs_root: &Path, id: i64) -> PathBuf {
    jobs_root.join(id.to_string())
}

/// The log a job's process writes (stdout and stderr).
pub fn log_path(jobs_root: &Path, id: i64) -> PathBuf {
    job_dir(jobs_root, id).join("train.log")
}

struct Running {
    id: i64,
    child: Child,
    tail: MetricsTail,
    signalled: bool,
}

/// Marks the jobs a previous server left running as interrupted, once their processes are
/// gone (a survivor is asked to stop and waited for), so that they can be started again.
pub fn recover(db: &Db) -> Result<usize> {
    let active = db.write_now(|r| r.active_jobs())?;
    let mut n = 0;
    // Hosted rows this server did not run (no pid) follow their own watcher.
    for job in active
        .into_iter()
        .filter(|j| j.backend == crate::registry::Backend::Local || j.pid.is_some())
    {
        if let Some(pid) = job.pid.and_then(|p| u32::try_from(p).ok()) {
            let start = job.pid_start.map(|s| s as u64);
            if process::alive(pid, start) {
                tracing::warn!(
                    "job {}: its process {pid} outlived the server; stopping it",
                    job.id
                );
                process::signal(pid, true);
                let deadline = Instant::now() + Duration::from_secs(120);
                while process::alive(pid, start) && Instant::now() < deadline {
                    std::thread::sleep(POLL);
                }
            }
        }
        let current = db.write_now(|r| r.job(job.id))?;
        if !current.status.is_terminal() {
            let why = interrupted(&current);
            db.write_now(|r| r.move_job(job.id, JobStatus::Failed, Some(&why)))?;
            n += 1;
        }
        db.write_now(|r| r.set_process(job.id, None, None))?;
    }
    Ok(n)
}

/// Why a job the server stopped while it ran failed, and how to go on.
fn interrupted(job: &Job) -> String {
    match &job.remote_id {
        Some(remote) => format!(
            "interrupted: the server stopped while it followed {} job {remote}, which runs on; \
             `lora-train hosted watch {remote}` follows it",
            job.backend.as_str()
        ),
        None => "interrupted: the server stopped while it ran; start it again to resume".into(),
    }
}

/// Runs the worker until `handle.stop()`.
pub fn run(db: Db, cfg: WorkerConfig, handle: WorkerHandle) {
    let mut running: Option<Running> = None;
    loop {
        if handle.stopping() {
            if let Some(r) = running.take() {
                stop_for_shutdown(&db, r);
            }
            return;
        }
        running = match running.take() {
            Some(r) => watch(&db, &cfg, r),
            None => match db.write_now(|r| r.next_queued()) {
                Ok(Some(job)) => start(&db, &cfg, job),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!("worker: {e}");
                    None
                }
            },
        };
        handle.sleep(POLL);
    }
}

fn start(db: &Db, cfg: &WorkerConfig, job: Job) -> Option<Running> {
    let id = job.id;
    if let Err(e) = db.write_now(|r| r.move_job(id, JobStatus::Preparing, None)) {
        tracing::warn!("worker: job {id}: {e}");
        return None;
    }
    match spawn_job(db.path(), cfg, &job) {
        Ok(child) => {
            let pid = child.id();
            let recorded = db.write_now(|r| r.set_process(id, Some(pid), process::start_time(pid)));
            if let Err(e) = recorded {
                tracing::error!("worker: job {id}: {e}");
            }
            tracing::info!("job {id} ({}) started, pid {pid}", job.name);
            let metrics = job
                .output_dir
                .as_deref()
                .map(|d| Path::new(d).join("metrics.jsonl"))
                .unwrap_or_default();
            Some(Running {
                id,
                child,
                tail: MetricsTail::new(id, &metrics),
                signalled: false,
            })
        }
        Err(e) => {
            let msg = format!("could not start its process: {e}");
            let _ = db.write_now(|r| r.move_job(id, JobStatus::Failed, Some(&msg)));
            None
        }
    }
}

fn spawn_job(db_path: &Path, cfg: &WorkerConfig, job: &Job) -> std::io::Result<Child> {
    let dir = job_dir(&cfg.jobs_root, job.id);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&cfg.jobs_root, job.id))?;
    let mut cmd = Command::new(&cfg.exe);
    if job.kind == JobKind::Eval {
        // An evaluation: its eval file, which records the evaluation and this row's end.
        cmd.arg("eval").arg("--config").arg(dir.join(EVAL_FILE));
    } else {
        cmd.arg("--config").arg(dir.join("job.toml"));
    }
    cmd.arg("--db").arg(db_path);
    if job.resume && job.kind == JobKind::Train {
        let has_checkpoint = job.output_dir.as_deref().is_some_and(|d| {
            crate::train::checkpoint::list_checkpoints(Path::new(d)).is_ok_and(|c| !c.is_empty())
        });
        // A run stopped before its first checkpoint starts again, replacing only its own files.
        cmd.arg(match has_checkpoint {
            true => "--resume",
            false => "--overwrite",
        });
    }
    // The log is a file: no terminal colour codes in it.
    cmd.env(JOB_ID_VAR, job.id.to_string())
        .env("NO_COLOR", "1")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    process::spawn(&mut cmd)
}

fn watch(db: &Db, cfg: &WorkerConfig, mut r: Running) -> Option<Running> {
    if let Err(e) = db.write_now(|reg| r.tail.poll(reg)) {
        tracing::warn!("worker: job {}: metrics: {e}", r.id);
    }
    let status = db.write_now(|reg| reg.job(r.id)).map(|j| j.status);
    if matches!(status, Ok(JobStatus::Cancelling)) && !r.signalled {
        process::signal(r.child.id(), false);
        r.signalled = true;
    }
    match r.child.try_wait() {
        Ok(None) => Some(r),
        Ok(Some(exit)) => {
            finish(db, cfg, r, process::exit_code(exit));
            None
        }
        Err(e) => {
            tracing::error!("worker: job {}: {e}", r.id);
            Some(r)
        }
    }
}

/// After the process ended: the last metrics, and the status its exit code means, unless the
/// run recorded its own end.
fn finish(db: &Db, cfg: &WorkerConfig, mut r: Running, code: i32) {
    let id = r.id;
    let log = log_path(&cfg.jobs_root, id);
    let result = db.write_now(|reg: &Registry| -> Result<()> {
        r.tail.poll(reg)?;
        let job = reg.job(id)?;
        if !job.status.is_terminal() {
            let (to, error) = outcome(code, &log);
            reg.move_job(id, to, error.as_deref())?;
        }
        reg.set_process(id, None, None)
    });
    match result {
        Ok(()) => tracing::info!("job {id} ended with exit code {code}"),
        Err(e) => tracing::error!("worker: job {id}: {e}"),
    }
}

/// The status an exit code means, and the error to record.
fn outcome(code: i32, log: &Path) -> (JobStatus, Option<String>) {
    match code {
        0 => (JobStatus::Completed, None),
        130 => (JobStatus::Cancelled, None),
        143 => (JobStatus::Failed, Some("terminated (SIGTERM)".into())),
        _ => (JobStatus::Failed, Some(last_error_line(log, code))),
    }
}

/// The log's last `error:` line, else its last line, else the exit code.
pub fn last_error_line(log: &Path, code: i32) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .or(lines.last().copied())
        .map(String::from)
        .unwrap_or_else(|| format!("exited with code {code}"))
}

/// The server is stopping: ask the job to stop with a checkpoint, wait, and mark it
/// interrupted so a later server can resume it.
fn stop_for_shutdown(db: &Db, mut r: Running) {
    process::signal(r.child.id(), true);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = r.child.try_wait() {
            break;
        }
        std::thread::sleep(POLL);
    }
    let _ = r.child.kill();
    let _ = r.child.wait();
    let id = r.id;
    let _ = db.write_now(|reg| -> Result<()> {
        r.tail.poll(reg)?;
        let job = reg.job(id)?;
        if !job.status.is_terminal() {
            reg.move_job(id, JobStatus::Failed, Some(&interrupted(&job)))?;
        }
        reg.set_process(id, None, None)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_statuses_and_the_log_names_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train.log");
        std::fs::write(&log, "loading\nerror: data.train: line 3: bad JSON\n\n").unwrap();
        assert_eq!(outcome(0, &log), (JobStatus::Completed, None));
        assert_eq!(outcome(130, &log), (JobStatus::Cancelled, None));
        assert_eq!(outcome(143, &log).1.unwrap(), "terminated (SIGTERM)");
        assert_eq!(outcome(1, &log).1.unwrap(), "data.train: line 3: bad JSON");
        std::fs::write(&log, "Killed\n").unwrap();
        assert_eq!(outcome(137, &log).1.unwrap(), "Killed");
        assert_eq!(
            last_error_line(&dir.path().join("none"), 137),
            "exited with code 137"
        );
    }
}
