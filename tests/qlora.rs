//! Issue 4: quantized frozen weights with a backward pass, gradient checkpointing, and
//! the memory rules (no gradients for frozen tensors, vocabulary-blocked loss).

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};
use lora_train::data::batch::{collate, MicroBatch};
use lora_train::data::TokenizedExample;
use lora_train::eval::loss::head_nll_blocked;
use lora_train::lora::{Linear, LoraParams, LoraSpec, LoraWeights, PROJECTIONS};
use lora_train::model::{load, LmHead, LoadOptions, LoadedModel};
use lora_train::quant::{FrozenWeight, QuantWeight, Quantize};
use lora_train::train::step::micro_batch_grads;

fn randn(shape: (usize, usize), seed: u64) -> Tensor {
    // Deterministic pseudo-normal values (sum of uniforms) without depending on candle's RNG.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64) / (1u64 << 31) as f64
    };
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| ((0..4).map(|_| next()).sum::<f64>() - 2.0) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Runs `f` with every matrix product required to be in a layout CUDA's GEMM takes (see
/// `lora_train::gemm`): a training step that passes here needs no hidden copy on a GPU.
fn strict<R>(f: impl FnOnce() -> R) -> R {
    lora_train::gemm::with_strict_gemm(f)
}

/// Gradient of `sum(f(x) * g)` with respect to `x`.
fn input_grad(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, g: &Tensor) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor());
    let store = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        store.get(v.as_tensor()).expect("no input gradient").clone(),
    )
}

#[test]
fn quantized_linear_gradient_equals_dequantize_then_matmul() {
    let w = randn((40, 256), 1);
    let x = randn((5, 256), 2);
    let g = randn((5, 40), 3);
    for format in [Quantize::Nf4, Quantize::Q4_0, Quantize::Q4K, Quantize::Q8_0] {
        // 7 rows per block: the 40 rows span six blocks, the last one short.
        let q = QuantWeight::quantize_in_blocks("w", &w, format, DType::F32, 7).unwrap();
        assert_eq!(q.block_ranges().len(), 6);
        let dense = q.dequantize().unwrap();
        let rel = common::max_abs_diff(&dense, &w) / common::max_abs(&w);
        assert!(rel < 0.2, "{format}: dequantized weight is off by {rel}");
        let frozen = FrozenWeight::Quant(Arc::new(q));
        let (y, gx) = strict(|| input_grad(|x| frozen.matmul_t(x).unwrap(), &x, &g));
        let y_ref = x.matmul(&dense.t().unwrap()).unwrap();
        let gx_ref = g.matmul(&dense).unwrap();
        assert!(common::max_abs_diff(&y, &y_ref) < 1e-4, "{format}: forward");
        assert!(
            common::max_abs_diff(&gx, &gx_ref) < 1e-4,
            "{format}: input gradient"
        );
    }
}

#[test]
fn lora_over_a_quantized_base_trains_like_over_its_dequantized_weight() {
    let w = randn((24, 64), 4);
    let q = QuantWeight::quantize_in_blocks("w", &w, Quantize::Nf4, DType::F32, 10).unwrap();
    let dense = q.dequantize().unwrap();
    let a = Var::from_tensor(&(randn((4, 64), 5) * 0.1).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn((24, 4), 6) * 0.1).unwrap()).unwrap();
    let x = randn((3, 64), 7);
    let g = randn((3, 24), 8);
    let grads = |weight: FrozenWeight| {
        let mut lin = Linear::from_frozen(weight, None);
        lin.set_lora(Some(LoraWeights::frozen(
            a.as_tensor().clone(),
            b.as_tensor().clone(),
            2.0,
        )));
        let xv = Var::from_tensor(&x).unwrap();
        let y = lin.forward(xv.as_tensor()).unwrap();
        let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone())
    };
    let quant = grads(FrozenWeight::Quant(Arc::new(q)));
    let reference = grads(FrozenWeight::Dense(dense));
    for (name, (a, b)) in ["x", "A", "B"].iter().zip(quant.iter().zip(&reference)) {
        let d = common::max_abs_diff(a, b);
        assert!(d < 1e-4, "gradient of {name} differs by {d}");
    }
}

