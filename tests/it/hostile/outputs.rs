//! Output paths: `export --out` and a training run never replace what the user did not ask
//! to replace (a folder of their own, the run folder, a checkpoint, a plain file, a sibling
//! named like an old backup), a fresh run does not start over an earlier run's checkpoints,
//! and `--force` / `--overwrite` replace only what they say.

use std::path::{Path, PathBuf};

use super::{fails_with, Snapshot};
use crate::common;
use crate::common::cli::lora_train;

/// A PEFT adapter folder to export from.
fn adapter() -> PathBuf {
    common::fixtures().join("peft-train/tiny-llama/final_adapter")
}

/// `lora-train export --checkpoint FROM --out OUT` plus `extra`.
fn export(from: &Path, out: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = lora_train();
    cmd.arg("export")
        .arg("--checkpoint")
        .arg(from)
        .arg("--out")
        .arg(out)
        .args(extra);
    cmd
}

/// Writes a two-step job on the tiny model, saving every step, to `job` with `out` as its
/// output folder.
fn write_job(job: &Path, out: &Path) {
    let text = format!(
        "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 4\nalpha = 8\n\
         [data]\ntrain = \"{}\"\nvalidation = 0.25\nmax_seq_len = 128\n\
         [train]\nmax_steps = 2\nmicro_batch_size = 2\nlr = 1e-2\nsave_every = 1\nkeep_last = 0\n\
         eval_every = 0\n[output]\ndir = \"{}\"\n",
        common::fixtures().join("tiny-llama").display(),
        common::fixtures().join("chats.jsonl").display(),
        out.display()
    );
    std::fs::write(job, text).unwrap();
}

/// `lora-train --config job --no-report` plus `extra`.
fn train(job: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = lora_train();
    cmd.arg("--config")
        .arg(job)
        .arg("--no-report")
        .args(extra)
        .env("RUST_LOG", "off");
    cmd
}

/// A finished run in `tmp/run`, from the job `tmp/job.toml`.
fn trained_run(tmp: &Path) -> (PathBuf, PathBuf) {
    let (job, out) = (tmp.join("job.toml"), tmp.join("run"));
    write_job(&job, &out);
    train(&job, &[]).assert().success();
    assert!(out
        .join("checkpoints/step-000002/optimizer.safetensors")
        .is_file());
    (job, out)
}

fn run_id(checkpoint: &Path) -> String {
    common::read_json(&checkpoint.join("trainer_state.json"))["run_id"]
        .as_str()
        .expect("a run id")
        .to_string()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The error line names `path` and suggests `flag`.
fn assert_names(line: &str, path: &Path, flag: &str) {
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(line.contains(flag), "{line}");
    assert!(!line.contains(".tmp-"), "{line}");
}

#[test]
fn export_over_a_folder_of_the_users_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    let snap = Snapshot::of(&[tmp.path()]);
    let line = fails_with(&mut export(&adapter(), &mine, &[]), 1);
    assert_names(&line, &mine, "--force");
    assert!(line.contains("notes.txt"), "{line}");
    snap.assert_unchanged(&[tmp.path()]);
}

#[test]
fn export_over_the_run_folder_or_a_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run) = trained_run(tmp.path());
    let checkpoint = run.join("checkpoints/step-000002");
    let snap = Snapshot::of(&[tmp.path()]);
    for (out, merge) in [(&run, false), (&checkpoint, false), (&checkpoint, true)] {
        let mut cmd = export(&checkpoint, out, &[]);
        if merge {
            cmd.arg("--merge");
        }
        let line = fails_with(&mut cmd, 1);
        assert_names(&line, out, "--force");
        snap.assert_unchanged(&[tmp.path()]);
    }
}

#[test]
fn export_given_a_plain_file_is_refused_and_leaves_no_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("adapter");
    std::fs::write(&file, "not a folder").unwrap();
    let snap = Snapshot::of(&[tmp.path()]);
    let line = fails_with(&mut export(&adapter(), &file, &[]), 1);
    assert_names(&line, &file, "--force");
    assert!(line.contains("is a file"), "{line}");
    snap.assert_unchanged(&[tmp.path()]);
    assert_eq!(names(tmp.path()), ["adapter"]);
}

#[test]
fn siblings_named_like_old_temp_and_backup_folders_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    let siblings = [
        tmp.path().join("adapter.old"),
        tmp.path().join(".adapter.tmp"),
    ];
    for s in &siblings {
        std::fs::create_dir(s).unwrap();
        std::fs::write(s.join("keep.txt"), "mine").unwrap();
    }
    let paths: Vec<&Path> = siblings.iter().map(PathBuf::as_path).collect();
    let snap = Snapshot::of(&paths);
    // Written, then replaced: an adapter folder of ours is replaced without --force.
    export(&adapter(), &out, &[]).assert().success();
    export(&adapter(), &out, &["--dtype", "bf16"])
        .assert()
        .success();
    snap.assert_unchanged(&paths);
    assert_eq!(
        names(tmp.path()),
        [".adapter.tmp", "adapter", "adapter.old"]
    );
    assert_eq!(
        names(&out),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
}

