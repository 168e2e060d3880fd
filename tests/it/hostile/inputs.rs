//! Inputs a model cannot take: sizes beyond what it allows, non-finite numbers, broken model
//! configs, and an `init_adapter` that is not the job's adapter. Each is refused before anything
//! large is allocated, with one error line that names the value, and leaves its files as they were.

use std::path::{Path, PathBuf};

use super::{fails_with, Snapshot};
use crate::common;
use crate::common::cli::lora_train;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A copy of the tiny Llama fixture in `tmp`, its `config.json` changed by `edit`.
fn tiny_copy(tmp: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = tmp.join("tiny");
    copy_dir(&common::fixtures().join("tiny-llama"), &dir);
    let path = dir.join("config.json");
    let mut config = common::read_json(&path);
    edit(&mut config);
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    dir
}

/// Writes NaN into the first element of `tensor` in `model.safetensors` under `dir`.
fn poison(dir: &Path, tensor: &str) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header[tensor]["dtype"], "F32");
    let start = 8 + header_len + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

fn chats() -> PathBuf {
    common::fixtures().join("chats.jsonl")
}

/// A small job file in `tmp` on `model`, writing to `tmp/out`, with extra `[lora]` lines.
fn job_file(tmp: &Path, model: &Path, lora: &str) -> PathBuf {
    let path = tmp.join("job.toml");
    let text = format!(
        r#"[model]
source = "{model}"
device = "cpu"
[lora]
r = 4
alpha = 8
target_modules = "all-linear"
{lora}
[data]
train = "{chats}"
max_seq_len = 128
[train]
max_steps = 1
micro_batch_size = 2
[output]
dir = "{out}"
"#,
        model = model.display(),
        chats = chats().display(),
        out = tmp.join("out").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn generate(model: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = lora_train();
    cmd.args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", "Hi"])
        .args(extra);
    cmd
}

fn score(model: &Path, data: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = lora_train();
    cmd.args(["score", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(extra);
    cmd
}

/// Runs a training job file and expects exit 1 with one `error:` line (training prints its
/// plan to stderr first), no adapter written and the `watched` files unchanged.
fn train_fails(tmp: &Path, job: &Path, watched: &[&Path]) -> String {
    let snap = Snapshot::of(watched);
    let out = lora_train()
        .arg("--config")
        .arg(job)
        .arg("--no-report")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    snap.assert_unchanged(watched);
    assert!(!tmp.join("out").join("adapter").exists(), "{stderr}");
    errors[0].to_string()
}

#[test]
fn a_rank_above_a_projection_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    let job = job_file(tmp.path(), &model, "");
    let watched: [&Path; 2] = [&model, &job];
    let snap = Snapshot::of(&watched);
    let line = fails_with(
        lora_train().arg("--config").arg(&job).args([
            "--set",
            "lora.r=1000000000000",
            "--no-report",
        ]),
        1,
    );
    assert!(
        line.contains("lora.r = 1000000000000 is more than 64") && line.contains("min(in, out)"),
        "{line}"
    );
    snap.assert_unchanged(&watched);
    assert!(!tmp.path().join("out").join("adapter").exists());
}

#[test]
fn new_tokens_beyond_the_context_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    let snap = Snapshot::of(&[&model]);
    let line = fails_with(
        &mut generate(&model, &["--max-new-tokens", "100000000000000"]),
        1,
    );
    assert!(
        line.contains("max_new_tokens = 100000000000000 is more than the model's context of 512"),
        "{line}"
    );
    let line = fails_with(&mut generate(&model, &["--max-new-tokens", "-3"]), 2);
    assert!(line.contains("'-3' for '--max-new-tokens"), "{line}");
    snap.assert_unchanged(&[&model]);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_with_its_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    let prompt = "word ".repeat(2000);
    let line = fails_with(
        lora_train()
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--prompt", &prompt]),
        1,
    );
    assert!(
        line.contains("the prompt (") && line.contains("tokens) is more than the model's context"),
        "{line}"
    );
}

fn conversation(user: &str, assistant: &str) -> String {
    serde_json::json!({"messages": [
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]})
    .to_string()
        + "\n"
}

#[test]
fn a_long_conversation_in_score_is_truncated_and_a_long_reply_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    let short = tmp.path().join("short.jsonl");
    let long = tmp.path().join("long.jsonl");
    let reply = "Paris is the capital of France.";
    std::fs::write(&short, conversation("Capital of France?", reply)).unwrap();
    // About a megabyte of question before the reply: far beyond the 512-token context.
    let question = "Tell me again, what is the capital of France? ".repeat(25_000);
    std::fs::write(&long, conversation(&question, reply)).unwrap();
    let snap = Snapshot::of(&[&model, &long]);
    let scored =
        |data: &Path| common::cli::json(score(&model, data, &["--json"]).env("RUST_LOG", "off"));
    let (short, long_json) = (scored(&short), scored(&long));
    assert_eq!(long_json["examples"], 1);
    // Only the question lost tokens: the reply is scored whole.
    assert_eq!(long_json["target_tokens"], short["target_tokens"]);
    assert!(long_json["mean_loss"].as_f64().unwrap().is_finite());
    snap.assert_unchanged(&[&model, &long]);

    let long_reply = tmp.path().join("long_reply.jsonl");
    let answer = "Paris. ".repeat(25_000);
    std::fs::write(&long_reply, conversation("Capital?", &answer)).unwrap();
    let snap = Snapshot::of(&[&long_reply]);
    let line = fails_with(&mut score(&model, &long_reply, &[]), 1);
    assert!(
        line.contains("long_reply.jsonl:1: the conversation has")
            && line.contains("its last assistant turn does not fit --max-seq-len 512"),
        "{line}"
    );
    let line = fails_with(&mut score(&model, &long, &["--max-seq-len", "100000"]), 1);
    assert!(
        line.contains("--max-seq-len 100000 is more than the model's context of 512"),
        "{line}"
    );
    snap.assert_unchanged(&[&long_reply]);
}

#[test]
fn a_nan_weight_fails_generate_score_and_train_on_the_first_forward_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    poison(&model, "model.norm.weight");
    let snap = Snapshot::of(&[&model]);
    let cause = "the model or adapter holds NaN or infinite weights";
    let line = fails_with(&mut generate(&model, &[]), 1);
    assert!(
        line.contains("logits on the first forward pass") && line.contains(cause),
        "{line}"
    );
    let line = fails_with(&mut score(&model, &chats(), &["--json"]), 1);
    assert!(
        line.contains("loss on the first forward pass") && line.contains(cause),
        "{line}"
    );
    snap.assert_unchanged(&[&model]);
    let job = job_file(tmp.path(), &model, "");
    let line = train_fails(tmp.path(), &job, &[&model, &job]);
    assert!(
        line.contains("at step 1, the first forward pass") && line.contains(cause),
        "{line}"
    );
}

