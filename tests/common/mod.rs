//! Shared helpers for integration tests: fixture and model paths.
#![allow(dead_code)]

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
