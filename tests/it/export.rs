//! `lora-train export`: the adapter copy keeps PEFT names (in the requested dtype), and
//! `--merge` writes an HF folder whose plain forward equals base + adapter.

use crate::common;

use candle_core::{DType, Device, Tensor};
use lora_train::lora::load_peft_adapter;
use lora_train::model::{load, LoadOptions};

fn adapter_dir() -> std::path::PathBuf {
    common::fixtures().join("peft-train/tiny-llama/final_adapter")
}

#[test]
fn export_copies_the_adapter_in_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a");
    common::cli::lora_train()
        .args(["export", "--checkpoint"])
        .arg(adapter_dir())
        .arg("--out")
        .arg(&out)
        .args(["--dtype", "bf16"])
        .assert()
        .success();
    let st = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let a = &st["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(a.dtype(), DType::BF16);
    assert!(out.join("adapter_config.json").is_file());
}

#[test]
fn merged_export_equals_base_plus_adapter() {
    for (model, adapter) in [
        ("tiny-llama", adapter_dir()),
        (
            "tiny-gemma3",
            common::fixtures().join("peft-train/tiny-gemma3/final_adapter"),
        ),
        // Qwen2's frozen q/k/v biases must reach the merged file; Qwen3's q/k norms too.
        (
            "tiny-qwen2",
            common::fixtures().join("peft-train/tiny-qwen2/final_adapter"),
        ),
        (
            "tiny-qwen3",
            common::fixtures().join("peft-train/tiny-qwen3/final_adapter"),
        ),
        (
            "tiny-mistral",
            common::fixtures().join("peft-train/tiny-mistral/final_adapter"),
        ),
        (
            "tiny-gemma2",
            common::fixtures().join("peft-train/tiny-gemma2/final_adapter"),
        ),
        // A conditional-generation checkpoint merges into its text model.
        (
            "tiny-gemma3-mm",
            common::fixtures().join("roundtrip/tiny-gemma3-mm/adapter"),
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("merged");
        let base = common::fixtures().join(model);
        common::cli::lora_train()
            .args(["export", "--merge", "--checkpoint"])
            .arg(&adapter)
            .arg("--out")
            .arg(&out)
            .arg("--model")
            .arg(&base)
            .assert()
            .success();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(f).is_file(), "{model}: {f} missing");
        }
        let ids = Tensor::new(&[[1u32, 5, 9, 33, 70, 2, 100, 7]], &Device::Cpu).unwrap();
        let mut with_adapter = load(base.to_str().unwrap(), &LoadOptions::default()).unwrap();
        load_peft_adapter(
            with_adapter.model.as_mut(),
            &adapter,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let want = with_adapter.model.forward(&ids, None).unwrap();
        let merged = load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let got = merged.model.forward(&ids, None).unwrap();
        let d = common::max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{model}: merged logits differ by {d}");
        let plain = load(base.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let d0 = common::max_abs_diff(&plain.model.forward(&ids, None).unwrap(), &want);
        assert!(d0 > 1e-3, "{model}: the adapter should change the logits");
    }
}