#[test]
fn a_negative_rms_norm_eps_is_refused_with_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |c| c["rms_norm_eps"] = (-1e-6).into());
    let snap = Snapshot::of(&[&model]);
    for cmd in [
        &mut generate(&model, &[]),
        &mut score(&model, &chats(), &[]),
    ] {
        let line = fails_with(cmd, 1);
        assert!(
            line.contains("config.json: `rms_norm_eps` = -0.000001; it must be a positive number"),
            "{line}"
        );
    }
    snap.assert_unchanged(&[&model]);
}

#[test]
fn temperature_and_top_p_refuse_nan_infinity_and_negatives() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    let snap = Snapshot::of(&[&model]);
    let cases = [
        (["--temperature", "nan"], "nan is not a finite number"),
        (["--temperature", "inf"], "inf is not a finite number"),
        (
            ["--temperature", "-0.5"],
            "-0.5 is out of range; expected 0 or more",
        ),
        (
            ["--top-p", "-0.1"],
            "-0.1 is out of range; expected a number in (0, 1]",
        ),
        (["--top-p", "NaN"], "NaN is not a finite number"),
        (["--top-p", "1.5"], "1.5 is out of range"),
    ];
    for (args, want) in cases {
        let line = fails_with(&mut generate(&model, &args), 2);
        assert!(line.contains(want), "{args:?}: {line}");
        assert!(!line.contains("unexpected argument"), "{line}");
    }
    snap.assert_unchanged(&[&model]);
}

#[test]
fn zero_layers_or_heads_and_non_dividing_heads_are_refused() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("num_hidden_layers", 0.into(), "`num_hidden_layers` is 0"),
        (
            "num_attention_heads",
            0.into(),
            "`num_attention_heads` is 0",
        ),
        (
            "num_key_value_heads",
            3.into(),
            "`num_key_value_heads` = 3 does not divide num_attention_heads = 4",
        ),
        ("head_dim", 0.into(), "`head_dim` is 0"),
    ];
    for (field, value, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let model = tiny_copy(tmp.path(), |c| c[field] = value.clone());
        let snap = Snapshot::of(&[&model]);
        let line = fails_with(&mut score(&model, &chats(), &[]), 1);
        assert!(
            line.contains("config.json: ") && line.contains(want),
            "{line}"
        );
        snap.assert_unchanged(&[&model]);
    }
}

#[test]
fn a_vocab_size_the_embedding_disagrees_with_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |c| c["vocab_size"] = 500.into());
    let snap = Snapshot::of(&[&model]);
    let line = fails_with(&mut generate(&model, &[]), 1);
    assert!(
        line.contains(
            "config.json: `vocab_size` = 500 but the embedding (model.embed_tokens.weight) has 400 rows"
        ),
        "{line}"
    );
    snap.assert_unchanged(&[&model]);
}

#[test]
fn an_init_adapter_with_another_rank_is_refused_with_both_values() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_copy(tmp.path(), |_| {});
    let adapter = tmp.path().join("adapter");
    copy_dir(
        &common::fixtures().join("peft-train/tiny-llama/init_adapter"),
        &adapter,
    );
    let job = job_file(
        tmp.path(),
        &model,
        &format!("init_adapter = \"{}\"", adapter.display()),
    );
    // The job file says r = 4, as the adapter does; --set makes them differ.
    let snap = Snapshot::of(&[&model, &adapter, &job]);
    let line = fails_with(
        lora_train()
            .arg("--config")
            .arg(&job)
            .args(["--set", "lora.r=8", "--no-report"]),
        1,
    );
    assert!(
        line.contains("adapter_config.json: r = 4, but the job's lora.r = 8"),
        "{line}"
    );
    snap.assert_unchanged(&[&model, &adapter, &job]);
}

/// An eval prompt longer than a local model's context is refused with its id, line and count,
/// before any report is written.
#[test]
fn an_eval_prompt_beyond_the_context_names_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    let long = "word ".repeat(5000);
    std::fs::write(
        &prompts,
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}]}}\n{{\"id\": \"long\", \"messages\": [{{\"role\": \"user\", \"content\": \"{long}\"}}]}}\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let before = super::Snapshot::of(&[&prompts]);
    let err = super::fails_with(&mut crate::harness_eval::quick_tiny_eval(&prompts, &out), 1);
    assert!(
        err.contains("prompt `long` (data line 2)") && err.contains("tokens"),
        "{err}"
    );
    before.assert_unchanged(&[&prompts]);
    assert!(!out.join("report.json").exists());
}
