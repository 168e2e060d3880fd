//! QLoRA's building blocks, one concept per module: quantized frozen weights with a backward
//! pass, LoRA's own backward, gradient checkpointing and the fused paths, the memory rules (no
//! gradients for frozen tensors, vocabulary-blocked loss), and whole QLoRA jobs. The helpers
//! here are shared by them.

use crate::common;

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

pub(super) fn randn(shape: (usize, usize), seed: u64) -> Tensor {
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
pub(super) fn strict<R>(f: impl FnOnce() -> R) -> R {
    lora_train::gemm::with_strict_gemm(f)
}

/// Gradient of `sum(f(x) * g)` with respect to `x`.
pub(super) fn input_grad(
    f: impl Fn(&Tensor) -> Tensor,
    x: &Tensor,
    g: &Tensor,
) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor());
    let store = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        store.get(v.as_tensor()).expect("no input gradient").clone(),
    )
}

mod backward;
mod checkpointing;
mod job;
mod memory;
mod quantized;

pub(super) fn tiny(name: &str) -> LoadedModel {
    let dir = common::fixtures().join(name);
    load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// Fresh LoRA on every projection with a non-zero B (PEFT's zero B would zero A's gradient).
pub(super) fn adapter(m: &mut LoadedModel, dropout: f64) -> LoraParams {
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

pub(super) fn batch(vocab: u32) -> MicroBatch {
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
pub(super) fn worst_relative_diff(
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
