//! The `lora-train hosted ...` commands and `lora-train --config` on a `[hosted]` job, run as
//! the real binary against the fake Together and OpenAI APIs on loopback: dry run, submit and
//! watch, status, list, events, checkpoints, download, cancel, a failed job, and keys that
//! never reach the output.

use crate::common;
use crate::providers_support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use providers_support::apis::{
    self, Outcome, ADAPTER_BYTES, OPENAI_JOB, TOGETHER_FAILURE, TOGETHER_JOB, TOGETHER_OUTPUT,
};

const TOGETHER_KEY: &str = "tg-cli-secret-7f3a9c";
const OPENAI_KEY: &str = "sk-cli-secret-1b2d4e";
const GOOD: &str = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}"#;
const BAD_ROLES: &str =
    r#"{"messages":[{"role":"user","content":"Hi"},{"role":"user","content":"Hello?"}]}"#;

/// The binary with fake keys, the fake endpoints and a private HOME (the default records dir).
fn bin(home: &Path, together: Option<&str>, openai: Option<&str>) -> Command {
    let mut cmd = common::cli::lora_train_with_home(home);
    cmd.env("TOGETHER_API_KEY", TOGETHER_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env(
            "TOGETHER_BASE_URL",
            together.unwrap_or("http://127.0.0.1:9/v1"),
        )
        .env("OPENAI_BASE_URL", openai.unwrap_or("http://127.0.0.1:9/v1"))
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .timeout(Duration::from_secs(60));
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// stdout and stderr, after checking that neither carries a key.
fn outputs(out: &Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for key in [TOGETHER_KEY, OPENAI_KEY] {
        assert!(
            !stdout.contains(key) && !stderr.contains(key),
            "key printed:\n{stdout}\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    (stdout, stderr)
}

fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    outputs(&out);
    common::cli::succeeded(&out)
}

/// Runs a command expected to fail; returns (stdout, its one `error:` line).
fn fails(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = outputs(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(errors[0]),
        "{stderr}"
    );
    (stdout, errors[0].to_string())
}

fn write_lines(path: &Path, lines: &[&str]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `dir/jobs/<name>.toml` training on `dir/data/train.jsonl`.
fn job_file(dir: &Path, name: &str, hosted: &str, lines: &[&str]) -> PathBuf {
    write_lines(&dir.join("data/train.jsonl"), lines);
    let path = dir.join("jobs").join(format!("{name}.toml"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        format!(
            r#"
[model]
source = "meta-llama/Llama-3.1-8B-Instruct"

[lora]
r = 16
alpha = 32
target_modules = "all-linear"

[data]
train = "../data/train.jsonl"
loss_on = "all_assistant"

[train]
epochs = 2
micro_batch_size = 4
seed = 7

[output]
dir = "../runs/x"

[hosted]
poll_interval_secs = 0.01
timeout_secs = 10
{hosted}
"#
        ),
    )
    .unwrap();
    path
}

fn together_job(dir: &Path) -> PathBuf {
    job_file(
        dir,
        "together",
        "provider = \"together\"\nmodel = \"meta-llama/Meta-Llama-3.1-8B-Instruct-Reference\"\nsuffix = \"bot\"",
        &[GOOD, GOOD],
    )
}

fn openai_job(dir: &Path) -> PathBuf {
    job_file(
        dir,
        "openai",
        "provider = \"openai\"\nmodel = \"gpt-4o-mini-2024-07-18\"\naccept_warnings = true",
        &[GOOD; 10],
    )
}

fn default_records(home: &Path) -> PathBuf {
    home.join(".lora-train").join("hosted")
}

#[test]
fn dry_run_prints_the_body_and_the_checks_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let job = together_job(dir.path());
    let records = dir.path().join("records");
    let stdout = succeeds(
        bin(dir.path(), Some(&api.base_url()), None)
            .args(["hosted", "submit", "--dry-run", "--config"])
            .arg(&job)
            .args(["--set", "hosted.suffix=v2", "--jobs-dir"])
            .arg(&records),
    );
    assert!(
        stdout.contains(&format!("endpoint  {}", api.base_url())),
        "{stdout}"
    );
    for want in [
        "\"model\": \"meta-llama/Meta-Llama-3.1-8B-Instruct-Reference\"",
        "\"n_epochs\": 2",
        "\"batch_size\": 4",
        "\"lora_r\": 16",
        "\"train_on_inputs\": false",
        "\"suffix\": \"v2\"",
        "train.jsonl: ok, 2 examples, format conversation",
        "ready: run again without --dry-run",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    assert!(api.calls().is_empty(), "{:?}", api.calls());
    assert!(!records.exists());

    // A path given with --set is relative to the current directory, not to the job file.
    write_lines(&dir.path().join("other/more.jsonl"), &[GOOD, GOOD, GOOD]);
    let stdout = succeeds(
        bin(dir.path(), Some(&api.base_url()), None)
            .current_dir(dir.path())
            .args(["hosted", "submit", "--dry-run"])
            .arg(&job)
            .args(["--set", "data.train=other/more.jsonl"]),
    );
    let more = dir.path().join("other/more.jsonl");
    assert!(
        stdout.contains(&format!("{}: ok, 3 examples", more.display())),
        "{stdout}"
    );

    // Every failing line is listed, and the dry run fails as the submission would.
    write_lines(&dir.path().join("data/train.jsonl"), &[GOOD, BAD_ROLES]);
    let (stdout, error) = fails(
        bin(dir.path(), Some(&api.base_url()), None)
            .args(["hosted", "submit", "--dry-run"])
            .arg(&job),
    );
    assert!(stdout.contains("1 failing check\n    line 2: "), "{stdout}");
    assert!(error.contains("1 failing dataset checks"), "{error}");
    assert!(api.calls().is_empty());
}

#[test]
fn config_on_a_hosted_job_submits_and_watches_to_completion_then_the_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let job = together_job(dir.path());
    let stdout = succeeds(
        bin(dir.path(), Some(&api.base_url()), None)
            .arg("--config")
            .arg(&job),
    );
    for want in [
        format!("submitted together job {TOGETHER_JOB}"),
        format!("watch it:  lora-train hosted watch {TOGETHER_JOB}\n"),
        "status: queued (queued)".to_string(),
        "status: running (running), step 5/10".to_string(),
        "[training_start] Training started".to_string(),
        "[job_complete] Job finished".to_string(),
        format!("together job {TOGETHER_JOB} succeeded: model {TOGETHER_OUTPUT}"),
        format!("lora-train hosted download {TOGETHER_JOB} --out DIR"),
    ] {
        assert!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    // The registry follows the job: its row, and the provider's model as a version.
    let reg =
        lora_train::registry::Registry::open(&dir.path().join(".lora-train/registry.db")).unwrap();
    let row = reg
        .job_by_remote(lora_train::registry::Backend::Together, TOGETHER_JOB)
        .unwrap()
        .unwrap();
    assert_eq!(row.status, lora_train::registry::JobStatus::Completed);
    assert_eq!(row.name, "x");
    let v = &reg.model_versions("x").unwrap()[0];
    assert_eq!(v.remote_model.as_deref(), Some(TOGETHER_OUTPUT));
    assert_eq!(v.job_id, Some(row.id));
    assert!(v.adapter_path.is_none());
    let sent = api
        .server
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path() == "/v1/fine-tunes")
        .unwrap()
        .json();
    assert_eq!(sent["training_file"], "file-1");
    assert_eq!(sent["suffix"], "bot");
    for r in api.server.requests() {
        if !r.path().starts_with("/presigned/") {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {TOGETHER_KEY}").as_str())
            );
        }
    }

    let records = default_records(dir.path());
    let hosted = |args: &[&str]| {
        let mut cmd = bin(dir.path(), Some(&api.base_url()), None);
        cmd.arg("hosted").args(args).arg("--jobs-dir").arg(&records);
        cmd
    };
    let stdout = succeeds(&mut hosted(&["status", "ft-3f1c"]));
    assert!(
        stdout.contains(&format!("job        {TOGETHER_JOB}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("status     succeeded (completed)"),
        "{stdout}"
    );
    assert!(stdout.contains("steps      10/10"), "{stdout}");
    assert!(
        stdout.contains(&format!("output     {TOGETHER_OUTPUT}")),
        "{stdout}"
    );

    let stdout = succeeds(&mut hosted(&["status", TOGETHER_JOB, "--json"]));
    let record: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["request"]["training_file"], "file-1");

    let stdout = succeeds(&mut hosted(&["list"]));
    let row = stdout.lines().find(|l| l.contains(TOGETHER_JOB)).unwrap();
    assert!(
        row.contains("together") && row.contains("succeeded") && row.contains("10/10"),
        "{row}"
    );
    assert!(row.contains(TOGETHER_OUTPUT), "{row}");

    let stdout = succeeds(&mut hosted(&["list", "--remote", "--provider", "together"]));
    assert!(
        stdout.contains(TOGETHER_JOB) && stdout.contains("completed"),
        "{stdout}"
    );

    let stdout = succeeds(&mut hosted(&["events", TOGETHER_JOB]));
    assert!(stdout.contains("[job_complete] Job finished"), "{stdout}");

    let stdout = succeeds(&mut hosted(&["checkpoints", TOGETHER_JOB]));
    assert!(stdout.lines().count() >= 3, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Intermediate           -           -  {TOGETHER_JOB}:5"
        )),
        "{stdout}"
    );

    let out_dir = dir.path().join("downloads");
    let out_arg = out_dir.to_string_lossy().into_owned();
    let stdout = succeeds(&mut hosted(&[
        "download",
        TOGETHER_JOB,
        "--kind",
        "adapter",
        "--out",
        &out_arg,
    ]));
    let written = stdout.trim().strip_prefix("downloaded ").unwrap();
    assert!(Path::new(written).starts_with(&out_dir), "{stdout}");
    assert_eq!(std::fs::read(written).unwrap(), ADAPTER_BYTES);

    let (_, error) = fails(&mut hosted(&["status", "ft-nope"]));
    assert!(
        error.contains("no local record for job `ft-nope`"),
        "{error}"
    );
}

#[test]
fn submit_returns_then_cancel_and_watch_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::together(Outcome::Succeed);
    let job = together_job(dir.path());
    let records = dir.path().join("records");
    let hosted = |args: &[&str]| {
        let mut cmd = bin(dir.path(), Some(&api.base_url()), None);
        cmd.arg("hosted").args(args).arg("--jobs-dir").arg(&records);
        cmd
    };
    let stdout = succeeds(hosted(&["submit"]).arg(&job));
    assert!(
        stdout.contains(&format!(
            "watch it:  lora-train hosted watch {TOGETHER_JOB} --jobs-dir {}",
            records.display()
        )),
        "{stdout}"
    );
    assert_eq!(
        api.server
            .count("GET", &format!("/v1/fine-tunes/{TOGETHER_JOB}")),
        0
    );

    let stdout = succeeds(&mut hosted(&["cancel", "ft-3f1c"]));
    assert!(
        stdout.contains(&format!(
            "cancel requested for together job {TOGETHER_JOB}: now cancelling (cancel_requested)"
        )),
        "{stdout}"
    );
    assert_eq!(
        api.server
            .count("POST", &format!("/v1/fine-tunes/{TOGETHER_JOB}/cancel")),
        1
    );
    let stdout = succeeds(&mut hosted(&[
        "watch",
        "ft-3f1c",
        "--poll",
        "0.01",
        "--timeout",
        "20",
    ]));
    assert!(
        stdout.contains(&format!("together job {TOGETHER_JOB} was cancelled")),
        "{stdout}"
    );
    let stdout = succeeds(&mut hosted(&["list"]));
    assert!(stdout.contains("cancelled"), "{stdout}");

    let (_, error) = fails(&mut hosted(&["watch", TOGETHER_JOB, "--poll", "0"]));
    assert!(
        error.contains("--poll must be a positive number"),
        "{error}"
    );
}

#[test]
fn a_failed_job_ends_with_its_reason_on_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::openai(Outcome::Fail);
    let job = openai_job(dir.path());
    let (stdout, error) = fails(
        bin(dir.path(), None, Some(&api.base_url()))
            .env("RUST_LOG", "off")
            .arg("--config")
            .arg(&job),
    );
    assert!(
        stdout.contains(&format!("submitted openai job {OPENAI_JOB}")),
        "{stdout}"
    );
    assert!(stdout.contains("status: failed (failed)"), "{stdout}");
    assert_eq!(
        error,
        format!(
            "error: openai job {OPENAI_JOB} failed: The job failed due to an invalid training file. (invalid_training_file)"
        )
    );
    let stdout = succeeds(
        bin(dir.path(), None, Some(&api.base_url()))
            .args(["hosted", "status", OPENAI_JOB, "--jobs-dir"])
            .arg(default_records(dir.path())),
    );
    assert!(stdout.contains("status     failed (failed)"), "{stdout}");
    assert!(stdout.contains("error      The job failed"), "{stdout}");
    let reg =
        lora_train::registry::Registry::open(&dir.path().join(".lora-train/registry.db")).unwrap();
    let row = reg
        .job_by_remote(lora_train::registry::Backend::OpenAi, OPENAI_JOB)
        .unwrap()
        .unwrap();
    assert_eq!(row.status, lora_train::registry::JobStatus::Failed);
    assert!(row.error.unwrap().contains("invalid training file"));
    assert!(reg.models().unwrap().is_empty());

    // Together reports the reason in its last error event.
    let api = apis::together(Outcome::Fail);
    let job = together_job(dir.path());
    let (_, error) = fails(
        bin(dir.path(), Some(&api.base_url()), None)
            .arg("--config")
            .arg(&job),
    );
    assert_eq!(
        error,
        format!("error: together job {TOGETHER_JOB} failed: {TOGETHER_FAILURE}")
    );
}

