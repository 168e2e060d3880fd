//! A run's output folder before the run starts: what in it is a run's own (checkpoints, the
//! run log, the adapter, the report and its `eval/` folder), the refusal to start fresh over an earlier run's
//! checkpoints (whose steps would sort after the new run's), and `--overwrite`, which removes
//! that run's files and never another. A file of the user's where a run writes (their own
//! `job.toml`, a foreign `adapter/`) is refused whatever the flags.

use std::path::{Path, PathBuf};

use super::checkpoint::{list_checkpoints, step_folders, CHECKPOINT};
use super::run_log::RunLog;
use crate::eval::EVAL_OUTPUT;
use crate::export::ADAPTER;
use crate::{Error, Result};

/// How a run starts in its output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run; the folder must hold no checkpoints.
    Fresh,
    /// `--resume`: continues the run whose checkpoints are there.
    Resume,
    /// `--overwrite`: removes an earlier run's files, then starts a new run.
    Overwrite,
}

impl Start {
    /// The start that `--resume` and `--overwrite` ask for; both at once is an error.
    pub fn from_flags(resume: bool, overwrite: bool) -> Result<Self> {
        match (resume, overwrite) {
            (true, true) => Err(Error::Config(
                "--resume continues the run in the output folder and --overwrite removes it: give one"
                    .into(),
            )),
            (true, false) => Ok(Start::Resume),
            (false, true) => Ok(Start::Overwrite),
            (false, false) => Ok(Start::Fresh),
        }
    }
}

/// The folder where the evaluation after training (`[eval]` or `[report]`) writes.
pub const EVAL_DIR: &str = "eval";

/// The plain files of a run's record beside `job.toml`, ours by name: the run log's and the
/// report's.
const RUN_FILES: &[&str] = &[
    "metrics.jsonl",
    "loss.svg",
    "rewards.svg",
    "summary.json",
    "report.md",
    "report.json",
];

/// Whether a run may start in `dir` as `start` asks, touching nothing: a fresh start needs a
/// folder without checkpoints, and no start writes over a `job.toml` or `adapter/` that a run
/// did not write, or (with `--overwrite`) removes a checkpoint folder holding other files.
pub fn check(dir: &Path, start: Start) -> Result<()> {
    let log = RunLog::new(dir);
    if log.foreign_job_file()? {
        return Err(Error::RunFileTaken {
            path: log.job_path(),
            why: "is not a resolved job written by lora-train (a job file of your own?)".into(),
        });
    }
    let adapter = dir.join("adapter");
    if let Some(why) = ADAPTER.foreign_content(&adapter)? {
        return Err(Error::RunFileTaken { path: adapter, why });
    }
    let eval = dir.join(EVAL_DIR);
    if let Some(why) = EVAL_OUTPUT.foreign_content(&eval)? {
        return Err(Error::RunFileTaken { path: eval, why });
    }
    match start {
        Start::Fresh => {
            let checkpoints = list_checkpoints(dir)?.len();
            if checkpoints > 0 {
                return Err(Error::EarlierRun {
                    dir: dir.to_path_buf(),
                    checkpoints,
                });
            }
        }
        Start::Overwrite => {
            for path in checkpoint_folders(dir)? {
                if let Some(why) = CHECKPOINT.foreign_content(&path)? {
                    return Err(Error::RunFileTaken { path, why });
                }
            }
        }
        Start::Resume => {}
    }
    Ok(())
}

/// [`check`], then for `--overwrite` the removal of the earlier run's files: its checkpoints,
/// run log, adapter, report, eval folder and resolved job. Returns what was removed.
pub fn prepare(dir: &Path, start: Start) -> Result<Vec<PathBuf>> {
    check(dir, start)?;
    if start != Start::Overwrite {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for path in checkpoint_folders(dir)? {
        std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        removed.push(path);
    }
    // The checkpoints folder goes only when nothing else is left in it.
    let checkpoints = dir.join("checkpoints");
    if std::fs::remove_dir(&checkpoints).is_ok() {
        removed.push(checkpoints);
    }
    for folder in ["adapter", EVAL_DIR].map(|name| dir.join(name)) {
        if folder.is_dir() {
            std::fs::remove_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
            removed.push(folder);
        }
    }
    let files = std::iter::once("job.toml").chain(RUN_FILES.iter().copied());
    for path in files.map(|name| dir.join(name)) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            "--overwrite: removed the earlier run's files in {} ({} paths)",
            dir.display(),
            removed.len()
        );
    }
    Ok(removed)
}