/// With dropout on, the LoRA projection's own backward (which redraws the mask from its key)
/// gives the gradients of autograd through the same mask applied explicitly, and the fused
/// mask op gives those of the unfused one.
#[test]
fn dropout_lora_gradients_equal_autograd_through_its_mask() {
    use lora_train::kernels::dropout;
    use std::sync::atomic::AtomicU64;
    let w = randn((24, 64), 14);
    let a = Var::from_tensor(&(randn((4, 64), 15) * 0.1).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn((24, 4), 16) * 0.1).unwrap()).unwrap();
    let (x, g) = (randn((3, 64), 17), randn((3, 24), 18));
    let (seed, salt, rate, scale) = (99u64, 5u64, 0.3, 2.0);
    let key = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut lin = Linear::new(w.clone(), None);
    lin.set_salt(salt);
    let mut lora = LoraWeights::frozen(a.as_tensor().clone(), b.as_tensor().clone(), scale);
    lora.dropout = rate;
    lora.dropout_seed = Some(Arc::new(AtomicU64::new(seed)));
    lin.set_lora(Some(lora));
    let grads = |fused: bool| {
        let xv = Var::from_tensor(&x).unwrap();
        let run = || lin.forward(xv.as_tensor()).unwrap();
        let y = if fused {
            lora_train::kernels::with_fused_on_cpu(run)
        } else {
            run()
        };
        let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone())
    };
    // The reference: y = x Wᵀ + scale · ((x ∘ mask) Aᵀ) Bᵀ by candle's autograd.
    let mask = dropout::apply_unfused(
        &Tensor::ones((3, 64), DType::F32, &Device::Cpu).unwrap(),
        key,
        1.0 - rate,
        DType::F32,
    )
    .unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let xm = (xv.as_tensor() * &mask).unwrap();
    let lora_out = xm
        .matmul(&a.as_tensor().t().unwrap())
        .unwrap()
        .matmul(&b.as_tensor().t().unwrap())
        .unwrap();
    let y = (x_w(xv.as_tensor(), &w) + (lora_out * scale).unwrap()).unwrap();
    let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let want = [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone());
    let dropped = mask
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .flatten()
        .filter(|v| **v == 0.0)
        .count();
    assert!(dropped > 0, "the mask dropped nothing");
    for fused in [false, true] {
        let got = grads(fused);
        for (name, (a, b)) in ["x", "A", "B"].iter().zip(got.iter().zip(&want)) {
            let d = common::max_abs_diff(a, b);
            assert!(
                d < 1e-5,
                "gradient of {name} (fused {fused}) differs by {d}"
            );
        }
    }
}

/// A projection given a `Recompute` for its input gives the gradients of the one that holds it,
/// with dropout on too, after the input's storage is released (so its backward cannot have read
/// it); and a remake that gives another value changes them (the test can fail).
#[test]
fn a_remade_input_gives_the_held_inputs_gradients() {
    use lora_train::autograd::release;
    use lora_train::lora::Recompute;
    use std::sync::atomic::AtomicU64;
    let w = randn((24, 64), 24);
    let a = Var::from_tensor(&(randn((4, 64), 25) * 0.1).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn((24, 4), 26) * 0.1).unwrap()).unwrap();
    // Rows in two leading dims, as the model passes them.
    let x = randn((6, 64), 27).reshape((2, 3, 64)).unwrap();
    let g = randn((6, 24), 28).reshape((2, 3, 24)).unwrap();
    for rate in [0.0, 0.3] {
        let mut lin = Linear::new(w.clone(), None);
        lin.set_salt(3);
        let mut lora = LoraWeights::frozen(a.as_tensor().clone(), b.as_tensor().clone(), 2.0);
        lora.dropout = rate;
        lora.dropout_seed = Some(Arc::new(AtomicU64::new(41)));
        lin.set_lora(Some(lora));
        // The input is made from x by an op whose backward does not read its result (x·1.5 + 0.25).
        let grads = |remake: Option<f64>| {
            let xv = Var::from_tensor(&x).unwrap();
            let h = xv.as_tensor().affine(1.5, 0.25).unwrap();
            let y = match remake {
                None => lin.forward(&h).unwrap(),
                Some(shift) => {
                    let xd = x.clone();
                    let make: Recompute = Arc::new(move || Ok(xd.affine(1.5, shift)?));
                    let y = lin.forward_recomputed(&h, true, &make).unwrap();
                    release(&h).unwrap();
                    y
                }
            };
            let s = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            [xv.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| s.get(t).unwrap().clone())
        };
        let (held, remade, wrong) = (grads(None), grads(Some(0.25)), grads(Some(0.5)));
        for (name, (h, r)) in ["x", "A", "B"].iter().zip(held.iter().zip(&remade)) {
            assert_eq!(
                common::max_abs_diff(h, r),
                0.0,
                "gradient of {name} (dropout {rate})"
            );
        }
        // Only A's gradient reads the input.
        assert!(common::max_abs_diff(&held[1], &wrong[1]) > 1e-3);
    }
}