#[test]
fn refusals_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let api = apis::openai(Outcome::Succeed);

    // A missing key is named, and nothing is sent.
    let job = openai_job(dir.path());
    let (stdout, error) = fails(
        bin(dir.path(), None, Some(&api.base_url()))
            .env_remove("OPENAI_API_KEY")
            .arg("--config")
            .arg(&job),
    );
    assert!(error.contains("OPENAI_API_KEY is not set"), "{error}");
    assert!(stdout.is_empty(), "{stdout}");

    // Settings OpenAI would not honour are listed and must be accepted.
    let out = bin(dir.path(), None, Some(&api.base_url()))
        .env("RUST_LOG", "off")
        .arg("--config")
        .arg(&job)
        .args(["--set", "hosted.accept_warnings=false"])
        .output()
        .unwrap();
    let (_, stderr) = outputs(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("  - "), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: [hosted] openai: ")
            && last.contains("--set hosted.accept_warnings=true"),
        "{stderr}"
    );

    // A dataset OpenAI would refuse (fewer than 10 examples) is never uploaded.
    let job = job_file(
        dir.path(),
        "short",
        "provider = \"openai\"\nmodel = \"gpt-4o-mini-2024-07-18\"\naccept_warnings = true",
        &[GOOD, BAD_ROLES],
    );
    let (_, error) = fails(
        bin(dir.path(), None, Some(&api.base_url()))
            .args(["hosted", "submit"])
            .arg(&job),
    );
    assert!(
        error.contains("train.jsonl: ") && error.contains("failing checks for openai"),
        "{error}"
    );

    // A job file without [hosted] is not a hosted job.
    let local = dir.path().join("local.toml");
    std::fs::write(
        &local,
        "[model]\nsource = \"x/y\"\n[data]\ntrain = \"data/train.jsonl\"\n[output]\ndir = \"o\"\n",
    )
    .unwrap();
    let (_, error) = fails(
        bin(dir.path(), None, Some(&api.base_url()))
            .args(["hosted", "submit", "--dry-run"])
            .arg(&local),
    );
    assert!(error.contains("no [hosted] section"), "{error}");
    assert!(api.calls().is_empty(), "{:?}", api.calls());
}
