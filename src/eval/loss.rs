//! Cross-entropy over target tokens only.
//!
//! Candle's `cross_entropy` has no ignore index, so instead of masking a full
//! `[T, vocab]` logits tensor we gather the hidden states that predict a target
//! (position `t - 1` for target `t`) and run the head on those rows alone. That is the
//! same loss as transformers' shifted, `-100`-masked cross-entropy, and for Gemma's 262k
//! vocabulary it avoids materializing logits for non-target positions.

use candle_core::{DType, Tensor, D};

use crate::data::TokenizedExample;
use crate::model::CausalLm;
use crate::Result;

/// Per-target negative log-likelihoods `[n_targets]` (f32) of one example.
pub fn target_nll(model: &dyn CausalLm, example: &TokenizedExample) -> Result<Tensor> {
    let ids = Tensor::new(example.input_ids.as_slice(), model.device())?.unsqueeze(0)?;
    let hidden = model.forward_hidden(&ids, None)?;
    nll_from_hidden(model, &hidden.squeeze(0)?, example)
}

/// NLL of the targets of `example` from its final hidden states `[T, H]`.
pub fn nll_from_hidden(
    model: &dyn CausalLm,
    hidden: &Tensor,
    example: &TokenizedExample,
) -> Result<Tensor> {
    let device = hidden.device();
    let (pred_pos, target_ids): (Vec<u32>, Vec<u32>) = example
        .targets
        .iter()
        .enumerate()
        .filter(|(t, is)| **is && *t > 0)
        .map(|(t, _)| ((t - 1) as u32, example.input_ids[t]))
        .unzip();
    let pred_pos = Tensor::new(pred_pos.as_slice(), device)?;
    let target_ids = Tensor::new(target_ids.as_slice(), device)?;
    let rows = hidden.index_select(&pred_pos, 0)?.unsqueeze(0)?;
    let logits = model.logits(&rows)?.squeeze(0)?.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = log_probs.gather(&target_ids.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok(picked.neg()?)
}