fn x_w(x: &Tensor, w: &Tensor) -> Tensor {
    x.matmul(&w.t().unwrap()).unwrap()
}

#[test]
fn frozen_weights_get_no_gradient() {
    let w = randn((6, 8), 9);
    let x = randn((2, 8), 10);
    let frozen = FrozenWeight::Dense(w.clone());
    let xv = Var::from_tensor(&x).unwrap();
    let y = frozen.matmul_t(xv.as_tensor()).unwrap();
    // `sqr`, not a product with a constant: candle would store a gradient for the constant.
    let store = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(store.get(xv.as_tensor()).is_some());
    assert!(
        store.get(&w).is_none(),
        "a frozen weight got a gradient buffer"
    );
    // Candle's own matmul would also store `[out, in]` for the `wᵀ` view.
    assert_eq!(
        store.get_ids().count(),
        1,
        "a gradient buffer besides the input's"
    );
}

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

fn tiny(name: &str) -> LoadedModel {
    let dir = common::fixtures().join(name);
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// Fresh LoRA on every projection with a non-zero B (PEFT's zero B would zero A's gradient).
fn adapter(m: &mut LoadedModel, dropout: f64) -> LoraParams {
    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        dropout,
        use_rslora: false,
        targets: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
    };
    let params = LoraParams::init(m.model.as_mut(), spec, 7, &Device::Cpu).unwrap();
    for (i, p) in params.params.iter().enumerate() {
        let (o, r) = p.b.dims2().unwrap();
        p.b.set(&(randn((o, r), 100 + i as u64) * 0.05).unwrap())
            .unwrap();
    }
    params.attach(m.model.as_mut(), DType::F32).unwrap();
    params
}

fn batch(vocab: u32) -> MicroBatch {
    let examples: Vec<TokenizedExample> = [(0u32, 23usize), (5, 17)]
        .iter()
        .map(|&(off, len)| TokenizedExample {
            input_ids: (0..len as u32).map(|t| (t * 7 + off + 3) % vocab).collect(),
            targets: (0..len).map(|t| t >= 4).collect(),
        })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    collate(&refs, 0, &Device::Cpu).unwrap()
}

/// The largest difference between the parameter gradients `want` and `got`, relative to each
/// parameter's largest `want` gradient; every parameter must have a non-zero gradient in both.
fn worst_relative_diff(
    name: &str,
    what: &str,
    want: &[Option<Tensor>],
    got: &[Option<Tensor>],
) -> f32 {
    assert_eq!(want.len(), got.len());
    let mut worst = 0f32;
    for (i, (a, b)) in want.iter().zip(got).enumerate() {
        let a = a.as_ref().unwrap();
        let b = b
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: parameter {i} got no gradient with {what}"));
        let scale = common::max_abs(a).max(1e-12);
        assert!(scale > 1e-9, "{name}: parameter {i} has a zero gradient");
        worst = worst.max(common::max_abs_diff(a, b) / scale);
    }
    worst
}

/// Both checkpointing modes (attention output kept for the replay, or recomputed) give the
/// plain run's loss and gradients, with and without dropout.
fn check_checkpointing(name: &str) {
    for (dropout, recompute_attention) in [(0.0, false), (0.1, false), (0.0, true), (0.1, true)] {
        let mut m = tiny(name);
        let vocab = m.model.vocab_size() as u32;
        let mut params = adapter(&mut m, dropout);
        let mb = batch(vocab);
        params.set_dropout_seed(if dropout > 0.0 { 99 } else { 0 });
        let (loss_plain, plain) = micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap();
        params.set_gradient_checkpointing(m.model.as_mut(), true, recompute_attention);
        let (loss_ckpt, ckpt) = micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap();
        assert!((loss_plain - loss_ckpt).abs() < 1e-9 * loss_plain.abs().max(1.0));
        let worst = worst_relative_diff(name, "checkpointing", &plain, &ckpt);
        assert!(
            worst < 1e-5,
            "{name} (dropout {dropout}, recompute_attention {recompute_attention}): \
             checkpointed gradients differ by {worst:e} (relative)"
        );
    }
}

