//! The memory rules: nothing freed for training is a tensor generation keeps, no gradient
//! lands on a frozen tensor, and the vocabulary-blocked loss equals the full one.

use super::*;

/// Generation with the trainer's adapter attached (its Vars make every activation a graph node,
/// so `autograd::release` acts on them) gives the tokens of the same weights attached as plain
/// tensors: nothing freed for training may be a tensor the KV cache keeps (grouped-query models
/// repeat k and v, and the cache holds the un-repeated ones).
#[test]
fn generation_with_the_training_adapter_matches_its_frozen_copy() {
    use lora_train::generate::{generate, GenerateOptions};
    for name in ["tiny-llama", "tiny-gemma3"] {
        let mut m = tiny(name);
        let params = adapter(&mut m, 0.0);
        let opts = GenerateOptions {
            max_new_tokens: 12,
            ..GenerateOptions::default()
        };
        let prompt = [1u32, 5, 9, 2, 7, 3];
        let tracked = generate(m.model.as_ref(), &prompt, &opts, |_| {}).unwrap();
        let scale = params.spec.scale();
        let by_module: std::collections::HashMap<_, _> = params
            .params
            .iter()
            .map(|p| (p.module.clone(), p))
            .collect();
        for (module, linear) in m.model.linears_mut() {
            let p = by_module[&module];
            linear.set_lora(Some(LoraWeights::frozen(
                p.a.as_tensor().detach(),
                p.b.as_tensor().detach(),
                scale,
            )));
        }
        let plain = generate(m.model.as_ref(), &prompt, &opts, |_| {}).unwrap();
        assert_eq!(tracked, plain, "{name}");
    }
}

#[test]
fn training_backward_leaves_no_gradient_on_frozen_tensors() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        for ckpt in [false, true] {
            let mut m = tiny(name);
            let vocab = m.model.vocab_size() as u32;
            let mut params = adapter(&mut m, 0.0);
            params.set_gradient_checkpointing(m.model.as_mut(), ckpt, false);
            let mut frozen: Vec<Tensor> = m
                .model
                .merged_state_dict()
                .unwrap()
                .into_iter()
                .filter(|(k, _)| !PROJECTIONS.iter().any(|p| k.contains(p)))
                .map(|(_, t)| t)
                .collect();
            for (_, lin) in m.model.linears_mut() {
                if let FrozenWeight::Dense(w) = lin.weight() {
                    frozen.push(w.clone());
                }
            }
            let trainable: HashSet<_> = params.vars().iter().map(|v| v.as_tensor().id()).collect();
            let mb = batch(vocab);
            let store = strict(|| {
                let nll =
                    lora_train::train::loss::micro_batch_nll_sum(m.model.as_ref(), &mb).unwrap();
                nll.backward().unwrap()
            });
            for t in &frozen {
                assert!(
                    store.get(t).is_none(),
                    "{name} (checkpointing {ckpt}): a frozen {:?} tensor got a gradient",
                    t.dims()
                );
            }
            // Nothing else either: no buffer for a constant (rotary tables, masks) or for an
            // activation that leads to nothing trainable. One exception without checkpointing:
            // candle's add stores a gradient for the untracked embedding output that the first
            // layer's residual adds (one [B, T, H] tensor).
            let extra: Vec<_> = store
                .get_ids()
                .filter(|id| !trainable.contains(id))
                .filter_map(|id| store.get_id(*id).map(|t| t.dims().to_vec()))
                .collect();
            let hidden = vec![2, 23, m.model.lm_head().weight.shape().unwrap().1];
            let allowed: Vec<Vec<usize>> = if ckpt { vec![] } else { vec![hidden] };
            assert_eq!(
                extra, allowed,
                "{name} (checkpointing {ckpt}): gradient buffers besides LoRA's"
            );
            if !ckpt {
                // Without checkpointing every LoRA gradient is in the outer store.
                for id in &trainable {
                    assert!(store.get_ids().any(|g| g == id));
                }
            }
        }
    }
}

#[test]
fn blocked_cross_entropy_equals_full_log_softmax() {
    let (n, hidden, vocab) = (6, 16, 1000);
    let w = randn((vocab, hidden), 12);
    let h = randn((n, hidden), 13);
    let targets: Vec<u32> = vec![0, 999, 256, 255, 511, 7];
    for softcap in [None, Some(3.0)] {
        let head = LmHead {
            weight: FrozenWeight::Dense(w.clone()),
            softcap,
        };
        let g = randn((1, n), 14).squeeze(0).unwrap();
        // 300 logits per block: blocks of 256 vocabulary rows (the minimum), four of them.
        let (nll, gh) = input_grad(
            |h| head_nll_blocked(h, &head, &targets, 300).unwrap(),
            &h,
            &g,
        );
        let (nll_ref, gh_ref) = input_grad(
            |h| {
                let mut logits = h.matmul(&w.t().unwrap()).unwrap();
                if let Some(cap) = softcap {
                    logits = ((logits / cap).unwrap().tanh().unwrap() * cap).unwrap();
                }
                let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
                let idx = Tensor::new(targets.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap();
                logp.gather(&idx, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
                    .neg()
                    .unwrap()
            },
            &h,
            &g,
        );
        assert!(
            common::max_abs_diff(&nll, &nll_ref) < 1e-4,
            "nll ({softcap:?})"
        );
        assert!(
            common::max_abs_diff(&gh, &gh_ref) < 1e-4,
            "gradient ({softcap:?})"
        );
    }
    let head = LmHead {
        weight: FrozenWeight::Dense(w),
        softcap: None,
    };
    assert!(head_nll_blocked(&h, &head, &[0, 1, 2, 3, 4, 1000], 300).is_err());
}
