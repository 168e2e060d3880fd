//! Padding-free packing: a packed micro-batch gives the loss and LoRA gradients of the same
//! conversations unpacked (both architectures, Gemma 3's sliding window inside conversations,
//! plain and checkpointed), no conversation sees another and positions restart, and a packed
//! QLoRA run trains with several conversations per row.

use crate::common;
use crate::qlora::{adapter, strict, tiny, worst_relative_diff};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use lora_train::data::batch::{collate, collate_packed};
use lora_train::data::TokenizedExample;
use lora_train::model::mask::Segments;
use lora_train::train::step::micro_batch_grads;
use lora_train::train::{RunOptions, Trainer};

/// Conversations of different lengths (longer than Gemma 3's window of 4), with targets that
/// start at different turns, as a template's masks do.
fn conversations(vocab: u32) -> Vec<TokenizedExample> {
    [
        (0u32, 23usize, 4usize),
        (5, 17, 9),
        (11, 9, 2),
        (2, 30, 20),
        (7, 6, 1),
    ]
    .iter()
    .map(|&(off, len, first_target)| TokenizedExample {
        input_ids: (0..len as u32).map(|t| (t * 7 + off + 3) % vocab).collect(),
        targets: (0..len).map(|t| t >= first_target).collect(),
    })
    .collect()
}

/// The summed NLL and gradients of `nll / 100` for the conversations unpacked (one padded
/// micro-batch) and packed into two rows, plain and checkpointed.
fn check_packed_equals_unpacked(name: &str) {
    for checkpointing in [false, true] {
        let mut m = tiny(name);
        let vocab = m.model.vocab_size() as u32;
        let mut params = adapter(&mut m, 0.0);
        params.set_gradient_checkpointing(m.model.as_mut(), checkpointing, false);
        let convs = conversations(vocab);
        let refs: Vec<&TokenizedExample> = convs.iter().collect();
        let plain = collate(&refs, 0, &Device::Cpu).unwrap();
        // Rows in another order than the examples, one with padding after its conversations.
        let rows = vec![
            vec![&convs[3], &convs[4], &convs[2]],
            vec![&convs[1], &convs[0]],
        ];
        let packed = collate_packed(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(packed.num_targets(), plain.num_targets());
        assert_eq!(packed.conversations, 5);
        let (want_loss, want) = micro_batch_grads(m.model.as_ref(), &params, &plain, 100).unwrap();
        let (loss, got) = micro_batch_grads(m.model.as_ref(), &params, &packed, 100).unwrap();
        assert!(
            (loss - want_loss).abs() < 1e-5 * want_loss.abs(),
            "{name} (checkpointing {checkpointing}): packed loss {loss} vs unpacked {want_loss}"
        );
        let worst = worst_relative_diff(name, "packing", &want, &got);
        assert!(
            worst < 1e-5,
            "{name} (checkpointing {checkpointing}): packed gradients differ by {worst:e} (relative)"
        );
    }
}

#[test]
fn packed_llama_loss_and_gradients_equal_unpacked_ones() {
    strict(|| check_packed_equals_unpacked("tiny-llama"));
}

#[test]
fn packed_gemma3_loss_and_gradients_equal_unpacked_ones() {
    strict(|| check_packed_equals_unpacked("tiny-gemma3"));
}

/// In a packed row the second conversation's hidden states are those it has alone (so its
/// positions restart at 0), and changing the first conversation's tokens leaves them as they
/// are (it sees nothing of it).
#[test]
fn no_conversation_sees_another_and_positions_restart() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        let m = tiny(name);
        let model = m.model.as_ref();
        let ids = |v: &[u32]| Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let (a, a2, b): (Vec<u32>, Vec<u32>, Vec<u32>) = (
            (0..7).map(|t| t * 5 + 1).collect(),
            (0..7).map(|t| t * 3 + 2).collect(),
            (0..9).map(|t| t * 11 + 4).collect(),
        );
        let alone = model
            .forward_hidden(&ids(&b), None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let starts: Vec<u32> = (0..16).map(|i| if i < 7 { 0 } else { 7 }).collect();
        let segments = Segments::new(vec![starts], 16).unwrap();
        let packed_b = |first: &[u32]| {
            let row: Vec<u32> = first.iter().chain(&b).copied().collect();
            model
                .forward_hidden_packed(&ids(&row), &segments)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .narrow(0, 7, 9)
                .unwrap()
        };
        let with_a = packed_b(&a);
        let d = common::max_abs_diff(&with_a, &alone);
        assert!(
            d < 1e-5,
            "{name}: a packed conversation differs from itself alone by {d}"
        );
        let d = common::max_abs_diff(&with_a, &packed_b(&a2));
        assert!(
            d < 1e-6,
            "{name}: the second conversation sees the first ({d})"
        );
    }
}

/// A QLoRA job with packing and checkpointing trains: rows of several conversations per step,
/// and the loss goes down.
#[test]
fn a_packed_qlora_run_trains_several_conversations_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let job = common::tiny_job(
        "tiny-llama",
        dir.path(),
        &[
            "data.packing=true",
            "model.quantize=nf4",
            "train.gradient_checkpointing=true",
            "train.max_steps=4",
            "data.max_seq_len=400",
        ],
    );
    let mut t = Trainer::new(job).unwrap();
    let rows = t.packed_rows().unwrap().to_vec();
    let placed: usize = rows.iter().map(Vec::len).sum();
    assert_eq!(placed, t.train().len());
    assert!(rows.len() < t.train().len(), "{} rows", rows.len());
    let s = strict(|| {
        t.run(&RunOptions::default(), Arc::new(AtomicBool::new(false)))
            .unwrap()
    });
    assert!(s.last_loss.unwrap() < s.first_loss.unwrap());
    let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    // Validation never packs: the first line is the validation before training.
    assert!(first.get("val_loss").is_some(), "{first}");
    let step: serde_json::Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
    // 2 rows × 2 micro-batches, several conversations each.
    assert!(step["conversations"].as_u64().unwrap() > 4, "{step}");
}
