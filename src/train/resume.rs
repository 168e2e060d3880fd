//! What a run checks before it continues from a checkpoint: that `trainer_state.json` holds
//! values this job could have written (a step within its plan, its length, seed and epoch), and
//! that the training data is the data the checkpoint was trained on, by a SHA-256 of its bytes
//! rather than its path, unless the user allows the change. A checkpoint written before the
//! hash was recorded resumes without the data check.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::checkpoint::{list_checkpoints, read_state, TrainerState};
use super::plan::StepPlan;
use crate::{Error, Result};

/// What `--resume` checks the newest checkpoint of `out` against.
pub struct Resumable<'a> {
    pub out: &'a Path,
    /// The job's fingerprint: a checkpoint of another job is refused.
    pub fingerprint: &'a str,
    /// The data's hash now ([`data_hash`]) and the files it covers.
    pub data_hash: &'a str,
    pub data: (&'a Path, Option<&'a Path>),
    pub allow_data_change: bool,
    pub plan: &'a StepPlan,
    pub seed: u64,
}

/// The newest checkpoint and its state, once it is shown to continue this job: the same job,
/// a consistent `trainer_state.json`, and the same data unless a change is allowed.
pub fn newest_resumable(r: &Resumable) -> Result<(TrainerState, PathBuf)> {
    let Some((folder_step, dir)) = list_checkpoints(r.out)?.pop() else {
        return Err(Error::Config(format!(
            "--resume: no checkpoint in {}",
            r.out.join("checkpoints").display()
        )));
    };
    let state = read_state(&dir)?;
    if state.job_fingerprint != r.fingerprint {
        return Err(Error::Config(format!(
            "--resume: {} was written by a different job (model, data or hyper-parameters changed)",
            dir.display()
        )));
    }
    let data_changed = check_data(&state, &dir, r.data_hash, r.data, r.allow_data_change)?;
    let want = Expected {
        folder_step,
        plan: r.plan,
        seed: r.seed,
        data_changed,
    };
    check_state(&state, &dir.join("trainer_state.json"), &want)?;
    Ok((state, dir))
}

/// The hash of a run's data: SHA-256 over the training file's length and bytes, then the
/// validation file's when it has one, as `sha256:<hex>`.
pub fn data_hash(train: &Path, validation: Option<&Path>) -> Result<String> {
    let mut hasher = Sha256::new();
    for path in std::iter::once(train).chain(validation) {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("sha256:{}", crate::fsutil::hex(&hasher.finalize())))
}

/// What the resuming run expects of a checkpoint's state.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The step in the checkpoint folder's name (`step-NNNNNN`).
    pub folder_step: usize,
    pub plan: &'a StepPlan,
    pub seed: u64,
    /// The data changed and the user allowed it: the run's length may have changed with it.
    pub data_changed: bool,
}

/// Refuses a state that this run could not have written; the error names the file and field.
pub fn check_state(state: &TrainerState, file: &Path, want: &Expected) -> Result<()> {
    let bad = |field: &'static str, msg: String| Error::CheckpointState {
        path: file.to_path_buf(),
        field,
        msg: format!("{msg}; the file was edited or belongs to another run"),
    };
    let total = want.plan.total_steps;
    if state.step == 0 || state.step > total {
        return Err(bad(
            "step",
            format!("is {}, outside the run's steps 1..={total}", state.step),
        ));
    }
    if state.step != want.folder_step {
        return Err(bad(
            "step",
            format!(
                "is {}, but the checkpoint folder is step {}",
                state.step, want.folder_step
            ),
        ));
    }
    if state.seed != want.seed {
        return Err(bad(
            "seed",
            format!("is {}, but train.seed is {}", state.seed, want.seed),
        ));
    }
    if !want.data_changed {
        if state.total_steps != total {
            return Err(bad(
                "total_steps",
                format!("is {}, but this job plans {total} steps", state.total_steps),
            ));
        }
        let epoch = want.plan.epoch_of(state.step);
        if !state.epoch.is_finite() || (state.epoch - epoch).abs() > 1e-9 * epoch.max(1.0) {
            return Err(bad(
                "epoch",
                format!(
                    "is {}, but step {} is epoch {epoch}",
                    state.epoch, state.step
                ),
            ));
        }
    }
    if !state.elapsed_s.is_finite() || state.elapsed_s < 0.0 {
        return Err(bad(
            "elapsed_s",
            format!("is {}, not a duration in seconds", state.elapsed_s),
        ));
    }
    Ok(())
}