/// The `checkpoints/step-N` folders in `dir`, complete or not.
fn checkpoint_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(step_folders(dir)?.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An earlier run's folder: two checkpoints, the run log, an adapter, a resolved job.
    fn earlier_run(dir: &Path) {
        for step in ["step-000002", "step-000004"] {
            let ckpt = dir.join("checkpoints").join(step);
            std::fs::create_dir_all(&ckpt).unwrap();
            for f in CHECKPOINT.files {
                std::fs::write(ckpt.join(f), "{}").unwrap();
            }
        }
        std::fs::create_dir_all(dir.join("adapter")).unwrap();
        for f in ADAPTER.files {
            std::fs::write(dir.join("adapter").join(f), "x").unwrap();
        }
        for f in RUN_FILES {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::create_dir_all(dir.join("eval/generations")).unwrap();
        std::fs::write(dir.join("eval/report.json"), "{}").unwrap();
        let job = format!("{}\n[model]\n", super::super::run_log::RESOLVED_JOB_HEADER);
        std::fs::write(dir.join("job.toml"), job).unwrap();
    }

    use crate::testutil::names_in as names;

    #[test]
    fn a_fresh_start_over_checkpoints_is_refused_and_resume_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        check(tmp.path(), Start::Fresh).unwrap();
        earlier_run(tmp.path());
        let err = check(tmp.path(), Start::Fresh).unwrap_err();
        assert!(
            matches!(err, Error::EarlierRun { checkpoints: 2, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("--resume") && text.contains("--overwrite"),
            "{text}"
        );
        check(tmp.path(), Start::Resume).unwrap();
        assert!(Start::from_flags(true, true).is_err());
    }

    #[test]
    fn overwrite_removes_the_runs_files_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        earlier_run(dir);
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        std::fs::write(dir.join("checkpoints/README"), "mine").unwrap();
        prepare(dir, Start::Overwrite).unwrap();
        assert_eq!(names(dir), ["checkpoints", "notes.txt"]);
        assert_eq!(names(&dir.join("checkpoints")), ["README"]);
    }

    #[test]
    fn files_of_the_users_where_a_run_writes_are_refused_whatever_the_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        earlier_run(dir);
        std::fs::write(dir.join("adapter/notes.txt"), "mine").unwrap();
        for start in [Start::Fresh, Start::Resume, Start::Overwrite] {
            let err = prepare(dir, start).unwrap_err();
            assert!(
                matches!(err, Error::RunFileTaken { ref path, .. } if *path == dir.join("adapter"))
            );
        }
        std::fs::remove_file(dir.join("adapter/notes.txt")).unwrap();
        std::fs::write(dir.join("eval/notes.txt"), "mine").unwrap();
        let err = prepare(dir, Start::Overwrite).unwrap_err();
        assert!(matches!(err, Error::RunFileTaken { ref path, .. } if *path == dir.join("eval")));
        std::fs::remove_file(dir.join("eval/notes.txt")).unwrap();
        std::fs::write(dir.join("job.toml"), "[model]\nsource = \"mine\"\n").unwrap();
        let err = prepare(dir, Start::Overwrite).unwrap_err();
        assert!(
            matches!(err, Error::RunFileTaken { ref path, .. } if *path == dir.join("job.toml"))
        );
        let ours = format!("{}\n", super::super::run_log::RESOLVED_JOB_HEADER);
        std::fs::write(dir.join("job.toml"), ours).unwrap();
        let step2 = dir.join("checkpoints/step-000002");
        std::fs::write(step2.join("notes.txt"), "mine").unwrap();
        let err = prepare(dir, Start::Overwrite).unwrap_err();
        assert!(
            matches!(err, Error::RunFileTaken { ref path, .. } if *path == step2),
            "{err}"
        );
        // Nothing was removed by a refused start.
        assert_eq!(
            names(&dir.join("checkpoints")),
            ["step-000002", "step-000004"]
        );
        assert!(dir.join("metrics.jsonl").is_file());
    }
}
