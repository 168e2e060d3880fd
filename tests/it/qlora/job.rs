//! Whole QLoRA jobs: they train, export the dense run's adapter layout, name their base, and
//! refuse a run that cannot fit before training.

use super::*;

fn tiny_job(out: &std::path::Path, overrides: &[&str]) -> lora_train::config::JobConfig {
    common::tiny_job("tiny-llama", out, overrides)
}

#[test]
fn qlora_with_checkpointing_trains_and_exports_the_same_adapter_layout() {
    use lora_train::train::{RunOptions, Trainer};
    let stop = || Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dense_dir = tempfile::tempdir().unwrap();
    let quant_dir = tempfile::tempdir().unwrap();
    let mut dense = Trainer::new(tiny_job(dense_dir.path(), &[])).unwrap();
    let d = strict(|| dense.run(&RunOptions::default(), stop()).unwrap());
    let mut quant = Trainer::new(tiny_job(
        quant_dir.path(),
        &["model.quantize=nf4", "train.gradient_checkpointing=true"],
    ))
    .unwrap();
    let q = strict(|| quant.run(&RunOptions::default(), stop()).unwrap());
    let (qf, ql) = (q.first_loss.unwrap(), q.last_loss.unwrap());
    let df = d.first_loss.unwrap();
    assert!(ql < qf, "QLoRA did not learn: {qf} -> {ql}");
    assert!(
        (qf - df).abs() < 0.05 * df,
        "4-bit base starts far from the dense one: {qf} vs {df}"
    );
    let read = |dir: &std::path::Path| {
        let st = candle_core::safetensors::load(
            dir.join("adapter/adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let mut keys: Vec<(String, Vec<usize>)> = st
            .into_iter()
            .map(|(k, v)| (k, v.dims().to_vec()))
            .collect();
        keys.sort();
        let cfg = common::read_json(&dir.join("adapter/adapter_config.json"));
        (
            keys,
            cfg["base_model_name_or_path"].clone(),
            cfg["target_modules"].clone(),
        )
    };
    assert_eq!(read(dense_dir.path()), read(quant_dir.path()));
}

/// `model.name` is what the adapter names as its base, whatever the weights were loaded from.
#[test]
fn model_name_sets_the_exported_base_model_name() {
    use lora_train::train::{RunOptions, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(tiny_job(
        dir.path(),
        &[
            "train.max_steps=1",
            "model.quantize=q8_0",
            "model.name=example-org/tiny-llama",
        ],
    ))
    .unwrap();
    t.run(
        &RunOptions::default(),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .unwrap();
    let cfg = common::read_json(&dir.path().join("adapter/adapter_config.json"));
    assert_eq!(cfg["base_model_name_or_path"], "example-org/tiny-llama");
}

#[test]
fn a_run_that_cannot_fit_fails_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.toml");
    let text = format!(
        "[model]\nsource = \"{}\"\n[data]\ntrain = \"{}\"\n[output]\ndir = \"{}\"\n",
        common::fixtures().join("tiny-llama").display(),
        common::fixtures().join("chats.jsonl").display(),
        tmp.path().join("out").display()
    );
    std::fs::write(&job, text).unwrap();
    let out = common::cli::lora_train()
        .args(["--config", job.to_str().unwrap(), "--no-report"])
        .env("RUST_LOG", "off")
        .env("LORA_TRAIN_MEMORY_LIMIT", "50MiB")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs about"), "{stderr}");
    assert!(stderr.contains("0.0 GiB is available"), "{stderr}");
    assert!(stderr.contains("memory_check = false"), "{stderr}");
    assert!(
        !tmp.path().join("out/checkpoints").exists(),
        "it started training"
    );
}
