//! Bad input gets a one-line error naming the file and the problem, and never a panic.

use crate::common;

use std::path::Path;

/// Runs the binary, expects failure, and returns its single stderr line.
fn fails(args: &[&str]) -> String {
    let out = common::cli::lora_train()
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn tiny_copy(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("tiny");
    copy_dir(&common::fixtures().join("tiny-llama"), &dir);
    dir
}

fn score_args(model: &Path) -> Vec<String> {
    vec![
        "score".into(),
        "--model".into(),
        model.to_string_lossy().into(),
        "--data".into(),
        common::fixtures()
            .join("chats.jsonl")
            .to_string_lossy()
            .into(),
    ]
}

fn run_score(model: &Path) -> String {
    let args = score_args(model);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn missing_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = run_score(&dir);
    assert!(
        e.contains("tiny") && e.contains("no model.safetensors"),
        "{e}"
    );
}

#[test]
fn corrupt_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    std::fs::write(dir.join("model.safetensors"), b"this is not safetensors").unwrap();
    let e = run_score(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = run_score(&dir);
    assert!(
        e.contains("model-00001-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("LlamaForCausalLM", "PhiForCausalLM"),
    )
    .unwrap();
    let e = run_score(&dir);
    assert!(e.contains("config.json"), "{e}");
    assert!(e.contains("PhiForCausalLM"), "{e}");
    assert!(
        e.contains("LlamaForCausalLM") && e.contains("Gemma3ForCausalLM"),
        "{e}"
    );
}

#[test]
fn vocab_larger_than_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_copy(tmp.path());
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"vocab_size\": 400", "\"vocab_size\": 300"),
    )
    .unwrap();
    let e = run_score(&dir);
    assert!(e.contains("tokenizer has") && e.contains("300"), "{e}");
}

#[test]
fn corrupt_and_truncated_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    let e = run_score(&bad);
    assert!(
        e.contains("bad.gguf") && e.contains("not a valid GGUF"),
        "{e}"
    );

    // The first 2 MB of a real file: a valid header, but tensor data is cut off.
    let real = std::fs::read(common::real_model(common::SMOLLM2)).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &real[..2 << 20]).unwrap();
    let e = run_score(&cut);
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
}

#[test]
fn missing_model_path() {
    let e = run_score(Path::new("./no/such/model.gguf"));
    assert!(
        e.contains("no/such/model.gguf") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn missing_job_file_is_named_once_with_its_reason_once() {
    let e = fails(&["--config", "no/such/job.toml"]);
    assert!(e.contains("no/such/job.toml"), "{e}");
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
}

#[test]
fn bad_dataset_lines_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("tiny-llama");
    let cases = [
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{not json\n", 2, "not valid JSON"),
        ("\n{\"messages\": [{\"role\": \"bot\", \"content\": \"hi\"}]}\n", 2, "role"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", 1, "no assistant turn"),
        // Valid JSON that fails in tokenization: the line still comes from the reader.
        ("\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\", \"weight\": 0}]}\n", 3, "weight 0"),
    ];
    for (i, (text, line, what)) in cases.iter().enumerate() {
        let data = tmp.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&data, text).unwrap();
        let e = fails(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        let want = format!("bad{i}.jsonl:{line}:");
        assert!(e.contains(&want) && e.contains(what), "case {i}: {e}");
    }
}
