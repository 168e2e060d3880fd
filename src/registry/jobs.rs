//! Training jobs: one row per run, local or hosted, with its status, progress and the process
//! that runs it. Status moves `queued → preparing → training → completed | failed`, and
//! `cancelling → cancelled` on a stop; only the moves [`JobStatus::can_move_to`] allows are
//! made, each in one conditional UPDATE, so two writers never both win a transition.

use rusqlite::{params, Row};
use serde::Serialize;

use super::{now, Registry, RegistryError, Result};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Preparing,
    Training,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Preparing,
        JobStatus::Training,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelling,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Preparing => "preparing",
            JobStatus::Training => "training",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name`, or an error that lists the names.
    pub fn parse(name: &str) -> Result<JobStatus> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                RegistryError::Invalid(format!(
                    "unknown job status `{name}`; one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Finished, one way or another: nothing runs.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// A process works on the job.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobStatus::Preparing | JobStatus::Training | JobStatus::Cancelling
        )
    }

    /// Whether a job may move from `self` to `to`. A failed or cancelled job may be queued
    /// again (to resume it); a completed one is final.
    pub fn can_move_to(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Preparing | Cancelled | Failed)
                | (
                    Preparing,
                    Training | Completed | Failed | Cancelling | Cancelled
                )
                | (Training, Completed | Failed | Cancelling | Cancelled)
                | (Cancelling, Cancelled | Failed | Completed)
                | (Failed | Cancelled, Queued)
        )
    }
}

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Local,
    Together,
    #[serde(rename = "openai")]
    OpenAi,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Together => "together",
            Backend::OpenAi => "openai",
        }
    }

    fn parse(name: &str) -> rusqlite::Result<Backend> {
        match name {
            "local" => Ok(Backend::Local),
            "together" => Ok(Backend::Together),
            "openai" => Ok(Backend::OpenAi),
            _ => Err(bad_text("backend", name)),
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// A training run (`lora-train --config JOB`).
    #[default]
    Train,
    /// An evaluation (`lora-train eval --config EVAL`).
    Eval,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Eval => "eval",
        }
    }

    fn parse(name: &str) -> rusqlite::Result<JobKind> {
        match name {
            "train" => Ok(JobKind::Train),
            "eval" => Ok(JobKind::Eval),
            _ => Err(bad_text("kind", name)),
        }
    }
}

/// The training method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Sft,
    Dpo,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Dpo => "dpo",
        }
    }

    fn parse(name: &str) -> rusqlite::Result<Method> {
        match name {
            "sft" => Ok(Method::Sft),
            "dpo" => Ok(Method::Dpo),
            _ => Err(bad_text("method", name)),
        }
    }
}

fn bad_text(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {column} `{value}`").into(),
    )
}

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub name: String,
    pub kind: JobKind,
    pub backend: Backend,
    pub method: Method,
    /// The job file as written (for posted jobs: with its paths resolved).
    pub config_toml: String,
    pub config_path: Option<String>,
    pub status: JobStatus,
    /// Whether the worker may start the job while it is queued.
    pub autostart: bool,
    /// Whether the next start continues from the newest checkpoint.
    pub resume: bool,
    /// Done fraction, 0 to 1.
    pub progress: f64,
    pub current_step: Option<i64>,
    pub total_steps: Option<i64>,
    pub epoch: Option<f64>,
    pub latest_loss: Option<f64>,
    pub output_dir: Option<String>,
    pub remote_id: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub pid: Option<i64>,
    #[serde(skip)]
    pub pid_start: Option<i64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
}

const JOB_COLUMNS: &str =
    "id, name, backend, method, config_toml, config_path, status, autostart, \
    resume, progress, current_step, total_steps, epoch, latest_loss, output_dir, remote_id, error, \
    pid, pid_start, created_at, started_at, finished_at, updated_at, kind";

impl Job {
    fn from_row(r: &Row) -> rusqlite::Result<Job> {
        let status: String = r.get(6)?;
        Ok(Job {
            id: r.get(0)?,
            name: r.get(1)?,
            kind: JobKind::parse(&r.get::<_, String>(23)?)?,
            backend: Backend::parse(&r.get::<_, String>(2)?)?,
            method: Method::parse(&r.get::<_, String>(3)?)?,
            config_toml: r.get(4)?,
            config_path: r.get(5)?,
            status: JobStatus::parse(&status).map_err(|_| bad_text("status", &status))?,
            autostart: r.get(7)?,
            resume: r.get(8)?,
            progress: r.get(9)?,
            current_step: r.get(10)?,
            total_steps: r.get(11)?,
            epoch: r.get(12)?,
            latest_loss: r.get(13)?,
            output_dir: r.get(14)?,
            remote_id: r.get(15)?,
            error: r.get(16)?,
            pid: r.get(17)?,
            pid_start: r.get(18)?,
            created_at: r.get(19)?,
            started_at: r.get(20)?,
            finished_at: r.get(21)?,
            updated_at: r.get(22)?,
        })
    }
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub kind: JobKind,
    pub backend: Backend,
    pub method: Method,
    pub config_toml: String,
    pub config_path: Option<String>,
    pub status: JobStatus,
    pub autostart: bool,
    pub output_dir: Option<String>,
    pub total_steps: Option<i64>,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub name: Option<String>,
    /// At most this many, newest first (0: all).
    pub limit: usize,
}

/// A step of progress, as a run reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    pub current_step: i64,
    pub total_steps: Option<i64>,
    pub epoch: Option<f64>,
    pub latest_loss: Option<f64>,
}

/// How many jobs are in each status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusCounts(pub std::collections::BTreeMap<&'static str, i64>);

impl Registry {
    /// Creates a job and returns its id.
    pub fn create_job(&self, job: &NewJob) -> Result<i64> {
        let t = now();
        self.conn
            .execute(
                "INSERT INTO jobs (name, backend, method, config_toml, config_path, status, \
                 autostart, output_dir, total_steps, created_at, updated_at, kind) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
                params![
                    job.name,
                    job.backend.as_str(),
                    job.method.as_str(),
                    job.config_toml,
                    job.config_path,
                    job.status.as_str(),
                    job.autostart,
                    job.output_dir,
                    job.total_steps,
                    t,
                    job.kind.as_str(),
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The job `id`.
    pub fn job(&self, id: i64) -> Result<Job> {
        self.one(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            Job::from_row,
            "job",
            id,
        )
    }

    /// Jobs matching `filter`, newest first.
    pub fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let limit = match filter.limit {
            0 => -1,
            n => n as i64,
        };
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR status = ?1) \
                 AND (?2 IS NULL OR name = ?2) ORDER BY id DESC LIMIT ?3"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![filter.status.map(JobStatus::as_str), filter.name, limit],
                Job::from_row,
            )
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Moves job `id` to `to`, with `error` (cleared when `None`), when its status allows it.
    /// Returns the job as it was before; a move its status does not allow is a
    /// [`RegistryError::Conflict`].
    pub fn move_job(&self, id: i64, to: JobStatus, error: Option<&str>) -> Result<Job> {
        let job = self.job(id)?;
        if !job.status.can_move_to(to) {
            return Err(RegistryError::Conflict(format!(
                "job {id} is {}; it cannot become {}",
                job.status.as_str(),
                to.as_str()
            )));
        }
        let t = now();
        let started = matches!(to, JobStatus::Preparing).then_some(t.as_str());
        let finished = to.is_terminal().then_some(t.as_str());
        let changed = self
            .conn
            .execute(
                "UPDATE jobs SET status = ?1, error = ?2, updated_at = ?3, \
                 started_at = COALESCE(?4, started_at), \
                 finished_at = CASE WHEN ?6 THEN ?5 WHEN ?1 = 'queued' THEN NULL \
                                    ELSE finished_at END \
                 WHERE id = ?7 AND status = ?8",
                params![
                    to.as_str(),
                    error,
                    t,
                    started,
                    finished,
                    to.is_terminal(),
                    id,
                    job.status.as_str()
                ],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            // Another writer moved it first: report the state it is in now.
            let now_status = self.job(id)?.status;
            return Err(RegistryError::Conflict(format!(
                "job {id} became {} meanwhile; it cannot become {}",
                now_status.as_str(),
                to.as_str()
            )));
        }
        Ok(job)
    }

    /// Queues a failed or cancelled job again, to continue from its newest checkpoint; a held
    /// queued job is released to the worker. Anything else is a conflict.
    pub fn request_start(&self, id: i64) -> Result<Job> {
        let job = self.job(id)?;
        match job.status {
            JobStatus::Queued if job.remote_id.is_some() => {
                return Err(RegistryError::Conflict(format!(
                    "job {id} was submitted to {} already; `lora-train hosted watch` follows it",
                    job.backend.as_str()
                )))
            }
            JobStatus::Queued => {}
            JobStatus::Failed | JobStatus::Cancelled if job.backend == Backend::Local => {
                self.move_job(id, JobStatus::Queued, None)?;
                self.exec(
                    "UPDATE jobs SET resume = 1, pid = NULL, pid_start = NULL WHERE id = ?1",
                    id,
                )?;
            }
            status => {
                let why = match (status, job.backend) {
                    (JobStatus::Completed, _) => "it has completed".to_string(),
                    (s, Backend::Local) => format!("it is {}", s.as_str()),
                    (s, b) => format!("it is {} on {}", s.as_str(), b.as_str()),
                };
                return Err(RegistryError::Conflict(format!(
                    "job {id} cannot start: {why}"
                )));
            }
        }
        self.exec("UPDATE jobs SET autostart = 1 WHERE id = ?1", id)?;
        self.job(id)
    }

    /// Cancels a queued job at once, or marks a running one `cancelling` for its worker to
    /// stop. A finished job is a conflict.
    pub fn request_cancel(&self, id: i64) -> Result<Job> {
        let job = self.job(id)?;
        match job.status {
            JobStatus::Queued => {
                self.move_job(id, JobStatus::Cancelled, None)?;
            }
            JobStatus::Preparing | JobStatus::Training
                if job.backend != Backend::Local && job.pid.is_none() =>
            {
                return Err(RegistryError::Conflict(format!(
                    "job {id} runs on {} and no process here follows it; \
                     `lora-train hosted cancel` cancels it",
                    job.backend.as_str()
                )))
            }
            JobStatus::Preparing | JobStatus::Training => {
                self.move_job(id, JobStatus::Cancelling, None)?;
            }
            JobStatus::Cancelling => {}
            s => {
                return Err(RegistryError::Conflict(format!(
                    "job {id} is {}; there is nothing to cancel",
                    s.as_str()
                )))
            }
        }
        self.job(id)
    }

    /// The oldest queued job the worker may start.
    pub fn next_queued(&self) -> Result<Option<Job>> {
        self.first(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'queued' AND autostart = 1 \
                     AND remote_id IS NULL ORDER BY id LIMIT 1"
            ),
            [],
            Job::from_row,
        )
    }

    /// Jobs a process works on (preparing, training or cancelling).
    pub fn active_jobs(&self) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        for s in [
            JobStatus::Preparing,
            JobStatus::Training,
            JobStatus::Cancelling,
        ] {
            out.extend(self.jobs(&JobFilter {
                status: Some(s),
                ..Default::default()
            })?);
        }
        Ok(out)
    }

    /// Records the process that runs job `id` (its pid and start time, for liveness checks).
    pub fn set_process(&self, id: i64, pid: Option<u32>, start: Option<u64>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET pid = ?1, pid_start = ?2, updated_at = ?3 WHERE id = ?4",
                params![pid, start.map(|s| s as i64), now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records the progress a run reports.
    pub fn set_progress(&self, id: i64, p: &Progress) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET current_step = ?1, total_steps = COALESCE(?2, total_steps), \
                 epoch = COALESCE(?3, epoch), latest_loss = COALESCE(?4, latest_loss), \
                 progress = CASE WHEN COALESCE(?2, total_steps) > 0 \
                     THEN MIN(1.0, CAST(?1 AS REAL) / COALESCE(?2, total_steps)) \
                     ELSE progress END, \
                 updated_at = ?5 WHERE id = ?6",
                params![
                    p.current_step,
                    p.total_steps,
                    p.epoch,
                    p.latest_loss,
                    now(),
                    id
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Sets the output folder and the provider's job id, when known.
    pub fn set_job_outputs(
        &self,
        id: i64,
        output_dir: Option<&str>,
        remote_id: Option<&str>,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET output_dir = COALESCE(?1, output_dir), \
                 remote_id = COALESCE(?2, remote_id), updated_at = ?3 WHERE id = ?4",
                params![output_dir, remote_id, now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records where the job file the run reads was written, and (for a job that was not
    /// given as a file) that file's text as the job's configuration.
    pub fn set_config_path(&self, id: i64, path: &str, toml: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE jobs SET config_path = ?1, config_toml = COALESCE(?2, config_toml), \
                 updated_at = ?3 WHERE id = ?4",
                params![path, toml, now(), id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The newest job that wrote to `output_dir` and did not complete: the row a `--resume`
    /// run continues.
    pub fn unfinished_job_in(&self, output_dir: &str) -> Result<Option<Job>> {
        self.first(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE output_dir = ?1 AND backend = 'local' \
                     AND status IN ('failed', 'cancelled') ORDER BY id DESC LIMIT 1"
            ),
            [output_dir],
            Job::from_row,
        )
    }

    /// The job a provider knows as `remote_id` on `backend`.
    pub fn job_by_remote(&self, backend: Backend, remote_id: &str) -> Result<Option<Job>> {
        self.first(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE backend = ?1 AND remote_id = ?2 \
                     ORDER BY id DESC LIMIT 1"
            ),
            params![backend.as_str(), remote_id],
            Job::from_row,
        )
    }

    /// Moves job `id` towards `to` through the statuses between (`queued → preparing →
    /// training`), as a remote job's status is followed; a finished job stays as it is.
    pub fn advance_job(&self, id: i64, to: JobStatus, error: Option<&str>) -> Result<()> {
        use JobStatus::*;
        let now = self.job(id)?.status;
        // A row a process already works on (the server's watcher) does not go back to queued.
        if now == to || now.is_terminal() || (to == Queued && now.is_active()) {
            return Ok(());
        }
        let path: &[JobStatus] = match (now, to) {
            (Queued, Training) => &[Preparing, Training],
            (Queued, Completed) => &[Preparing, Completed],
            (Queued, Cancelling) => &[Preparing, Cancelling],
            _ => std::slice::from_ref(&to),
        };
        for step in path {
            let err = (*step == to).then_some(error).flatten();
            self.move_job(id, *step, err)?;
        }
        Ok(())
    }

    /// The number of jobs in each status (every status present, 0 when none).
    pub fn status_counts(&self) -> Result<StatusCounts> {
        let mut counts: std::collections::BTreeMap<_, _> =
            JobStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        for (status, n) in rows {
            if let Ok(s) = JobStatus::parse(&status) {
                counts.insert(s.as_str(), n);
            }
        }
        Ok(StatusCounts(counts))
    }

    fn exec(&self, sql: &str, id: i64) -> Result<()> {
        self.conn.execute(sql, [id]).map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::registry;
    use super::*;

    pub fn new_job(name: &str) -> NewJob {
        NewJob {
            name: name.into(),
            kind: JobKind::Train,
            backend: Backend::Local,
            method: Method::Sft,
            config_toml: "[model]\n".into(),
            config_path: None,
            status: JobStatus::Queued,
            autostart: true,
            output_dir: Some(format!("/runs/{name}")),
            total_steps: None,
        }
    }

    #[test]
    fn a_job_walks_its_statuses_and_refuses_the_moves_it_may_not_make() {
        let (_dir, reg) = registry();
        let id = reg.create_job(&new_job("a")).unwrap();
        assert_eq!(reg.next_queued().unwrap().unwrap().id, id);
        reg.move_job(id, JobStatus::Preparing, None).unwrap();
        assert!(reg.next_queued().unwrap().is_none());
        reg.move_job(id, JobStatus::Training, None).unwrap();
        reg.set_progress(
            id,
            &Progress {
                current_step: 5,
                total_steps: Some(20),
                epoch: Some(0.5),
                latest_loss: Some(1.25),
            },
        )
        .unwrap();
        let job = reg.job(id).unwrap();
        assert_eq!(job.progress, 0.25);
        assert_eq!(job.latest_loss, Some(1.25));
        assert!(job.started_at.is_some() && job.finished_at.is_none());
        reg.move_job(id, JobStatus::Completed, None).unwrap();
        assert!(reg.job(id).unwrap().finished_at.is_some());
        let e = reg.request_cancel(id).unwrap_err();
        assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
        let e = reg.request_start(id).unwrap_err().to_string();
        assert!(e.contains("completed"), "{e}");
        assert!(matches!(
            reg.job(999).unwrap_err(),
            RegistryError::NotFound { .. }
        ));
    }

    #[test]
    fn cancel_is_immediate_when_queued_and_a_request_when_running() {
        let (_dir, reg) = registry();
        let queued = reg.create_job(&new_job("q")).unwrap();
        assert_eq!(
            reg.request_cancel(queued).unwrap().status,
            JobStatus::Cancelled
        );
        let running = reg.create_job(&new_job("r")).unwrap();
        reg.move_job(running, JobStatus::Preparing, None).unwrap();
        assert_eq!(
            reg.request_cancel(running).unwrap().status,
            JobStatus::Cancelling
        );
        // A cancelled job may be started again: it resumes.
        let again = reg.request_start(queued).unwrap();
        assert_eq!(again.status, JobStatus::Queued);
        assert!(again.resume && again.autostart && again.finished_at.is_none());
        let counts = reg.status_counts().unwrap();
        assert_eq!(counts.0["queued"], 1);
        assert_eq!(counts.0["cancelling"], 1);
        assert_eq!(counts.0["completed"], 0);
    }

    #[test]
    fn held_jobs_wait_for_start_and_lists_filter() {
        let (_dir, reg) = registry();
        let held = reg
            .create_job(&NewJob {
                autostart: false,
                ..new_job("held")
            })
            .unwrap();
        reg.create_job(&new_job("other")).unwrap();
        let next = reg.next_queued().unwrap().unwrap();
        assert_ne!(next.id, held);
        reg.request_cancel(next.id).unwrap();
        assert!(reg.next_queued().unwrap().is_none());
        reg.request_start(held).unwrap();
        assert_eq!(reg.next_queued().unwrap().unwrap().id, held);
        let named = reg
            .jobs(&JobFilter {
                name: Some("held".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(named.len(), 1);
        let cancelled = reg
            .jobs(&JobFilter {
                status: Some(JobStatus::Cancelled),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(cancelled.len(), 1);
        assert!(JobStatus::parse("running")
            .unwrap_err()
            .to_string()
            .contains("queued"));
    }
}
