//! The forward pass against transformers (fixtures from scripts/make_fixtures.py):
//! full-sequence logits of the tiny random Llama, Gemma 3, Qwen2, Qwen3 and Mistral models, with
//! padding, and of Gemma 3's text tower inside a conditional-generation checkpoint.

use crate::common;

use candle_core::{DType, Device, Tensor};
use lora_train::model::{load, LoadOptions};

/// The device of the `*_on_the_test_device` tests: `LORA_TRAIN_TEST_DEVICE` (default cpu), so
/// that scripts/gpu-check.sh runs the same comparisons on a GPU.
fn test_device() -> Device {
    let name = std::env::var("LORA_TRAIN_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    lora_train::device::parse_device(&name).unwrap()
}

/// Fixture `name` in f32 on `device`.
fn load_tiny_on(name: &str, device: &Device) -> lora_train::model::LoadedModel {
    let dir = common::fixtures().join(name);
    let opts = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    load(dir.to_str().unwrap(), &opts).unwrap()
}

fn check_tiny_logits(name: &str) {
    check_tiny_logits_on(name, &LoadOptions::default(), 1e-4);
}

/// Logits of fixture `name` loaded with `opts` against transformers' f32 logits: the largest
/// absolute difference over real tokens must stay under `tol` times the largest logit (or `tol`
/// itself for logits under 1).
fn check_tiny_logits_on(name: &str, opts: &LoadOptions, tol: f32) {
    let dir = common::fixtures().join(name);
    let m = load(dir.to_str().unwrap(), opts).unwrap();
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = expected["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_device(&opts.device)
        .unwrap();
    let mask = &expected["attention_mask"];
    let want = &expected["logits"];
    let got = m
        .model
        .forward(&ids, Some(&mask.to_device(&opts.device).unwrap()))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    assert_eq!(got.dims(), want.dims());
    let mask_rows = mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let got = got.to_vec3::<f32>().unwrap();
    let want = want.to_vec3::<f32>().unwrap();
    let mut max_diff = 0f32;
    let mut compared = 0;
    for (b, row) in mask_rows.iter().enumerate() {
        for (t, m) in row.iter().enumerate() {
            if *m == 0 {
                continue;
            }
            compared += 1;
            for (g, w) in got[b][t].iter().zip(&want[b][t]) {
                max_diff = max_diff.max((g - w).abs());
            }
        }
    }
    assert!(
        compared > 16,
        "the fixture should have real tokens in both rows"
    );
    let scale = want
        .iter()
        .flatten()
        .flatten()
        .fold(1f32, |m, w| m.max(w.abs()));
    assert!(
        max_diff < tol * scale,
        "{name} ({:?}, {:?}): max abs logit diff {max_diff} (largest logit {scale})",
        opts.dtype,
        opts.device
    );
}

fn on_the_test_device(name: &str) {
    let device = test_device();
    // cuBLAS may sum in another order than the CPU; a bf16 model (8-bit mantissa in every
    // weight and activation) is compared with the f32 reference: 0.26 of 6.6 on the CPU.
    let f32_tol = if device.is_cpu() { 1e-5 } else { 1e-4 };
    for (dtype, tol) in [(DType::F32, f32_tol), (DType::BF16, 8e-2)] {
        let opts = LoadOptions {
            dtype,
            device: device.clone(),
            ..LoadOptions::default()
        };
        check_tiny_logits_on(name, &opts, tol);
    }
}

#[test]
fn tiny_llama_logits_on_the_test_device() {
    on_the_test_device("tiny-llama");
}

#[test]
fn tiny_gemma3_logits_on_the_test_device() {
    on_the_test_device("tiny-gemma3");
}

#[test]
fn tiny_qwen2_logits_on_the_test_device() {
    on_the_test_device("tiny-qwen2");
}

#[test]
fn tiny_qwen3_logits_on_the_test_device() {
    on_the_test_device("tiny-qwen3");
}

/// Qwen2's frozen q/k/v biases (tied head) and Qwen3's per-head q/k norms (a sliding layer,
/// head_dim 24 ≠ hidden / heads): each moves the fixture's logits by more than 3 (score.json).
#[test]
fn tiny_qwen2_logits_match_transformers() {
    check_tiny_logits("tiny-qwen2");
}

#[test]
fn tiny_qwen3_logits_match_transformers() {
    check_tiny_logits("tiny-qwen3");
}

/// Gemma 2: attention logits soft-capped (5 here), alternating sliding layers, no q/k norms.
#[test]
fn tiny_gemma2_logits_match_transformers() {
    check_tiny_logits("tiny-gemma2");
}

#[test]
fn tiny_gemma2_logits_on_the_test_device() {
    on_the_test_device("tiny-gemma2");
}

/// Mistral's window over every layer (4 tokens here: dropping it moves the logits by 8).
#[test]
fn tiny_mistral_logits_match_transformers() {
    check_tiny_logits("tiny-mistral");
}

#[test]
fn tiny_mistral_logits_on_the_test_device() {
    on_the_test_device("tiny-mistral");
}

#[test]
fn tiny_llama_logits_match_transformers() {
    check_tiny_logits("tiny-llama");
}

#[test]
fn tiny_gemma3_logits_match_transformers() {
    check_tiny_logits("tiny-gemma3");
}

#[test]
fn kv_cache_matches_full_forward() {
    for name in [
        "tiny-llama",
        "tiny-gemma3",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-mistral",
        "tiny-gemma2",
    ] {
        let m = load_tiny_on(name, &Device::Cpu);
        let ids: Vec<u32> = (3..15).collect();
        let full = m
            .model
            .forward(
                &Tensor::new(ids.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                None,
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = m.model.new_cache();
        // A 5-token prefill, then one token at a time (past the tiny Gemma's 4-token window).
        let first = Tensor::new(&ids[..5], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut last = m.model.forward_cached(&first, None, &mut cache).unwrap();
        let mut worst = 0f32;
        for (i, id) in ids.iter().enumerate().skip(5) {
            let want = full.get(i - 1).unwrap();
            let d = (last.squeeze(0).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            worst = worst.max(d.to_scalar::<f32>().unwrap());
            let step = Tensor::new(&[*id], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            last = m.model.forward_cached(&step, None, &mut cache).unwrap();
        }
        assert!(worst < 1e-4, "{name}: cached logits differ by {worst}");
    }
}

/// Scoring in right-padded batches gives every example the loss it has alone (the tiny Gemma's
/// 4-token window and the padding mask both apply), in the input order, on the test device.
#[test]
fn batched_scoring_matches_one_at_a_time_on_the_test_device() {
    use lora_train::data::{dataset::read_jsonl, mask::tokenize_conversation};
    use lora_train::eval::score_examples;
    let device = test_device();
    let tol = if device.is_cpu() { 1e-5 } else { 1e-4 };
    let convs = read_jsonl(common::fixtures().join("chats.jsonl")).unwrap();
    for name in [
        "tiny-llama",
        "tiny-gemma3",
        "tiny-qwen3",
        "tiny-mistral",
        "tiny-gemma2",
    ] {
        let m = load_tiny_on(name, &device);
        let examples: Vec<_> = convs
            .iter()
            .map(|c| tokenize_conversation(c, &m.template, &m.tokenizer, Default::default()))
            .collect::<Result<_, _>>()
            .unwrap();
        let lengths: std::collections::BTreeSet<usize> =
            examples.iter().map(|e| e.input_ids.len()).collect();
        assert!(
            lengths.len() > 2,
            "{name}: the fixture chats must differ in length"
        );
        let alone = score_examples(m.model.as_ref(), &examples, 1, false).unwrap();
        for batch in [3, 8] {
            let got = score_examples(m.model.as_ref(), &examples, batch, false).unwrap();
            assert_eq!(
                got.target_tokens, alone.target_tokens,
                "{name} batch {batch}"
            );
            assert_eq!(got.per_example.len(), examples.len());
            for (i, (g, a)) in got.per_example.iter().zip(&alone.per_example).enumerate() {
                assert_eq!((g.index, g.target_tokens), (i, a.target_tokens));
                let rel = (g.loss - a.loss).abs() / a.loss.abs();
                assert!(
                    rel < tol,
                    "{name} batch {batch} example {i}: {} vs {} alone",
                    g.loss,
                    a.loss
                );
            }
            let rel = (got.mean_loss - alone.mean_loss).abs() / alone.mean_loss;
            assert!(rel < tol, "{name} batch {batch}: mean {rel:.2e}");
        }
        let err = score_examples(m.model.as_ref(), &examples, 0, false).unwrap_err();
        assert!(err.to_string().contains("batch size"), "{err}");
    }
}

/// Generation in left-padded batches gives every prompt the tokens it gets alone, greedy and
/// sampled, with rows stopping at different steps (the tiny Gemma's 4-token window and the
/// padding mask both apply), on the test device.
#[test]
fn batched_generation_matches_one_at_a_time_on_the_test_device() {
    use lora_train::generate::{generate, generate_batch, GenerateOptions};
    let device = test_device();
    let prompts: Vec<Vec<u32>> = [(3, 6), (5, 17), (7, 9), (2, 14), (11, 12)]
        .iter()
        .map(|&(a, b)| (a..b).collect())
        .collect();
    for name in ["tiny-llama", "tiny-gemma3"] {
        let m = load_tiny_on(name, &device);
        let model = m.model.as_ref();
        for temperature in [0.0, 1.0] {
            let mut gen = GenerateOptions {
                max_new_tokens: 12,
                temperature,
                top_p: 0.9,
                seed: 7,
                stop_ids: Vec::new(),
            };
            // A stop token that the first prompt's reply reaches early makes rows end apart.
            let first = generate(model, &prompts[0], &gen, |_| {}).unwrap();
            gen.stop_ids = vec![first[2]];
            let alone: Vec<Vec<u32>> = prompts
                .iter()
                .map(|p| generate(model, p, &gen, |_| {}).unwrap())
                .collect();
            let lengths: std::collections::BTreeSet<usize> = alone.iter().map(Vec::len).collect();
            assert!(
                lengths.len() > 1,
                "{name}: every row ran {lengths:?} tokens"
            );
            let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
            let mut seen = vec![0usize; prompts.len()];
            let batched = generate_batch(model, &refs, &gen, |row, _| seen[row] += 1).unwrap();
            assert_eq!(batched, alone, "{name} at temperature {temperature}");
            assert_eq!(seen, alone.iter().map(Vec::len).collect::<Vec<_>>());
        }
    }
}

/// The tiny Qwen2 and Qwen3 as GGUF files (scripts/make_gguf_fixtures.py: f32 tensors under
/// llama.cpp's names, q/k not permuted, the tokenizer as gpt2 BPE with the `qwen2` split) give
/// the HF folder's logits and token ids. llama.cpp keeps no sliding window for Qwen3, whose HF
/// fixture slides layer 1 over 4 tokens: its rows are 4 tokens long, which no window reaches.
#[test]
fn tiny_qwen_gguf_matches_the_hf_folder() {
    for (name, len) in [("tiny-qwen2", 16u32), ("tiny-qwen3", 4)] {
        let hf = load_tiny_on(name, &Device::Cpu);
        check_gguf_matches(name, &hf, len);
    }
}

/// The tiny Gemma 2 as GGUF (norms stored as `1 + w`, no `lm_head`, both softcaps and the
/// 4-token window under `gemma2.`, a SentencePiece vocabulary) gives the HF folder's logits over
/// 16-token rows, where the window bites, and its token ids. GGUF has no
/// `query_pre_attn_scalar`: llama.cpp takes head_dim (16) below 27B, so the HF side is the
/// fixture with that value (its own is 24).
#[test]
fn tiny_gemma2_gguf_matches_the_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    let hf = load_with_config(dir.path(), "tiny-gemma2", |cfg| {
        cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone();
    });
    check_gguf_matches("tiny-gemma2", &hf, 16);
}

/// The fixture model `name` copied into `dir` with its `config.json` changed by `edit`, loaded.
fn load_with_config(
    dir: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> lora_train::model::LoadedModel {
    let src = common::fixtures().join(name);
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg = common::read_json(&src.join("config.json"));
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// `tests/fixtures/gguf/{name}.gguf` against the HF model `hf`: the same architecture, logits
/// within 1e-5 (relative) over three rows of `len` tokens, and the same token ids for every
/// conversation of `chats.jsonl`.
fn check_gguf_matches(name: &str, hf: &lora_train::model::LoadedModel, len: u32) {
    let path = common::fixtures().join("gguf").join(format!("{name}.gguf"));
    let gg = load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(gg.config.architecture(), hf.config.architecture());
    let rows: Vec<u32> = (0..3)
        .flat_map(|r| (0..len).map(move |i| 3 + 7 * r + 5 * i))
        .collect();
    let ids = Tensor::from_vec(rows, (3, len as usize), &Device::Cpu).unwrap();
    let want = hf.model.forward(&ids, None).unwrap();
    let got = gg.model.forward(&ids, None).unwrap();
    let d = common::max_abs_diff(&got, &want);
    let scale = common::max_abs(&want);
    assert!(
        d < 1e-5 * scale.max(1.0),
        "{name}: GGUF logits differ by {d} (largest {scale})"
    );
    let chats =
        lora_train::data::dataset::read_jsonl(common::fixtures().join("chats.jsonl")).unwrap();
    for (i, conv) in chats.iter().enumerate() {
        let tokenize = |m: &lora_train::model::LoadedModel| {
            lora_train::data::mask::tokenize_conversation(
                conv,
                &m.template,
                &m.tokenizer,
                Default::default(),
            )
            .unwrap()
        };
        assert_eq!(tokenize(&gg), tokenize(hf), "{name} chat {i}");
    }
}

/// A `Gemma3ForConditionalGeneration` checkpoint (tiny-gemma3's text weights beside a tiny
/// vision tower, the text tower stored under `language_model.model.*`) loads as its text model:
/// logits within 1e-4 of transformers' with padding, equal to those of the same weights as a
/// `Gemma3ForCausalLM` (tiny-gemma3 with the fixture's null final softcap), and LoRA targets
/// named as PEFT names them in the conditional-generation model.
#[test]
fn tiny_gemma3_conditional_generation_loads_its_text_tower() {
    check_tiny_logits("tiny-gemma3-mm");
    let dir = tempfile::tempdir().unwrap();
    let causal = load_with_config(dir.path(), "tiny-gemma3", |cfg| {
        cfg["final_logit_softcapping"] = serde_json::Value::Null;
    });
    let mut mm = load_tiny_on("tiny-gemma3-mm", &Device::Cpu);
    let expected = candle_core::safetensors::load(
        common::fixtures().join("tiny-gemma3/expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &expected["attention_mask"];
    let a = causal.model.forward(&ids, Some(mask)).unwrap();
    let b = mm.model.forward(&ids, Some(mask)).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(
        d, 0.0,
        "the text tower's logits differ from Gemma3ForCausalLM's"
    );
    let names: Vec<String> = mm.model.linears_mut().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 4 * 7);
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("model.language_model.layers.")),
        "{names:?}"
    );
}