/// Whether the data of `current` hash is the checkpoint's. Ok(true) when it changed and
/// `allow_change` lets the run continue; an error when it changed otherwise.
pub fn check_data(
    state: &TrainerState,
    checkpoint: &Path,
    current: &str,
    files: (&Path, Option<&Path>),
    allow_change: bool,
) -> Result<bool> {
    let Some(saved) = &state.data_hash else {
        tracing::info!(
            "{} was written before checkpoints recorded the data's hash; the data is not checked",
            checkpoint.display()
        );
        return Ok(false);
    };
    if saved == current {
        return Ok(false);
    }
    let (train, validation) = files;
    let which = match validation {
        Some(v) => format!(" (or the validation file {})", v.display()),
        None => String::new(),
    };
    if allow_change {
        tracing::warn!(
            "{}{which} changed since {} was written; continuing on the new data (--allow-data-change)",
            train.display(),
            checkpoint.display()
        );
        return Ok(true);
    }
    Err(Error::DataChanged {
        path: PathBuf::from(train),
        msg: format!(
            "the data{which} changed since {} was written (its SHA-256 differs); restore it, \
             or continue on the new data with --resume --allow-data-change",
            checkpoint.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(total_steps: usize) -> StepPlan {
        StepPlan {
            examples: 8,
            micro_batch_size: 2,
            grad_accum: 1,
            steps_per_epoch: 4,
            total_steps,
        }
    }

    fn state(step: usize) -> TrainerState {
        TrainerState {
            step,
            total_steps: 8,
            epoch: step as f64 / 4.0,
            seed: 7,
            job_fingerprint: "f".into(),
            elapsed_s: 1.5,
            data_hash: Some("sha256:ab".into()),
            run_id: None,
        }
    }

    fn check(s: &TrainerState, folder_step: usize, data_changed: bool) -> Result<()> {
        let p = plan(8);
        let want = Expected {
            folder_step,
            plan: &p,
            seed: 7,
            data_changed,
        };
        check_state(s, Path::new("ck/trainer_state.json"), &want)
    }

    fn field(r: Result<()>) -> &'static str {
        match r {
            Err(Error::CheckpointState { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_consistent_state_passes() {
        check(&state(3), 3, false).unwrap();
        check(&state(8), 8, false).unwrap();
    }

    #[test]
    fn a_step_beyond_the_plan_or_off_its_folder_is_refused() {
        let e = check(&state(1000), 1000, false).unwrap_err().to_string();
        assert!(
            e.contains("ck/trainer_state.json") && e.contains("`step` is 1000"),
            "{e}"
        );
        assert_eq!(field(check(&state(0), 0, false)), "step");
        assert_eq!(field(check(&state(4), 3, false)), "step");
    }

    #[test]
    fn other_fields_must_agree_with_the_job() {
        let mut s = state(3);
        s.seed = 8;
        assert_eq!(field(check(&s, 3, false)), "seed");
        let mut s = state(3);
        s.total_steps = 9;
        assert_eq!(field(check(&s, 3, false)), "total_steps");
        // A run on changed data may plan another length.
        check(&s, 3, true).unwrap();
        let mut s = state(3);
        s.epoch = 2.0;
        assert_eq!(field(check(&s, 3, false)), "epoch");
        let mut s = state(3);
        s.elapsed_s = f64::NAN;
        assert_eq!(field(check(&s, 3, false)), "elapsed_s");
    }

    #[test]
    fn the_data_hash_defaults_to_none_in_older_checkpoints() {
        let old = r#"{"step":2,"total_steps":8,"epoch":0.5,"seed":7,"job_fingerprint":"f","elapsed_s":1.0}"#;
        let s: TrainerState = serde_json::from_str(old).unwrap();
        assert_eq!(s.data_hash, None);
        let files = (Path::new("train.jsonl"), None);
        assert!(!check_data(&s, Path::new("ck"), "sha256:cd", files, false).unwrap());
        // Written when known, and read back.
        let text = serde_json::to_string(&state(2)).unwrap();
        assert!(text.contains(r#""data_hash":"sha256:ab""#), "{text}");
        assert_eq!(
            serde_json::from_str::<TrainerState>(&text).unwrap(),
            state(2)
        );
    }

    #[test]
    fn changed_data_is_refused_unless_allowed() {
        let s = state(2);
        let files = (Path::new("train.jsonl"), Some(Path::new("val.jsonl")));
        assert!(!check_data(&s, Path::new("ck"), "sha256:ab", files, false).unwrap());
        let e = check_data(&s, Path::new("ck"), "sha256:cd", files, false).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::DataChanged { .. }), "{msg}");
        assert!(
            msg.starts_with("train.jsonl: ")
                && msg.contains("val.jsonl")
                && msg.contains("--allow-data-change"),
            "{msg}"
        );
        assert!(check_data(&s, Path::new("ck"), "sha256:cd", files, true).unwrap());
    }

    #[test]
    fn the_hash_covers_the_bytes_and_the_split_between_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, "xy").unwrap();
        std::fs::write(&b, "z").unwrap();
        let ab = data_hash(&a, Some(&b)).unwrap();
        assert!(ab.starts_with("sha256:") && ab.len() == 7 + 64, "{ab}");
        assert_eq!(ab, data_hash(&a, Some(&b)).unwrap());
        assert_ne!(ab, data_hash(&a, None).unwrap());
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "yz").unwrap();
        assert_ne!(ab, data_hash(&a, Some(&b)).unwrap());
        let e = data_hash(&tmp.path().join("missing"), None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
