//! Cross-entropy over target tokens only. Candle's `cross_entropy` has no ignore index, so instead
//! of masking full `[T, vocab]` logits we gather the hidden states that predict a target (position
//! `t - 1` for target `t`) and run the head on those rows alone: the same loss as transformers'
//! shifted, `-100`-masked cross-entropy. The head runs over blocks of the vocabulary, forward and
//! backward ([`head_nll`]), so `[tokens × vocab]` logits are never built.

use candle_core::{DType, Tensor};

use crate::autograd::{accumulate, with_backward};
use crate::gemm;
use crate::kernels::{self, Kernel};
use crate::model::{CausalLm, LmHead};
use crate::quant::FrozenWeight;
use crate::{Error, Result};

/// f32 logits alive at once (per vocabulary block): 8 Mi (32 MiB).
const BLOCK_LOGITS: usize = 8 << 20;

/// Per-target NLLs `[n]` (f32) of `target_ids` given hidden rows `flat[pred_rows]`.
pub fn nll_rows(
    model: &dyn CausalLm,
    flat: &Tensor,
    pred_rows: &[u32],
    target_ids: &[u32],
) -> Result<Tensor> {
    let device = flat.device();
    if pred_rows.is_empty() {
        return Ok(Tensor::zeros(0, DType::F32, device)?);
    }
    let sel = flat.index_select(&Tensor::new(pred_rows, device)?, 0)?;
    head_nll(&sel, &model.lm_head(), target_ids)
}

/// `-log softmax(head(h))[target]` for each row of `h: [n, H]`, computed over blocks of the
/// vocabulary with an online log-sum-exp, so that only one `[n, block]` slice of logits
/// exists at a time, in the forward pass and (recomputed) in the backward pass, as
/// Liger-Kernel's fused linear cross-entropy does. The head weight gets no gradient.
pub fn head_nll(h: &Tensor, head: &LmHead, target_ids: &[u32]) -> Result<Tensor> {
    head_nll_blocked(h, head, target_ids, BLOCK_LOGITS)
}

/// [`head_nll`] with at most `block_logits` f32 logits per block (at least 256 columns).
pub fn head_nll_blocked(
    h: &Tensor,
    head: &LmHead,
    target_ids: &[u32],
    block_logits: usize,
) -> Result<Tensor> {
    let (n, _) = h.dims2()?;
    if target_ids.len() != n {
        return Err(Error::shape(
            "cross-entropy targets",
            format!("one per hidden row ({n})"),
            format!("{} targets", target_ids.len()),
        ));
    }
    let (vocab, _) = head.weight.shape()?;
    if let Some(bad) = target_ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::shape(
            "cross-entropy targets",
            format!("token ids below the vocabulary size {vocab}"),
            format!("token {bad}"),
        ));
    }
    if kernels::use_fused(Kernel::CrossEntropy, h.device()) {
        head_nll_fused(h, head, target_ids, block_logits)
    } else {
        head_nll_unfused(h, head, target_ids, block_logits)
    }
}

/// [`head_nll_blocked`] with tensor ops (the CPU path and the kernel's reference). The caller
/// checks the targets against the vocabulary.
pub fn head_nll_unfused(
    h: &Tensor,
    head: &LmHead,
    target_ids: &[u32],
    block_logits: usize,
) -> Result<Tensor> {
    let n = h.dim(0)?;
    let hd = h.detach().to_dtype(head.weight.dtype())?;
    let targets = Tensor::new(target_ids, h.device())?.unsqueeze(1)?;
    let mut max: Option<Tensor> = None;
    let mut sum: Option<Tensor> = None;
    let mut target_logit = Tensor::zeros((n, 1), DType::F32, h.device())?;
    for_each_vocab_block(&head.weight, n, block_logits, |start, w| {
        let logits = head_logits(&hd, &w, head.softcap)?;
        let onehot = block_onehot(&targets, start, logits.dim(1)?)?;
        target_logit = (&target_logit + (&logits * &onehot)?.sum_keepdim(1)?)?;
        let m = logits.max_keepdim(1)?;
        let s = logits.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?;
        (max, sum) = match (max.take(), sum.take()) {
            (Some(m0), Some(s0)) => {
                let m1 = m0.maximum(&m)?;
                let s1 = ((s0 * (m0 - &m1)?.exp()?)? + (s * (m - &m1)?.exp()?)?)?;
                (Some(m1), Some(s1))
            }
            _ => (Some(m), Some(s)),
        };
        Ok(())
    })?;
    let (max, sum) = match (max, sum) {
        (Some(m), Some(s)) => (m, s),
        _ => {
            return Err(Error::shape(
                "the output head",
                "at least one row",
                "0 rows",
            ))
        }
    };
    let lse = (max + sum.log()?)?;
    let nll = (&lse - target_logit)?.squeeze(1)?;
    let head = head.clone();
    with_backward("head-cross-entropy", nll, &[h], move |inputs, grad| {
        head_nll_backward(inputs[0], &head, &targets, &lse, grad, block_logits)
            .map(|g| vec![Some(g)])
            .map_err(candle_core::Error::from)
    })
}