#[test]
fn force_replaces_a_folder_of_the_users() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(mine.join("sub")).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    export(&adapter(), &mine, &["--force"]).assert().success();
    assert_eq!(
        names(&mine),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
    assert_eq!(names(tmp.path()), ["mine"]);
}

#[test]
fn a_fresh_run_over_an_earlier_runs_checkpoints_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (job, run) = trained_run(tmp.path());
    let snap = Snapshot::of(&[tmp.path()]);
    let line = fails_with(&mut train(&job, &[]), 1);
    assert_names(&line, &run, "--resume");
    assert!(line.contains("--overwrite"), "{line}");
    snap.assert_unchanged(&[tmp.path()]);
}

#[test]
fn overwrite_removes_only_the_earlier_runs_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (job, run) = trained_run(tmp.path());
    let before = run_id(&run.join("checkpoints/step-000002"));
    let notes = run.join("notes.txt");
    let mine = run.join("checkpoints/README");
    std::fs::write(&notes, "my notes").unwrap();
    std::fs::write(&mine, "mine").unwrap();
    let snap = Snapshot::of(&[&notes, &mine, &job]);
    train(&job, &["--overwrite"]).assert().success();
    snap.assert_unchanged(&[&notes, &mine, &job]);
    // A new run: both checkpoints are its own, none survives from the earlier one.
    let checkpoints = run.join("checkpoints");
    assert_eq!(
        names(&checkpoints),
        ["README", "step-000001", "step-000002"]
    );
    for step in ["step-000001", "step-000002"] {
        assert_ne!(run_id(&checkpoints.join(step)), before);
    }
    // The resolved job is the run's own: written again, and a further --overwrite removes it.
    let resolved = std::fs::read_to_string(run.join("job.toml")).unwrap();
    assert!(resolved.starts_with("# The resolved job"), "{resolved}");
    train(&job, &["--overwrite"]).assert().success();
}

#[test]
fn a_job_file_of_the_users_in_the_output_folder_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    // The job file lives where its run writes: `output.dir` is its own folder.
    let job = tmp.path().join("job.toml");
    write_job(&job, tmp.path());
    let snap = Snapshot::of(&[tmp.path()]);
    for flags in [&[][..], &["--overwrite"][..]] {
        let line = fails_with(&mut train(&job, flags), 1);
        assert_names(&line, &job, "output.dir");
        snap.assert_unchanged(&[tmp.path()]);
    }
}

#[test]
fn data_commands_never_replace_a_file_unasked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::fixtures().join("chats.jsonl");
    let mine = tmp.path().join("mine.jsonl");
    std::fs::write(&mine, "my own notes\n").unwrap();
    // convert -o, split's outputs and stats --svg refuse an existing file, and leave it alone.
    let line = fails_with(
        lora_train()
            .args(["data", "convert"])
            .arg(&data)
            .arg("-o")
            .arg(&mine)
            .args(["--to", "sharegpt"]),
        1,
    );
    assert!(
        line.contains("mine.jsonl: already exists; give --force"),
        "{line}"
    );
    let split_out = tmp.path().join("chats.valid.jsonl");
    std::fs::write(&split_out, "mine\n").unwrap();
    let line = fails_with(
        lora_train()
            .args(["data", "split"])
            .arg(&data)
            .args(["--valid", "0.2", "-o"])
            .arg(tmp.path()),
        1,
    );
    assert!(line.contains("chats.valid.jsonl: already exists"), "{line}");
    let svg = tmp.path().join("h.svg");
    std::fs::write(&svg, "mine").unwrap();
    let line = fails_with(
        lora_train()
            .args(["data", "stats"])
            .arg(&data)
            .arg("--model")
            .arg(common::fixtures().join("tiny-llama"))
            .arg("--svg")
            .arg(&svg),
        1,
    );
    assert!(line.contains("h.svg: already exists"), "{line}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my own notes\n");
    assert_eq!(std::fs::read_to_string(&split_out).unwrap(), "mine\n");
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), "mine");
    // synth refuses outputs its metadata does not claim.
    let synth = tmp.path().join("synth.toml");
    std::fs::write(
        &synth,
        "[synth]\noutput = \"mine.jsonl\"\n[[stage]]\nname = \"a\"\nprompt = \"hi\"\n\
         [[stage.providers]]\nprovider = \"vllm\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    )
    .unwrap();
    let line = fails_with(
        lora_train().args(["data", "synth", "--config"]).arg(&synth),
        1,
    );
    assert!(
        line.contains("mine.jsonl: exists, but") && line.contains("give --force"),
        "{line}"
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my own notes\n");
}

#[test]
fn bench_output_over_a_folder_of_the_users_is_refused_before_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (job, out) = (tmp.path().join("job.toml"), tmp.path().join("run"));
    write_job(&job, &out);
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    let snap = Snapshot::of(&[tmp.path()]);
    let mut cmd = lora_train();
    cmd.args(["bench", "--config"])
        .arg(&job)
        .arg("-o")
        .arg(&mine);
    let line = fails_with(&mut cmd, 1);
    assert_names(&line, &mine, "--force");
    assert!(line.contains("notes.txt"), "{line}");
    snap.assert_unchanged(&[tmp.path()]);
}
