//! Checkpoints: `<out>/checkpoints/step-NNNNNN/` with the adapter (PEFT format), the optimizer
//! state and `trainer_state.json`, each written whole into a temp folder and renamed, so the
//! newest complete checkpoint survives Ctrl-C and crashes. Which ones to write and remove is
//! the [`super::checkpoint_policy`]'s call; this module only does the I/O.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint_policy::SavedCheckpoint;
use super::optimizer::AdamW;
use crate::config::JobConfig;
use crate::export::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::export::{write_adapter_files, AdapterExport};
use crate::fsutil::Artifact;
use crate::lora::LoraParams;
use crate::{Error, Result};

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub seed: u64,
    /// Hash of the job settings that determine the run, to refuse resuming another job.
    pub job_fingerprint: String,
    pub elapsed_s: f64,
    /// SHA-256 of the training data ([`super::resume::data_hash`]), to refuse resuming on
    /// changed data; None in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// The run that wrote the checkpoint: set by a fresh start, kept by `--resume`, so that
    /// pruning touches only this run's checkpoints. Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// A checkpoint folder: the adapter, the optimizer state and the trainer state.
pub const CHECKPOINT: Artifact = Artifact {
    what: "a checkpoint folder",
    files: &[
        ADAPTER_CONFIG,
        ADAPTER_WEIGHTS,
        "optimizer.safetensors",
        "trainer_state.json",
    ],
    folders: &[],
};

/// A new run's id: the start time and the process, unique to this start.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:x}-{:x}", std::process::id())
}

/// A hash of the job settings that determine a run's trajectory, to refuse resuming another
/// job's checkpoints.
pub fn job_fingerprint(job: &JobConfig) -> String {
    // Only what changes the trajectory; output paths and eval/save cadence do not.
    let mut key = serde_json::json!({
        "model": job.model.source, "dtype": job.model.dtype,
        "lora": job.lora, "data": {"train": job.data.train, "validation": job.data.validation,
        "shuffle": job.data.shuffle, "max_seq_len": job.data.max_seq_len, "loss_on": job.data.loss_on},
        "train": {"mbs": job.train.micro_batch_size, "ga": job.train.grad_accum, "lr": job.train.lr,
        "scheduler": job.train.scheduler, "warmup_steps": job.train.warmup_steps,
        "warmup_ratio": job.train.warmup_ratio, "min_lr_ratio": job.train.min_lr_ratio,
        "wd": job.train.weight_decay, "clip": job.train.max_grad_norm, "seed": job.train.seed,
        "epochs": job.train.epochs, "max_steps": job.train.max_steps}
    });
    if job.model.quantize.is_quantized() {
        // Added only when set, so fingerprints of dense runs did not change with the key.
        key["quantize"] = job.model.quantize.name().into();
    }
    if job.is_dpo() {
        // Likewise: SFT fingerprints are those of the runs before `train.method`.
        key["dpo"] = serde_json::json!(job.dpo());
    }
    let text = key.to_string();
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// The folder of the checkpoint after `step` optimizer steps.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

/// Writes the checkpoint of `state.step` atomically.
pub fn save_checkpoint(
    out: &Path,
    state: &TrainerState,
    params: &LoraParams,
    opt: &AdamW,
    export: &AdapterExport,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(out, state.step);
    std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| Error::io(out, e))?;
    CHECKPOINT.write(&dir, false, |tmp| {
        write_adapter_files(params, tmp, export)?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        let text = serde_json::to_string_pretty(state).map_err(|source| Error::Json {
            what: "trainer_state.json".into(),
            source,
        })?;
        std::fs::write(tmp.join("trainer_state.json"), text)
            .map_err(|e| Error::io(tmp.join("trainer_state.json"), e))
    })?;
    Ok(dir)
}

/// Removes the checkpoint after `step` steps (none there is no error).
pub fn remove_checkpoint(out: &Path, step: usize) -> Result<()> {
    let dir = checkpoint_dir(out, step);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&dir, e)),
        _ => Ok(()),
    }
}

/// Complete checkpoints, oldest first.
pub fn list_checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = step_folders(out)?;
    found.retain(|(_, dir)| dir.join("trainer_state.json").is_file());
    Ok(found)
}

/// Every `checkpoints/step-N` folder, complete or not, oldest first.
pub fn step_folders(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let root = out.join("checkpoints");
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&root, e)),
    };
    let mut found = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(&root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                found.push((n, e.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The complete checkpoints written by the job of `fingerprint`, with the run of each: what
/// the checkpoint policy chooses this run's own from.
pub fn job_checkpoints(out: &Path, fingerprint: &str) -> Result<Vec<SavedCheckpoint>> {
    Ok(list_checkpoints(out)?
        .into_iter()
        .filter_map(|(step, dir)| {
            let state = read_state(&dir).ok()?;
            (state.job_fingerprint == fingerprint).then_some(SavedCheckpoint {
                step,
                run_id: state.run_id,
            })
        })
        .collect())
}

/// Reads a checkpoint's `trainer_state.json`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::model(&p, format!("invalid trainer state: {e}")))
}
