//! Cross-entropy over target tokens only.
//!
//! Candle's `cross_entropy` has no ignore index, so instead of masking a full
//! `[T, vocab]` logits tensor we gather the hidden states that predict a target
//! (position `t - 1` for target `t`) and run the head on those rows alone, in chunks. That
//! is the same loss as transformers' shifted, `-100`-masked cross-entropy, and for Gemma's
//! 262k vocabulary the full `[tokens × vocab]` logits are never built.

use candle_core::{DType, Tensor, D};

use crate::data::TokenizedExample;
use crate::model::CausalLm;
use crate::Result;

/// Rows of hidden states sent through the head at once.
pub const LOSS_CHUNK_ROWS: usize = 1024;

/// Per-target NLLs `[n]` (f32) of `target_ids` given hidden rows `flat[pred_rows]`.
pub fn nll_rows(
    model: &dyn CausalLm,
    flat: &Tensor,
    pred_rows: &[u32],
    target_ids: &[u32],
) -> Result<Tensor> {
    let device = flat.device();
    let mut parts = Vec::new();
    for (rows, ids) in pred_rows
        .chunks(LOSS_CHUNK_ROWS)
        .zip(target_ids.chunks(LOSS_CHUNK_ROWS))
    {
        let idx = Tensor::new(rows, device)?;
        let sel = flat.index_select(&idx, 0)?.unsqueeze(0)?;
        let logits = model.logits(&sel)?.squeeze(0)?.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let tid = Tensor::new(ids, device)?.unsqueeze(1)?;
        parts.push(logp.gather(&tid, 1)?.squeeze(1)?.neg()?);
    }
    match parts.len() {
        0 => Ok(Tensor::zeros(0, DType::F32, device)?),
        1 => Ok(parts.remove(0)),
        _ => Ok(Tensor::cat(&parts, 0)?),
    }
}

/// The rows that predict each target of `example`, and the target ids.
pub fn target_rows(example: &TokenizedExample) -> (Vec<u32>, Vec<u32>) {
    example
        .targets
        .iter()
        .enumerate()
        .filter(|(t, is)| **is && *t > 0)
        .map(|(t, _)| ((t - 1) as u32, example.input_ids[t]))
        .unzip()
}

/// Per-target negative log-likelihoods `[n_targets]` (f32) of one example.
pub fn target_nll(model: &dyn CausalLm, example: &TokenizedExample) -> Result<Tensor> {
    let ids = Tensor::new(example.input_ids.as_slice(), model.device())?.unsqueeze(0)?;
    let hidden = model.forward_hidden(&ids, None)?.squeeze(0)?;
    let (rows, targets) = target_rows(example);
    nll_rows(model, &hidden, &rows, &targets)
}
