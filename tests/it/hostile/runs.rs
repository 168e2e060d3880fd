//! Training runs given a doctored checkpoint or data that would waste the run: a tampered
//! `trainer_state.json`, a dataset changed since the checkpoint, a validation set that
//! `max_seq_len` empties, and a dataset of empty replies. Each is refused before anything is
//! written.

use std::path::{Path, PathBuf};

use super::{fails_with, Snapshot};
use crate::common;
use crate::common::cli::lora_train;

/// A job file in `dir` training the tiny model on `train` (and `validation`, a file) into
/// `dir/run` for 8 steps with a checkpoint every 2; `extra` is appended to `[data]`.
fn job(dir: &Path, train: &Path, validation: Option<&Path>, extra: &str) -> PathBuf {
    let validation = validation
        .map(|v| format!("validation = \"{}\"\n", v.display()))
        .unwrap_or_default();
    let text = format!(
        "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 4\n\
         [data]\ntrain = \"{}\"\n{validation}{extra}\n\
         [train]\nmax_steps = 8\nmicro_batch_size = 2\nsave_every = 2\nlr = 1e-3\n\
         [output]\ndir = \"{}\"\n",
        common::fixtures().join("tiny-llama").display(),
        train.display(),
        dir.join("run").display()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A copy of the chats fixture in `dir`, which a case may change.
fn chats(dir: &Path) -> PathBuf {
    let path = dir.join("chats.jsonl");
    std::fs::copy(common::fixtures().join("chats.jsonl"), &path).unwrap();
    path
}

/// Trains `job` for `steps` steps, leaving their checkpoint.
fn train_steps(job: &Path, steps: usize, extra: &[&str]) {
    lora_train()
        .arg("--config")
        .arg(job)
        .args(["--stop-after", &steps.to_string(), "--no-report"])
        .args(extra)
        .env("RUST_LOG", "off")
        .assert()
        .success();
}

fn jsonl(path: &Path, conversations: &[(&str, &str)]) {
    let lines: Vec<String> = conversations
        .iter()
        .map(|(user, reply)| {
            serde_json::json!({"messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": reply},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_trainer_state_with_a_step_beyond_the_plan_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chats(tmp.path());
    let job = job(tmp.path(), &data, None, "");
    train_steps(&job, 2, &[]);
    let state = tmp
        .path()
        .join("run/checkpoints/step-000002/trainer_state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("\"step\": 2,"), "{text}");
    std::fs::write(&state, text.replace("\"step\": 2,", "\"step\": 1000,")).unwrap();
    let paths = [tmp.path()];
    let before = Snapshot::of(&paths);
    let err = fails_with(lora_train().arg("--config").arg(&job).arg("--resume"), 1);
    assert!(
        err.contains(&state.display().to_string()) && err.contains("`step` is 1000"),
        "{err}"
    );
    before.assert_unchanged(&paths);
}

#[test]
fn a_dataset_changed_since_the_checkpoint_is_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chats(tmp.path());
    let job = job(tmp.path(), &data, None, "");
    train_steps(&job, 2, &[]);
    // The same path and line count; one message differs.
    let text = std::fs::read_to_string(&data).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let changed = first.replacen("\"content\": \"", "\"content\": \"Well, ", 1);
    assert_ne!(changed, first, "{first}");
    std::fs::write(&data, format!("{changed}\n{rest}")).unwrap();
    let paths = [tmp.path()];
    let before = Snapshot::of(&paths);
    let err = fails_with(lora_train().arg("--config").arg(&job).arg("--resume"), 1);
    assert!(
        err.starts_with(&format!("error: {}: the data changed", data.display()))
            && err.contains("--allow-data-change"),
        "{err}"
    );
    before.assert_unchanged(&paths);

    // Allowed, the run continues on the new data and records its hash.
    let hash = |step: usize| {
        let dir = lora_train::train::checkpoint::checkpoint_dir(&tmp.path().join("run"), step);
        lora_train::train::checkpoint::read_state(&dir)
            .unwrap()
            .data_hash
            .expect("a data hash")
    };
    train_steps(&job, 1, &["--resume", "--allow-data-change"]);
    assert_ne!(hash(3), hash(2));
    // And the next resume needs no permission.
    train_steps(&job, 1, &["--resume"]);
}

#[test]
fn a_validation_set_that_max_seq_len_empties_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.jsonl");
    jsonl(&train, &[("Hi", "Hello!"), ("Bye", "Goodbye!")]);
    let long_reply = "a long reply that goes on ".repeat(40);
    let validation = tmp.path().join("validation.jsonl");
    jsonl(
        &validation,
        &[
            ("Tell me", long_reply.as_str()),
            ("More", long_reply.as_str()),
        ],
    );
    let job = job(tmp.path(), &train, Some(&validation), "max_seq_len = 64");
    let paths = [tmp.path()];
    let before = Snapshot::of(&paths);
    let err = fails_with(lora_train().arg("--config").arg(&job), 1);
    assert!(
        err.starts_with(&format!(
            "error: {}: all 2 validation",
            validation.display()
        )) && err.contains("data.max_seq_len = 64"),
        "{err}"
    );
    before.assert_unchanged(&paths);
}

#[test]
fn a_dataset_of_empty_replies_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.jsonl");
    jsonl(&train, &[("Hi", ""), ("Bye", "  "), ("Why?", "")]);
    let job = job(tmp.path(), &train, None, "");
    let paths = [tmp.path()];
    let before = Snapshot::of(&paths);
    let err = fails_with(lora_train().arg("--config").arg(&job), 1);
    assert!(
        err.starts_with(&format!("error: {}: every reply", train.display())),
        "{err}"
    );
    before.assert_unchanged(&paths);
}
