//! One optimizer step over a list of micro-batches (gradient accumulation).

use candle_core::Tensor;

use super::loss::micro_batch_nll_sum;
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
    let nll_sum = nll
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
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
    Ok((nll_sum, grads))
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean NLL over every target token of the step.
    pub loss: f64,
    pub target_tokens: usize,
    /// Real (non-pad) tokens processed.
    pub tokens: usize,
    /// Conversations processed (several per row when packed).
    pub conversations: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
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
    let vars = params.vars();
    if let Some(sink) = &params.grad_sink {
        // Left over from a step that failed halfway.
        sink.clear()?;
    }
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss_sum = 0f64;
    let mut tokens = 0;
    for (i, mb) in micro_batches.iter().enumerate() {
        params.set_dropout_seed(if dropout_seed == 0 {
            0
        } else {
            dropout_seed
                .wrapping_mul(1_000_003)
                .wrapping_add(i as u64 + 1)
        });
        let (nll_sum, mb_grads) = micro_batch_grads(model, params, mb, total_targets)?;
        loss_sum += nll_sum;
        tokens += mb.tokens;
        for (slot, g) in grads.iter_mut().zip(mb_grads) {
            if let Some(g) = g {
                accumulate(slot, g)?;
            }
        }
    }
    params.set_dropout_seed(0);
    let loss = loss_sum / total_targets as f64;
    if !loss.is_finite() {
        return Err(Error::NonFinite(format!("loss is {loss}")));
    }
    let grads: Vec<Tensor> = grads
        .into_iter()
        .zip(&vars)
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
    Ok(StepOutcome {
        loss,
        target_tokens: total_targets,
        tokens,
        conversations: micro_batches.iter().map(|m| m.conversations).sum(),
        grad_norm,
        lr,
    })
}
