//! One optimizer step over a list of micro-batches (gradient accumulation).

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::loss::micro_batch_nll_sum;
use super::metrics::PreferenceMetrics;
use super::optimizer::{clip_coefficient, global_norm, AdamW};
use crate::autograd::accumulate;
use crate::data::batch::MicroBatch;
use crate::lora::LoraParams;
use crate::model::CausalLm;
use crate::{Error, Result};

/// The summed target NLL of `mb` and the gradient of `nll / divisor` for each LoRA
/// parameter (in [`LoraParams::vars`] order; `None` where none reached it), including
/// what checkpointed layers left in the parameters' gradient sink.
pub fn micro_batch_grads(
    model: &dyn CausalLm,
    params: &LoraParams,
    mb: &MicroBatch,
    divisor: usize,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    let nll = micro_batch_nll_sum(model, mb)?;
    let store = (&nll / divisor as f64)?.backward()?;
    // Read after the backward pass is queued, so the device does not drain in between; on the
    // host, as Metal has no f64.
    let nll_sum = host_scalar(&nll)?;
    Ok((nll_sum, param_grads(params, &store)?))
}

/// A scalar tensor's value as f64, read on the host (Metal has no f64).
pub fn host_scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_device(&candle_core::Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

/// Each LoRA parameter's gradient (in [`LoraParams::vars`] order; `None` where none reached
/// it) from a backward pass's `store`, plus what checkpointed layers left in the sink.
pub fn param_grads(params: &LoraParams, store: &GradStore) -> Result<Vec<Option<Tensor>>> {
    let mut grads = Vec::new();
    for var in params.vars() {
        let outer = store.get(var.as_tensor()).cloned();
        let inner = match &params.grad_sink {
            Some(sink) => sink.take(var.as_tensor())?,
            None => None,
        };
        let mut sum = None;
        for g in [outer, inner].into_iter().flatten() {
            accumulate(&mut sum, g)?;
        }
        grads.push(sum);
    }
    Ok(grads)
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean NLL over every target token of the step.
    pub loss: f64,
    pub target_tokens: usize,
    /// Real (non-pad) tokens processed.
    pub tokens: usize,
    /// Tokens computed on, padding included: each micro-batch's rows times its length.
    pub padded_tokens: usize,
    /// Conversations processed (several per row when packed).
    pub conversations: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// DPO's rewards and log-probabilities (None for SFT).
    pub preference: Option<PreferenceMetrics>,
}

/// Seeds the LoRA dropout masks of micro-batch `i` of a step whose seed is `dropout_seed`
/// (0: no dropout).
pub fn set_micro_batch_dropout(params: &LoraParams, dropout_seed: u64, i: usize) {
    params.set_dropout_seed(if dropout_seed == 0 {
        0
    } else {
        dropout_seed
            .wrapping_mul(1_000_003)
            .wrapping_add(i as u64 + 1)
    });
}

/// Adds the gradients of micro-batch `mb`'s `nll / divisor` into `grads` (in
/// [`LoraParams::vars`] order) and returns its summed target NLL.
pub fn add_micro_batch_grads(
    model: &dyn CausalLm,
    params: &LoraParams,
    mb: &MicroBatch,
    divisor: usize,
    grads: &mut [Option<Tensor>],
) -> Result<f64> {
    let (nll_sum, mb_grads) = micro_batch_grads(model, params, mb, divisor)?;
    for (slot, g) in grads.iter_mut().zip(mb_grads) {
        if let Some(g) = g {
            accumulate(slot, g)?;
        }
    }
    Ok(nll_sum)
}

/// Forward, backward and update over `micro_batches`, normalising the loss by the total
/// number of target tokens of the whole step. `dropout_seed` (non-zero) seeds the LoRA
/// dropout masks of this step. A non-finite loss or gradient returns an error before any
/// parameter changes.
pub fn train_step(
    model: &dyn CausalLm,
    params: &LoraParams,
    opt: &mut AdamW,
    micro_batches: &[MicroBatch],
    lr: f64,
    max_grad_norm: f64,
    dropout_seed: u64,
) -> Result<StepOutcome> {
    let total_targets: usize = micro_batches.iter().map(|m| m.num_targets()).sum();
    if total_targets == 0 {
        return Err(Error::Msg("a training step has no target tokens".into()));
    }
    if let Some(sink) = &params.grad_sink {
        // Left over from a step that failed halfway.
        sink.clear()?;
    }
    let mut grads: Vec<Option<Tensor>> = vec![None; params.vars().len()];
    let mut loss_sum = 0f64;
    let mut tokens = 0;
    for (i, mb) in micro_batches.iter().enumerate() {
        set_micro_batch_dropout(params, dropout_seed, i);
        loss_sum += add_micro_batch_grads(model, params, mb, total_targets, &mut grads)?;
        tokens += mb.tokens;
    }
    params.set_dropout_seed(0);
    let loss = loss_sum / total_targets as f64;
    let grad_norm = update(params, opt, grads, loss, lr, max_grad_norm)?;
    Ok(StepOutcome {
        loss,
        target_tokens: total_targets,
        tokens,
        padded_tokens: micro_batches.iter().map(MicroBatch::padded_tokens).sum(),
        conversations: micro_batches.iter().map(|m| m.conversations).sum(),
        grad_norm,
        lr,
        preference: None,
    })
}

/// The end of every step: refuses a non-finite `loss` or gradient and a parameter that no
/// gradient reached, then clips and applies AdamW; returns the gradient norm before clipping.
pub fn update(
    params: &LoraParams,
    opt: &mut AdamW,
    grads: Vec<Option<Tensor>>,
    loss: f64,
    lr: f64,
    max_grad_norm: f64,
) -> Result<f64> {
    if !loss.is_finite() {
        return Err(Error::NonFinite(format!("loss is {loss}")));
    }
    let grads: Vec<Tensor> = grads
        .into_iter()
        .zip(params.vars())
        .map(|(g, v)| match g {
            Some(g) => Ok(g),
            None => Err(Error::Msg(format!(
                "no gradient reached a LoRA parameter of shape {:?}: the graph is cut",
                v.dims()
            ))),
        })
        .collect::<Result<_>>()?;
    let grad_norm = global_norm(&grads)?;
    if !grad_norm.is_finite() {
        return Err(Error::NonFinite(format!("gradient norm is {grad_norm}")));
    }
    // The clipping factor goes into the update (one op per parameter when fused).
    opt.step_clipped(&grads, lr, clip_coefficient(grad_norm, max_grad_norm))?;
    Ok(grad_norm)
}
