//! Ctrl-C (SIGINT) and SIGTERM during training save a checkpoint at the current step and exit
//! with the signal's code (130, 143); the run then resumes from it exactly.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lora_train::train::checkpoint::{checkpoint_dir, list_checkpoints, read_state};

/// Writes `job`: a long run of the tiny model into `out`, so that a signal lands mid-run.
fn long_job(job: &Path, out: &Path) {
    std::fs::write(
        job,
        format!(
            "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 128\n\
             [train]\nmax_steps = 100000\nmicro_batch_size = 2\nlr = 1e-3\n[output]\ndir = \"{}\"\n",
            common::fixtures().join("tiny-llama").display(),
            common::fixtures().join("chats.jsonl").display(),
            out.display()
        ),
    )
    .unwrap();
}

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("lora-train")
}

/// Starts training `job`, sends `signal` (a `kill` name) once a few steps are logged, and
/// returns the exit code, stderr and the step of the checkpoint it left.
fn train_until(
    job: &Path,
    out: &Path,
    signal: &str,
    args: &[&str],
) -> (Option<i32>, String, usize) {
    let mut child = Command::new(bin())
        .env("LORA_TRAIN_HOME", common::cli::shared_home())
        .arg("--config")
        .arg(job)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are logged.
    let metrics = out.join("metrics.jsonl");
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let ckpts = list_checkpoints(out).unwrap();
    let (step, dir) = ckpts
        .last()
        .unwrap_or_else(|| panic!("no checkpoint on {signal}: {stderr}"))
        .clone();
    assert_eq!(read_state(&dir).unwrap().step, step);
    (code.code(), stderr, step)
}

/// Runs the binary on `job` with `args`, expecting success.
fn run_ok(job: &Path, args: &[&str]) {
    let out = Command::new(bin())
        .env("LORA_TRAIN_HOME", common::cli::shared_home())
        .arg("--config")
        .arg(job)
        .args(args)
        .output()
        .unwrap();
    common::cli::succeeded(&out);
}

#[test]
fn sigint_checkpoints_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (job, out) = (tmp.path().join("job.toml"), tmp.path().join("run"));
    long_job(&job, &out);
    let (code, stderr, step) = train_until(&job, &out, "INT", &[]);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(step >= 3);
    // Resume and do one more step.
    run_ok(&job, &["--resume", "--stop-after", "1"]);
    let ckpts = list_checkpoints(&out).unwrap();
    assert_eq!(ckpts.last().unwrap().0, step + 1);
}

#[test]
fn sigterm_checkpoints_exits_143_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (job, out) = (tmp.path().join("job.toml"), tmp.path().join("run"));
    long_job(&job, &out);
    // `--set` values that need quoting come back quoted in the printed resume command.
    let set = ["--set", "train.seed=7", "--set", "model.name=it's $x"];
    let (code, stderr, step) = train_until(&job, &out, "TERM", &set);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("--set train.seed=7 --set 'model.name=it'\\''s $x' --resume"),
        "{stderr}"
    );
    run_ok(
        &job,
        &[&set[..], &["--resume", "--stop-after", "3"]].concat(),
    );

    // The same job without a signal, stopped at the same step.
    let (whole_job, whole) = (tmp.path().join("whole.toml"), tmp.path().join("whole"));
    long_job(&whole_job, &whole);
    let until = (step + 3).to_string();
    run_ok(&whole_job, &[&set[..], &["--stop-after", &until]].concat());
    assert_eq!(
        common::logged_losses(&out),
        common::logged_losses(&whole),
        "resumed curve differs"
    );
    let adapter = |out: &Path| {
        std::fs::read(checkpoint_dir(out, step + 3).join("adapter_model.safetensors")).unwrap()
    };
    assert!(adapter(&out) == adapter(&whole), "the adapters differ");
}
