//! The two real models (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M, from GGUF) against
//! transformers in fp32 (tests/fixtures/{smollm2,gemma3}/expected.json):
//! chat-template token ids, `score` losses within 1e-3 relative, and 32 greedy tokens.

use crate::common;

use std::sync::OnceLock;

use lora_train::data::dataset::read_jsonl;
use lora_train::data::mask::tokenize_conversation;
use lora_train::data::{LossOn, Message};
use lora_train::eval::score_examples;
use lora_train::generate::{generate, GenerateOptions};
use lora_train::model::{load, LoadOptions, LoadedModel};
use serde_json::Value;

fn model(file: &'static str) -> &'static LoadedModel {
    static SMOL: OnceLock<LoadedModel> = OnceLock::new();
    static GEMMA: OnceLock<LoadedModel> = OnceLock::new();
    let cell = if file == common::SMOLLM2 {
        &SMOL
    } else {
        &GEMMA
    };
    cell.get_or_init(|| load(&common::real_model(file), &LoadOptions::default()).unwrap())
}

fn expected(name: &str) -> Value {
    common::read_json(&common::fixtures().join(name).join("expected.json"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_template_ids(file: &'static str, name: &str) {
    let m = model(file);
    let exp = expected(name);
    let convs = read_jsonl(common::fixtures().join("chats.jsonl")).unwrap();
    let cases = exp["template_ids"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for case in cases {
        let i = case["index"].as_u64().unwrap() as usize;
        let k = case["k"].as_u64().unwrap() as usize;
        let msgs = &convs[i].messages;
        let full = m.template.render(msgs, false).unwrap();
        assert_eq!(
            full,
            case["full_text"].as_str().unwrap(),
            "{name} chat {i}: rendered text"
        );
        assert_eq!(
            m.tokenizer.encode(&full, false).unwrap(),
            ids(&case["full_ids"]),
            "{name} chat {i}: full ids"
        );
        let prompt = m.template.render(&msgs[..k], true).unwrap();
        assert_eq!(
            m.tokenizer.encode(&prompt, false).unwrap(),
            ids(&case["prompt_ids"]),
            "{name} chat {i}: prompt ids"
        );
    }
}

fn check_score(file: &'static str, name: &str) {
    let m = model(file);
    let exp = expected(name);
    let convs = read_jsonl(common::fixtures().join("chats.jsonl")).unwrap();
    for loss_on in [LossOn::LastAssistant, LossOn::AllAssistant, LossOn::All] {
        let want = &exp["score"][loss_on.as_str()];
        let examples: Vec<_> = convs
            .iter()
            .map(|c| tokenize_conversation(c, &m.template, &m.tokenizer, loss_on).unwrap())
            .collect();
        let got = score_examples(m.model.as_ref(), &examples, 8, false).unwrap();
        assert_eq!(
            got.target_tokens as u64,
            want["target_tokens"].as_u64().unwrap(),
            "{name} {loss_on}"
        );
        let w = want["mean_loss"].as_f64().unwrap();
        let rel = (got.mean_loss - w).abs() / w;
        assert!(
            rel < 1e-3,
            "{name} {loss_on}: mean_loss {} vs {w} (rel {rel:.2e})",
            got.mean_loss
        );
        for (g, e) in got
            .per_example
            .iter()
            .zip(want["per_example"].as_array().unwrap())
        {
            let w = e["loss"].as_f64().unwrap();
            let rel = (g.loss - w).abs() / w;
            assert!(
                rel < 1e-3,
                "{name} {loss_on} example {}: {} vs {w}",
                g.index,
                g.loss
            );
        }
    }
}

fn check_greedy(file: &'static str, name: &str) {
    let m = model(file);
    let exp = expected(name);
    let cases = exp["greedy"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for (i, case) in cases.iter().enumerate() {
        let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let prompt = m.template.render(&msgs, true).unwrap();
        let prompt_ids = m.tokenizer.encode(&prompt, false).unwrap();
        assert_eq!(prompt_ids, ids(&case["prompt_ids"]), "{name} prompt {i}");
        let opts = GenerateOptions {
            max_new_tokens: 32,
            ..Default::default()
        };
        let got = generate(m.model.as_ref(), &prompt_ids, &opts, |_| {}).unwrap();
        let want = ids(&case["generated_ids"]);
        assert_eq!(want.len(), 32);
        assert_eq!(got, want, "{name} prompt {i}: greedy tokens differ");
    }
}

#[test]
fn smollm2_template_ids_match_transformers() {
    check_template_ids(common::SMOLLM2, "smollm2");
}

#[test]
fn gemma3_template_ids_match_transformers() {
    check_template_ids(common::GEMMA3, "gemma3");
}

#[test]
fn smollm2_score_matches_transformers() {
    check_score(common::SMOLLM2, "smollm2");
}

#[test]
fn gemma3_score_matches_transformers() {
    check_score(common::GEMMA3, "gemma3");
}

#[test]
fn smollm2_greedy_matches_transformers() {
    check_greedy(common::SMOLLM2, "smollm2");
}

#[test]
fn gemma3_greedy_matches_transformers() {
    check_greedy(common::GEMMA3, "gemma3");
}