/// [`head_nll_blocked`] with the fused per-block kernels of [`crate::kernels::cross_entropy`]:
/// the logits of a block stay in the head's dtype and are read once forward and once backward.
/// The caller checks the targets against the vocabulary.
pub fn head_nll_fused(
    h: &Tensor,
    head: &LmHead,
    target_ids: &[u32],
    block_logits: usize,
) -> Result<Tensor> {
    let n = h.dim(0)?;
    let hd = h.detach().to_dtype(head.weight.dtype())?;
    let targets = Tensor::new(target_ids, h.device())?;
    let mut stats = kernels::cross_entropy::initial_stats(n, h.device())?;
    for_each_vocab_block(&head.weight, n, block_logits, |start, w| {
        let logits = gemm::matmul(&hd, &w.t()?)?;
        stats =
            kernels::cross_entropy::block_stats(&stats, &logits, &targets, start, head.softcap)?;
        Ok(())
    })?;
    let lse = (stats.narrow(1, 0, 1)? + stats.narrow(1, 1, 1)?.log()?)?;
    let nll = (&lse - stats.narrow(1, 2, 1)?)?.squeeze(1)?;
    let head = head.clone();
    with_backward("head-cross-entropy", nll, &[h], move |inputs, grad| {
        let run = || -> Result<Tensor> {
            let hd = inputs[0].detach().to_dtype(head.weight.dtype())?;
            let lse_grad = Tensor::cat(&[&lse, &grad.to_dtype(DType::F32)?.unsqueeze(1)?], 1)?;
            let mut gh: Option<Tensor> = None;
            for_each_vocab_block(&head.weight, n, block_logits, |start, w| {
                let logits = gemm::matmul(&hd, &w.t()?)?;
                let dl = kernels::cross_entropy::block_grad(
                    &logits,
                    &targets,
                    &lse_grad,
                    start,
                    head.softcap,
                )?;
                // Summed over blocks in f32: a 262k vocabulary is many bf16 roundings otherwise.
                accumulate(&mut gh, gemm::matmul(&dl, &w)?.to_dtype(DType::F32)?)?;
                Ok(())
            })?;
            let gh =
                gh.ok_or_else(|| Error::shape("the output head", "at least one row", "0 rows"))?;
            Ok(gh.to_dtype(inputs[0].dtype())?)
        };
        run()
            .map(|g| vec![Some(g)])
            .map_err(candle_core::Error::from)
    })
}

/// `d nll / d h`: `Σ_blocks ((softmax − onehot) · cap') · grad` times the block's weight rows.
fn head_nll_backward(
    h: &Tensor,
    head: &LmHead,
    targets: &Tensor,
    lse: &Tensor,
    grad: &Tensor,
    block_logits: usize,
) -> Result<Tensor> {
    let n = h.dim(0)?;
    let hd = h.detach().to_dtype(head.weight.dtype())?;
    let grad = grad.to_dtype(DType::F32)?.unsqueeze(1)?;
    let mut gh: Option<Tensor> = None;
    for_each_vocab_block(&head.weight, n, block_logits, |start, w| {
        let logits = head_logits(&hd, &w, head.softcap)?;
        let onehot = block_onehot(targets, start, logits.dim(1)?)?;
        let p = logits.broadcast_sub(lse)?.exp()?;
        let mut dl = (p - onehot)?.broadcast_mul(&grad)?;
        if let Some(cap) = head.softcap {
            dl = (dl * (1.0 - (logits / cap)?.sqr()?)?)?;
        }
        let part = gemm::matmul(&dl.to_dtype(w.dtype())?, &w)?;
        accumulate(&mut gh, part)?;
        Ok(())
    })?;
    let gh = gh.ok_or_else(|| Error::shape("the output head", "at least one row", "0 rows"))?;
    Ok(gh.to_dtype(h.dtype())?)
}

/// Calls `f(first_row, rows)` for consecutive blocks of `weight`'s rows, each small
/// enough that `[n, block]` logits stay within [`BLOCK_LOGITS`].
fn for_each_vocab_block(
    weight: &FrozenWeight,
    n: usize,
    block_logits: usize,
    mut f: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let step = (block_logits / n.max(1)).max(256);
    for (i, range) in weight.block_ranges()?.into_iter().enumerate() {
        let block = weight.block(i, range)?;
        for off in (0..range.1).step_by(step) {
            let len = step.min(range.1 - off);
            f(range.0 + off, block.narrow(0, off, len)?)?;
        }
    }
    Ok(())
}

/// `softcap(h wᵀ)` in f32 for one block `w` of the head.
fn head_logits(h: &Tensor, w: &Tensor, softcap: Option<f64>) -> Result<Tensor> {
    let logits = gemm::matmul(h, &w.t()?)?.to_dtype(DType::F32)?;
    Ok(match softcap {
        Some(cap) => ((logits / cap)?.tanh()? * cap)?,
        None => logits,
    })
}

/// `[n, len]` f32: 1 where row `i`'s target is vocabulary entry `start + j`.
fn block_onehot(targets: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let ids = Tensor::arange(start as u32, (start + len) as u32, targets.device())?.unsqueeze(0)?;
    Ok(targets.broadcast_eq(&ids)?.to_dtype(DType::F32)?)
}
