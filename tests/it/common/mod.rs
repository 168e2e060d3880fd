//! Shared helpers for integration tests: fixture and model paths.
#![allow(dead_code)]

pub mod cli;
pub mod flash;

use std::path::PathBuf;

/// `tests/fixtures` of the source tree, or of the working directory when the test binary
/// runs on another machine (scripts/gpu-check.sh runs it from the repository root there).
pub fn fixtures() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures")
    }
}

/// A real model fetched by `scripts/fetch-models.sh`; panics with instructions if missing,
/// so a test can never pass silently without its model.
pub fn real_model(file: &str) -> String {
    let dir = std::env::var("LORA_TRAIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let p = dir.join(file);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

pub const SMOLLM2: &str = "smollm2-135m-instruct.Q4_1.gguf";
pub const GEMMA3: &str = "gemma-3-270m.Q4_K_M.gguf";

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The (step, loss) of every line of a run's `metrics.jsonl`: steps and validations, in order.
pub fn logged_losses(out: &std::path::Path) -> Vec<(usize, f64)> {
    use lora_train::train::metrics::MetricsLine;
    lora_train::train::RunLog::new(out)
        .metrics()
        .unwrap()
        .into_iter()
        .map(|l| match l {
            MetricsLine::Step(s) => (s.step, s.loss),
            MetricsLine::Eval(e) => (e.step, e.val_loss),
        })
        .collect()
}

/// Largest absolute elementwise difference of two tensors.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute value of a tensor.
pub fn max_abs(t: &candle_core::Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A small training job on a tiny fixture model (`tiny-llama`, `tiny-gemma3`) over
/// `fixtures/chats.jsonl`, writing to `out`, with `--set`-style `overrides`
/// (`"train.max_steps=1"`): all seven projections at r=4, 8 steps of 2 x 2 examples,
/// a checkpoint every 2 steps, validation on a quarter of the chats every 4.
pub fn tiny_job(
    model: &str,
    out: &std::path::Path,
    overrides: &[&str],
) -> lora_train::config::JobConfig {
    let text = format!(
        r#"
[model]
source = "{model}"
device = "cpu"
[lora]
r = 4
alpha = 8
target_modules = "all-linear"
[data]
train = "{chats}"
validation = 0.25
max_seq_len = 128
[train]
max_steps = 8
micro_batch_size = 2
grad_accum = 2
lr = 1e-2
save_every = 2
eval_every = 4
[output]
dir = "{out}"
"#,
        model = fixtures().join(model).display(),
        chats = fixtures().join("chats.jsonl").display(),
        out = out.display(),
    );
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    lora_train::config::JobConfig::load_str(&text, &out.join("job.toml"), &overrides).unwrap()
}

/// Writes `weights` into `dir` as two safetensors shards with their
/// `model.safetensors.index.json`, as transformers saves a large model; returns the three file
/// names written.
pub fn write_two_shards(
    weights: &std::collections::HashMap<String, candle_core::Tensor>,
    dir: &std::path::Path,
) -> Vec<String> {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    let mut written = Vec::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), weights[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), file.into());
        }
        written.push(file.to_string());
    }
    let index = "model.safetensors.index.json";
    std::fs::write(
        dir.join(index),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    written.push(index.to_string());
    written
}