#[test]
fn checkpointed_llama_gradients_equal_plain_ones() {
    strict(|| check_checkpointing("tiny-llama"));
}

#[test]
fn checkpointed_gemma3_gradients_equal_plain_ones() {
    strict(|| check_checkpointing("tiny-gemma3"));
}

/// The model's fused paths (RMSNorm, RoPE, GLU and the vocabulary-blocked cross-entropy as
/// one op each, run by their CPU implementations) give the unfused loss and LoRA gradients,
/// plain and checkpointed: on a GPU the same wiring runs the CUDA kernels.
fn check_fused_paths(name: &str) {
    for checkpointing in [false, true] {
        let mut m = tiny(name);
        let vocab = m.model.vocab_size() as u32;
        let mut params = adapter(&mut m, 0.0);
        params.set_gradient_checkpointing(m.model.as_mut(), checkpointing, false);
        let mb = batch(vocab);
        let (loss_ref, want) = micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap();
        let (loss, got) = lora_train::kernels::with_fused_on_cpu(|| {
            micro_batch_grads(m.model.as_ref(), &params, &mb, 10).unwrap()
        });
        assert!(
            (loss - loss_ref).abs() < 1e-5 * loss_ref.abs().max(1.0),
            "{name}: fused loss {loss} vs unfused {loss_ref}"
        );
        let worst = worst_relative_diff(name, "the fused path", &want, &got);
        assert!(
            worst < 1e-4,
            "{name} (checkpointing {checkpointing}): fused gradients differ by {worst:e} (relative)"
        );
    }
}

#[test]
fn fused_llama_paths_give_the_unfused_gradients() {
    strict(|| check_fused_paths("tiny-llama"));
}

#[test]
fn fused_gemma3_paths_give_the_unfused_gradients() {
    strict(|| check_fused_paths("tiny-gemma3"));
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

#[test]
fn gguf_blocks_give_the_dequantized_model() {
    let path = common::real_model(common::SMOLLM2);
    let logits = |quantize| {
        let m = load(
            &path,
            &LoadOptions {
                quantize,
                ..Default::default()
            },
        )
        .unwrap();
        let ids = Tensor::new(&[[1u32, 9690, 28, 1072, 359, 346, 47, 2]], &Device::Cpu).unwrap();
        m.model.forward(&ids, None).unwrap()
    };
    let dense = logits(Quantize::None);
    let blocks = logits(Quantize::Gguf);
    // Same blocks, dequantized once at load or block by block at each product (q/k rows
    // moved to HF order as whole quantized rows): equal up to summation order.
    let d = common::max_abs_diff(&dense, &blocks);
    assert!(
        d < 1e-3,
        "GGUF blocks differ from the dequantized model by {d}"
    );
    for q in [Quantize::Q8_0, Quantize::Q4_0, Quantize::Nf4] {
        let l = logits(q);
        let mean = (&dense - &l)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!(
            "{q}: mean |logit diff| {mean}, max {}",
            common::max_abs_diff(&dense, &l)
        );
        // Re-quantizing a Q4_1 model: 8-bit is nearly lossless, 4-bit grids move logits by a
        // few units on average (measured: q8_0 0.20, q4_0 3.4, nf4 3.7).
        let bound = if q == Quantize::Q8_0 { 0.5 } else { 6.0 };
        assert!(mean > 1e-3 && mean < bound, "{q}: mean logit change {mean}");
    }
    let err = load(
        &path,
        &LoadOptions {
            quantize: Quantize::Q4K,
            ..Default::default()
        },
    )
    .err()
    .expect("576 is not a multiple of 256");
    assert!(err.to_string().contains("multiple of 256"), "{err}");
}

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
    let out = assert_cmd::Command::cargo_bin("lora-train")
        .unwrap()
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
