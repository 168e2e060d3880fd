//! The commands' output shapes (other tools read them), and the other ways of loading a
//! model: sharded safetensors, the hub cache, and bf16.

use crate::common;

use candle_core::{DType, Device, Tensor};
use lora_train::model::{load, LoadOptions};

fn tiny() -> String {
    common::fixtures()
        .join("tiny-llama")
        .to_string_lossy()
        .into_owned()
}

fn run_json(args: &[&str]) -> serde_json::Value {
    common::cli::json(common::cli::lora_train().args(args))
}

#[test]
fn generate_json_shape() {
    let v = run_json(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    let ids = v["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 5);
    assert!(v["text"].is_string());
    assert!(v["prompt_tokens"].as_u64().unwrap() > 1);
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0);
    // Greedy is deterministic.
    let again = run_json(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    assert_eq!(v["token_ids"], again["token_ids"]);
}

/// `score` on the fixture chats (every assistant turn) with `extra` arguments.
fn score_args<'a>(data: &'a str, tiny: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["score", "--model", tiny, "--data", data];
    args.extend_from_slice(extra);
    args
}

#[test]
fn score_json_shape() {
    let data = common::fixtures().join("chats.jsonl");
    let (data, tiny) = (data.to_str().unwrap(), tiny());
    let v = run_json(&score_args(
        data,
        &tiny,
        &["--loss-on", "all_assistant", "--json"],
    ));
    let per = v["per_example"].as_array().unwrap();
    assert_eq!(v["examples"].as_u64().unwrap() as usize, per.len());
    let total: u64 = per
        .iter()
        .map(|e| e["target_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(total, v["target_tokens"].as_u64().unwrap());
    let weighted: f64 = per
        .iter()
        .map(|e| e["loss"].as_f64().unwrap() * e["target_tokens"].as_f64().unwrap())
        .sum::<f64>()
        / total as f64;
    assert!(
        (weighted - v["mean_loss"].as_f64().unwrap()).abs() < 1e-9,
        "mean_loss is token-weighted"
    );
    let want = common::read_json(&common::fixtures().join("tiny-llama/score.json"));
    let w = want["all_assistant"]["mean_loss"].as_f64().unwrap();
    assert!((v["mean_loss"].as_f64().unwrap() - w).abs() / w < 1e-4);
    // One example per pass scores the same, example by example.
    let alone = run_json(&score_args(
        data,
        &tiny,
        &["--loss-on", "all_assistant", "--batch-size", "1", "--json"],
    ));
    for (a, b) in per.iter().zip(alone["per_example"].as_array().unwrap()) {
        assert_eq!(a["index"], b["index"]);
        let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((a - b).abs() / b < 1e-5, "{a} vs {b} alone");
    }
    let out = common::cli::lora_train()
        .args(score_args(data, &tiny, &["--batch-size", "0"]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch-size"), "{err}");
}

#[test]
fn inspect_shows_the_mask() {
    let data = common::fixtures().join("chats.jsonl");
    let out = common::cli::lora_train()
        .args([
            "inspect",
            "--model",
            &tiny(),
            "--data",
            data.to_str().unwrap(),
            "--index",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("<|im_start|>assistant"), "{text}");
    assert!(
        text.lines().any(|l| l.contains('>')),
        "no target marker: {text}"
    );
}

#[test]
fn inspect_packing_shows_the_rows() {
    let data = common::fixtures().join("chats.jsonl");
    let run = |seed: &str| {
        let out = common::cli::lora_train()
            .args(["inspect", "--model", &tiny(), "--data"])
            .arg(&data)
            .args(["--packing", "--max-seq-len", "300", "--seed", seed])
            .output()
            .unwrap();
        common::cli::succeeded(&out)
    };
    let text = run("1");
    assert!(text.contains("rows of up to 300 tokens"), "{text}");
    // Every conversation once, the first of a row at 0, each with its targets.
    let placed: Vec<&str> = text.lines().filter(|l| l.starts_with("  line")).collect();
    let lines = std::fs::read_to_string(&data).unwrap().lines().count();
    assert_eq!(placed.len(), lines, "{text}");
    assert!(text.contains("[0.."), "{text}");
    assert!(placed.iter().all(|l| l.contains("targets [")), "{text}");
    assert_eq!(run("1"), text, "the seed fixes the packing");
    // --max-seq-len goes with --packing.
    let out = common::cli::lora_train()
        .args(["inspect", "--model", &tiny(), "--data"])
        .arg(&data)
        .arg("--packing")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-seq-len"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unknown_allocator_switch_is_warned_about_and_the_command_runs() {
    let data = common::fixtures().join("chats.jsonl");
    let out = common::cli::lora_train()
        .env("LORA_TRAIN_MALLOC", "jemalloc")
        .env_remove("RUST_LOG")
        .args(["inspect", "--model", &tiny(), "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("LORA_TRAIN_MALLOC: unknown value `jemalloc`"),
        "{stderr}"
    );
}

fn logits(model: &str, dtype: DType) -> Tensor {
    let m = load(
        model,
        &LoadOptions {
            dtype,
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = Tensor::new(&[[1u32, 40, 41, 42, 43, 44, 45, 2]], &Device::Cpu).unwrap();
    m.model
        .forward(&ids, None)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

#[test]
fn sharded_safetensors_and_hub_cache_load_the_same_model() {
    let want = logits(&tiny(), DType::F32);
    let tmp = tempfile::tempdir().unwrap();
    // Split the weights into two shards with an index, as transformers saves large models.
    let snap = tmp.path().join("models--org--tiny/snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(tmp.path().join("models--org--tiny/refs")).unwrap();
    std::fs::write(tmp.path().join("models--org--tiny/refs/main"), "abc123").unwrap();
    let src = common::fixtures().join("tiny-llama");
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), snap.join(f)).unwrap();
    }
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    common::write_two_shards(&all, &snap);
    let dir = lora_train::model::source::resolve_hub_id("org/tiny", tmp.path()).unwrap();
    assert_eq!(dir, snap);
    let got = logits(dir.to_str().unwrap(), DType::F32);
    assert_eq!(common::max_abs_diff(&got, &want), 0.0);
}

#[test]
fn bf16_and_f16_forward_stay_close_to_f32() {
    let want = logits(&tiny(), DType::F32);
    for dtype in [DType::BF16, DType::F16] {
        let got = logits(&tiny(), dtype);
        let scale = common::max_abs(&want);
        let d = common::max_abs_diff(&got, &want);
        assert!(d / scale < 0.05, "{dtype:?}: max diff {d} (scale {scale})");
    }
}

/// `doctor --json` has its documented shape (docs/doctor.md), asks no network when offline,
/// never shows HF_TOKEN, and reports a library in LORA_TRAIN_CUDA_LIBS that would not load by
/// its path.
#[test]
fn doctor_json_shape() {
    let libs = tempfile::tempdir().unwrap();
    let fake = libs.path().join("libcublas.so.13");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let mut cmd = common::cli::lora_train();
    cmd.args(["doctor", "--json"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_TOKEN", "hf_secret_doctor_token")
        .env("LORA_TRAIN_CUDA_LIBS", libs.path())
        .env_remove("PYTHON");
    let out = cmd.output().unwrap();
    let stdout = common::cli::succeeded(&out);
    assert!(!stdout.contains("hf_secret_doctor_token"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hf_secret_doctor_token"));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["build", "cpu", "memory", "cuda", "metal", "threads", "hf"] {
        assert!(v.get(key).is_some(), "no `{key}` in {v}");
    }
    assert_eq!(v["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["build"]["features"].is_array());
    assert!(v["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    assert_eq!(v["cuda"]["built"], cfg!(feature = "cuda"));
    assert!(v["cuda"]["gpus"].is_array());
    let libraries = v["cuda"]["libraries"].as_array().unwrap();
    let names: Vec<&str> = libraries
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "libcuda.so.1",
            "libcublasLt.so.13",
            "libcublas.so.13",
            "libcurand.so.10",
            "libnvrtc.so.13"
        ]
    );
    let cublas = &libraries[2];
    let fake = fake.display().to_string();
    assert_ne!(cublas["path"].as_str(), Some(fake.as_str()), "{cublas}");
    if cublas["loaded"] == false {
        let error = cublas["error"].as_str().unwrap();
        assert!(error.contains(&fake), "{error}");
    }
    assert_eq!(v["hf"]["offline"], true);
    assert!(v["hf"]["reachable"].is_null());
    assert_eq!(v["hf"]["token_set"], true);
    assert!(v["hf"]["cache"].as_str().is_some());
}

/// A CPU build asked for a CUDA device says so, by name; `auto` runs on the CPU.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_in_a_cpu_build_is_a_clear_error() {
    let e = lora_train::device::parse_device("cuda:0")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("device `cuda:0` is not available: this build has no CUDA"),
        "{e}"
    );
    let d = lora_train::device::parse_device("auto").unwrap();
    assert!(d.is_cpu() || d.is_metal());
}
