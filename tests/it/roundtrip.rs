//! Adapters exported by lora-train, loaded by PEFT, give the loss that our
//! `score --adapter` prints (fixtures from scripts/make_roundtrip_fixtures.sh).
//! SmolLM2 is a GGUF base, so this also proves the exported q/k weights are in HF layout.

use crate::common;

fn check(name: &str, model: String) {
    let dir = common::fixtures().join("roundtrip").join(name);
    let want = common::read_json(&dir.join("peft_score.json"));
    let got = common::cli::json(
        common::cli::lora_train()
            .args(["score", "--model", &model, "--adapter"])
            .arg(dir.join("adapter"))
            .arg("--data")
            .arg(common::fixtures().join("chats.jsonl"))
            .arg("--json"),
    );
    let (g, w) = (
        got["mean_loss"].as_f64().unwrap(),
        want["mean_loss"].as_f64().unwrap(),
    );
    assert_eq!(got["target_tokens"], want["target_tokens"]);
    assert!((g - w).abs() / w < 1e-4, "{name}: ours {g} vs PEFT {w}");
    // The adapter must matter, or this test could not catch a layout error.
    let base = common::cli::json(
        common::cli::lora_train()
            .args(["score", "--model", &model, "--json", "--data"])
            .arg(common::fixtures().join("chats.jsonl")),
    );
    let b = base["mean_loss"].as_f64().unwrap();
    assert!(
        (b - w).abs() / w > 1e-2,
        "{name}: the adapter barely changes the loss ({b} vs {w})"
    );
}

#[test]
fn tiny_gemma3_adapter_round_trips_through_peft() {
    check(
        "tiny-gemma3",
        common::fixtures()
            .join("tiny-gemma3")
            .to_string_lossy()
            .into_owned(),
    );
}

/// A Gemma3ForConditionalGeneration checkpoint: the adapter names the language model's modules
/// (`model.language_model.layers.…`) with a `target_modules` regex that leaves the vision tower
/// alone, and PEFT loads it on the conditional-generation model (every tensor placed).
#[test]
fn tiny_gemma3_conditional_generation_adapter_round_trips_through_peft() {
    let dir = common::fixtures().join("roundtrip/tiny-gemma3-mm/adapter");
    let cfg = common::read_json(&dir.join("adapter_config.json"));
    let targets = cfg["target_modules"].as_str().unwrap();
    assert!(
        targets.starts_with(r"model\.language_model\.layers\."),
        "{targets}"
    );
    check(
        "tiny-gemma3-mm",
        common::fixtures()
            .join("tiny-gemma3-mm")
            .to_string_lossy()
            .into_owned(),
    );
}

/// Qwen2's biased q/k/v (the biases stay in the base), Qwen3's q/k norms, Mistral's window.
#[test]
fn tiny_qwen_and_mistral_adapters_round_trip_through_peft() {
    for name in ["tiny-qwen2", "tiny-qwen3", "tiny-mistral"] {
        check(
            name,
            common::fixtures().join(name).to_string_lossy().into_owned(),
        );
    }
}

/// Gemma 2's soft-capped attention.
#[test]
fn tiny_gemma2_adapter_round_trips_through_peft() {
    check(
        "tiny-gemma2",
        common::fixtures()
            .join("tiny-gemma2")
            .to_string_lossy()
            .into_owned(),
    );
}

#[test]
fn smollm2_gguf_adapter_round_trips_through_peft() {
    check("smollm2", common::real_model(common::SMOLLM2));
}
