//! Direct Preference Optimization (Rafailov et al. 2023) on a LoRA adapter, as TRL 1.16's
//! `DPOTrainer._compute_loss` computes it (`trl/trainer/dpo_trainer.py`):
//!
//! - a reply's log-probability is the **sum** of its tokens' log-probabilities, the prompt
//!   masked; a pair's chosen and rejected sequences run in one batch ([`collate_pairs`]);
//! - the log-ratios `Δc = log π(c) − log π_ref(c)` and `Δr` against the reference, which runs
//!   through the same projections with the adapter switched ([`LoraParams::as_reference`]);
//! - per pair, with `z = β (Δc − Δr)`: `sigmoid` `−log σ(z)`; `hinge` `max(0, 1 − z)`;
//!   `robust` `((1−ε)(−log σ(z)) + ε log σ(−z)) / (1 − 2ε)`; `ipo` `(Δc/|c| − Δr/|r| − 1/(2β))²`
//!   (log-ratios averaged per reply token); `normalize_by_length` divides `Δc` and `Δr` by
//!   their reply lengths in the sigmoid loss (TRL's `sigmoid_norm`);
//! - a micro-batch's loss is the mean over its pairs, plus `sft_weight` times the mean NLL of
//!   its chosen reply tokens (TRL's `"sft"` loss term, RPO); a step's micro-batches each count
//!   `1 / grad_accum`, as transformers' `Trainer` divides a loss that has no item count.
//!
//! The pair losses and their derivatives in the two log-probabilities are computed on the host
//! in f64 ([`pair_loss`]); backward then runs once from `Σ ∂L/∂logp · logp`, whose gradient in
//! the adapter is the loss's.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};

use super::metrics::PreferenceMetrics;
use super::optimizer::AdamW;
use super::step::{host_scalar, param_grads, update, StepOutcome};
use crate::autograd::accumulate;
use crate::config::job::{DpoLoss, DpoSection};
use crate::data::batch::{collate_pairs, PairBatch};
use crate::data::TokenizedPair;
use crate::eval::loss::nll_rows;
use crate::lora::LoraParams;
use crate::model::CausalLm;
use crate::{Error, Result};

/// The loss DPO minimizes, from the job's `[dpo]` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoObjective {
    pub beta: f64,
    pub loss: DpoLoss,
    pub label_smoothing: f64,
    pub sft_weight: f64,
    pub normalize_by_length: bool,
}

impl From<&DpoSection> for DpoObjective {
    fn from(s: &DpoSection) -> Self {
        DpoObjective {
            beta: s.beta,
            loss: s.loss,
            label_smoothing: s.label_smoothing,
            sft_weight: s.sft_weight,
            normalize_by_length: s.normalize_by_length,
        }
    }
}

/// A pair's summed reply log-probabilities, `(chosen, rejected)`.
pub type PairLogps = (f64, f64);

/// The policy's summed reply log-probability of each sequence of `pb`, `[2·pairs]` (f32,
/// chosen first, carrying the graph), and the NLL of each target token `[targets]`.
pub fn reply_logps(model: &dyn CausalLm, pb: &PairBatch) -> Result<(Tensor, Tensor)> {
    let mb = &pb.batch;
    let hidden = model.forward_hidden(&mb.input_ids, mb.attention_mask.as_ref())?;
    let (b, t, h) = hidden.dims3()?;
    let nll = nll_rows(
        model,
        &hidden.reshape((b * t, h))?,
        &mb.pred_rows,
        &mb.target_ids,
    )?;
    let n = nll.dim(0)?;
    let sequences = pb.reply_tokens.len();
    // Row s selects sequence s's targets: the sums are one product, and so is their backward.
    let mut select = vec![0f32; sequences * n];
    let mut start = 0;
    for (s, &len) in pb.reply_tokens.iter().enumerate() {
        select[s * n + start..s * n + start + len].fill(1.0);
        start += len;
    }
    if start != n {
        return Err(Error::shape(
            "DPO reply tokens",
            format!("{n} targets in the batch"),
            format!("{start} over its sequences"),
        ));
    }
    let select = Tensor::from_vec(select, (sequences, n), nll.device())?;
    let logps = select.matmul(&nll.unsqueeze(1)?)?.squeeze(1)?.neg()?;
    Ok((logps, nll))
}

/// The `[2·pairs]` values of `logps` as `(chosen, rejected)` per pair, on the host.
fn pair_values(logps: &Tensor, pairs: usize) -> Result<Vec<PairLogps>> {
    let v: Vec<f64> = logps
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    Ok((0..pairs).map(|i| (v[i], v[pairs + i])).collect())
}

/// The reference's summed reply log-probabilities of `pb`'s pairs: the same forward with the
/// adapter switched to the reference (no graph, no dropout).
pub fn reference_logps(
    model: &dyn CausalLm,
    params: &LoraParams,
    pb: &PairBatch,
) -> Result<Vec<PairLogps>> {
    let logps = params.as_reference(|| reply_logps(model, pb))?.0;
    pair_values(&logps, pb.pairs)
}

/// The preference loss of a micro-batch (the mean over its pairs) and its derivative in each
/// sequence's log-probability (chosen first, then rejected), with the batch's measures.
#[derive(Debug, Clone, PartialEq)]
pub struct PairLoss {
    pub loss: f64,
    /// `∂loss/∂logp` of each sequence, `[2·pairs]`.
    pub grad: Vec<f64>,
    pub metrics: PreferenceMetrics,
}

/// `log(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// TRL's per-pair losses on `policy` and `reference` log-probabilities, `lengths` the reply
/// tokens `(chosen, rejected)` of each pair (for `ipo` and `normalize_by_length`).
pub fn pair_loss(
    obj: &DpoObjective,
    policy: &[PairLogps],
    reference: &[PairLogps],
    lengths: &[(usize, usize)],
) -> PairLoss {
    let pairs = policy.len();
    let (beta, eps) = (obj.beta, obj.label_smoothing);
    let mut loss = 0.0;
    let mut grad = vec![0.0; 2 * pairs];
    let mut m = PreferenceMetrics::default();
    for i in 0..pairs {
        let ((pc, pr), (rc, rr)) = (policy[i], reference[i]);
        let (dc, dr) = (pc - rc, pr - rr);
        let (lc, lr) = (lengths[i].0.max(1) as f64, lengths[i].1.max(1) as f64);
        // The loss and its derivatives in the chosen and rejected log-probabilities.
        let (l, gc, gr) = match obj.loss {
            DpoLoss::Ipo => {
                let d = dc / lc - dr / lr - 1.0 / (2.0 * beta);
                (d * d, 2.0 * d / lc, -2.0 * d / lr)
            }
            kind => {
                let (sc, sr) = match obj.normalize_by_length {
                    true => (dc / lc, dr / lr),
                    false => (dc, dr),
                };
                let z = beta * (sc - sr);
                let (l, dl_dz) = match kind {
                    DpoLoss::Hinge if z < 1.0 => (1.0 - z, -1.0),
                    DpoLoss::Hinge => (0.0, 0.0),
                    DpoLoss::Robust => (
                        ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps),
                        (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps),
                    ),
                    _ => (softplus(-z), -sigmoid(-z)),
                };
                let (nc, nr) = match obj.normalize_by_length {
                    true => (lc, lr),
                    false => (1.0, 1.0),
                };
                (l, dl_dz * beta / nc, -dl_dz * beta / nr)
            }
        };
        loss += l;
        grad[i] = gc / pairs as f64;
        grad[pairs + i] = gr / pairs as f64;
        let (chosen, rejected) = (beta * dc, beta * dr);
        let pair = PreferenceMetrics {
            rewards_chosen: chosen,
            rewards_rejected: rejected,
            rewards_accuracies: if chosen > rejected { 1.0 } else { 0.0 },
            rewards_margins: chosen - rejected,
            logps_chosen: pc,
            logps_rejected: pr,
        };
        m.add_scaled(&pair, 1.0 / pairs as f64);
    }
    PairLoss {
        loss: loss / pairs.max(1) as f64,
        grad,
        metrics: m,
    }
}

fn pair_lengths(pb: &PairBatch) -> Vec<(usize, usize)> {
    (0..pb.pairs)
        .map(|i| (pb.reply_tokens[i], pb.reply_tokens[pb.pairs + i]))
        .collect()
}

/// What one micro-batch of pairs gave: its loss (with the SFT term), its measures, and each
/// LoRA parameter's gradient of `loss / divisor`.
pub struct PairGrads {
    pub loss: f64,
    pub metrics: PreferenceMetrics,
    pub grads: Vec<Option<Tensor>>,
}

/// Forward (reference, unless `reference` gives its log-probabilities, then policy) and
/// backward of one micro-batch of pairs.
pub fn pair_micro_batch_grads(
    model: &dyn CausalLm,
    params: &LoraParams,
    obj: &DpoObjective,
    pb: &PairBatch,
    reference: Option<&[PairLogps]>,
    divisor: usize,
) -> Result<PairGrads> {
    let reference = match reference {
        Some(r) => r.to_vec(),
        None => reference_logps(model, params, pb)?,
    };
    let (logps, nll) = reply_logps(model, pb)?;
    let terms = pair_loss(
        obj,
        &pair_values(&logps, pb.pairs)?,
        &reference,
        &pair_lengths(pb),
    );
    let seed: Vec<f32> = terms
        .grad
        .iter()
        .map(|g| (g / divisor as f64) as f32)
        .collect();
    let seed = Tensor::from_vec(seed, logps.dims(), logps.device())?;
    let mut objective = (&logps * seed)?.sum_all()?;
    let mut loss = terms.loss;
    if obj.sft_weight > 0.0 {
        let chosen = pb.chosen_targets();
        let chosen_nll = nll.narrow(0, 0, chosen)?.sum_all()?;
        let weight = obj.sft_weight / (chosen.max(1) * divisor) as f64;
        objective = (objective + (&chosen_nll * weight)?)?;
        loss += obj.sft_weight * host_scalar(&chosen_nll)? / chosen.max(1) as f64;
    }
    let store = objective.backward()?;
    Ok(PairGrads {
        loss,
        metrics: terms.metrics,
        grads: param_grads(params, &store)?,
    })
}

/// One DPO optimizer step over `batches` (dropout off, as TRL's `disable_dropout`): each
/// micro-batch's loss counts `1 / batches.len()`; `reference[i]`, when given, holds the
/// precomputed reference log-probabilities of batch `i`'s pairs. A non-finite loss or gradient
/// returns an error before any parameter changes.
#[allow(clippy::too_many_arguments)]
pub fn dpo_step(
    model: &dyn CausalLm,
    params: &LoraParams,
    opt: &mut AdamW,
    obj: &DpoObjective,
    batches: &[PairBatch],
    reference: Option<&[Vec<PairLogps>]>,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepOutcome> {
    if batches.is_empty() {
        return Err(Error::Msg("a DPO step has no pairs".into()));
    }
    if let Some(sink) = &params.grad_sink {
        sink.clear()?;
    }
    params.set_dropout_seed(0);
    let share = 1.0 / batches.len() as f64;
    let mut grads: Vec<Option<Tensor>> = vec![None; params.vars().len()];
    let (mut loss, mut metrics) = (0.0, PreferenceMetrics::default());
    for (i, pb) in batches.iter().enumerate() {
        let refs = reference.map(|r| r[i].as_slice());
        let out = pair_micro_batch_grads(model, params, obj, pb, refs, batches.len())?;
        loss += out.loss * share;
        metrics.add_scaled(&out.metrics, share);
        for (slot, g) in grads.iter_mut().zip(out.grads) {
            if let Some(g) = g {
                accumulate(slot, g)?;
            }
        }
    }
    let grad_norm = update(params, opt, grads, loss, lr, max_grad_norm)?;
    Ok(StepOutcome {
        loss,
        target_tokens: batches.iter().map(|b| b.batch.num_targets()).sum(),
        tokens: batches.iter().map(|b| b.batch.tokens).sum(),
        padded_tokens: batches.iter().map(|b| b.batch.padded_tokens()).sum(),
        conversations: batches.iter().map(|b| b.pairs).sum(),
        grad_norm,
        lr,
        preference: Some(metrics),
    })
}

/// The reference log-probabilities of every pair, in batches of `batch` pairs; gives up with
/// [`Error::Interrupted`] once `stop` is set.
pub fn all_reference_logps(
    model: &dyn CausalLm,
    params: &LoraParams,
    pairs: &[TokenizedPair],
    batch: usize,
    pad_id: u32,
    stop: &AtomicBool,
) -> Result<Vec<PairLogps>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Interrupted("the reference log-probabilities".into()));
        }
        let refs: Vec<&TokenizedPair> = chunk.iter().collect();
        let pb = collate_pairs(&refs, pad_id, model.device())?;
        out.extend(reference_logps(model, params, &pb)?);
    }
    Ok(out)
}

/// DPO on held-out pairs: the loss and measures, each a mean over the pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairScore {
    pub loss: f64,
    pub pairs: usize,
    /// Reply tokens scored.
    pub reply_tokens: usize,
    pub metrics: PreferenceMetrics,
}

/// Scores `pairs` in batches of `batch` (the reference from `reference` when given, else
/// through the switch); gives up with [`Error::Interrupted`] once `stop` is set.
#[allow(clippy::too_many_arguments)]
pub fn score_pairs_until(
    model: &dyn CausalLm,
    params: &LoraParams,
    obj: &DpoObjective,
    pairs: &[TokenizedPair],
    reference: Option<&[PairLogps]>,
    batch: usize,
    pad_id: u32,
    stop: &AtomicBool,
) -> Result<PairScore> {
    params.set_dropout_seed(0);
    let batch = batch.max(1);
    let (mut loss, mut metrics, mut reply_tokens) = (0.0, PreferenceMetrics::default(), 0);
    for (k, chunk) in pairs.chunks(batch).enumerate() {
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Interrupted("the validation".into()));
        }
        let refs: Vec<&TokenizedPair> = chunk.iter().collect();
        let pb = collate_pairs(&refs, pad_id, model.device())?;
        let reference = match reference {
            Some(r) => r[k * batch..k * batch + chunk.len()].to_vec(),
            None => reference_logps(model, params, &pb)?,
        };
        let (logps, nll) = reply_logps(model, &pb)?;
        let (logps, nll) = (logps.detach(), nll.detach());
        let terms = pair_loss(
            obj,
            &pair_values(&logps, pb.pairs)?,
            &reference,
            &pair_lengths(&pb),
        );
        let mut batch_loss = terms.loss;
        if obj.sft_weight > 0.0 {
            let chosen = pb.chosen_targets();
            let chosen_nll = host_scalar(&nll.narrow(0, 0, chosen)?.sum_all()?)?;
            batch_loss += obj.sft_weight * chosen_nll / chosen.max(1) as f64;
        }
        let weight = chunk.len() as f64 / pairs.len() as f64;
        loss += batch_loss * weight;
        metrics.add_scaled(&terms.metrics, weight);
        reply_tokens += pb.batch.num_targets();
    }
    Ok(PairScore {
        loss,
        pairs: pairs.len(),
        reply_tokens,
        metrics,
    })
}

/// Watches a DPO run for its most common confusion: the chosen replies becoming *less* likely
/// than under the reference while the margins grow (both replies pushed down, the rejected one
/// faster). It reads the log-ratio of the chosen replies (`rewards/chosen / β`), which compares
/// each pair with itself, so batches of longer or shorter replies do not trip it, averaged over
/// the last [`ChosenWatch::WINDOW`] steps; it speaks once.
#[derive(Debug, Default)]
pub struct ChosenWatch {
    recent: std::collections::VecDeque<PreferenceMetrics>,
    warned: bool,
}

impl ChosenWatch {
    pub const WINDOW: usize = 10;
    /// How far (nats per reply, on average) the chosen replies must have fallen.
    pub const FALL: f64 = 1.0;

    /// Takes a step's metrics; returns the warning to give, once.
    pub fn observe(&mut self, m: &PreferenceMetrics, obj: &DpoObjective) -> Option<String> {
        if self.warned {
            return None;
        }
        self.recent.push_back(*m);
        if self.recent.len() > Self::WINDOW {
            self.recent.pop_front();
        }
        if self.recent.len() < Self::WINDOW {
            return None;
        }
        let n = self.recent.len() as f64;
        let chosen = self.recent.iter().map(|m| m.rewards_chosen).sum::<f64>() / (n * obj.beta);
        let margin = self.recent.iter().map(|m| m.rewards_margins).sum::<f64>() / n;
        if chosen > -Self::FALL || margin <= 0.0 {
            return None;
        }
        self.warned = true;
        let advice = match obj.sft_weight > 0.0 {
            true => format!("raise dpo.sft_weight (now {})", obj.sft_weight),
            false => "add an SFT term with dpo.sft_weight (RPO, e.g. 1.0)".to_string(),
        };
        Some(format!(
            "logps/chosen is {:.2} nats below the reference's on average over the last {} steps \
             while rewards/margins is {margin:.3}: DPO lowers the chosen replies too, only less \
             than the rejected ones; to keep the chosen replies likely, {advice}",
            -chosen,
            Self::WINDOW
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective(loss: DpoLoss) -> DpoObjective {
        DpoObjective {
            beta: 0.1,
            loss,
            label_smoothing: if loss == DpoLoss::Robust { 0.1 } else { 0.0 },
            sft_weight: 0.0,
            normalize_by_length: false,
        }
    }

    /// The derivatives `pair_loss` gives match central differences of its loss.
    #[test]
    fn pair_loss_derivatives_match_finite_differences() {
        let policy = [(-12.0, -15.5), (-30.25, -28.0)];
        let reference = [(-13.0, -14.0), (-29.0, -29.5)];
        let lengths = [(4, 7), (11, 9)];
        let cases = [
            (objective(DpoLoss::Sigmoid), false),
            (objective(DpoLoss::Sigmoid), true),
            (objective(DpoLoss::Ipo), false),
            (objective(DpoLoss::Hinge), false),
            (objective(DpoLoss::Robust), false),
        ];
        for (mut obj, norm) in cases {
            obj.normalize_by_length = norm;
            let at = pair_loss(&obj, &policy, &reference, &lengths);
            for k in 0..4 {
                let h = 1e-5;
                let shifted = |d: f64| {
                    let mut p = policy;
                    match k {
                        0 | 1 => p[k].0 += d,
                        _ => p[k - 2].1 += d,
                    }
                    pair_loss(&obj, &p, &reference, &lengths).loss
                };
                let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
                let analytic = at.grad[k];
                assert!(
                    (numeric - analytic).abs() < 1e-6,
                    "{:?} (normalized {norm}) d/dlogp[{k}]: {analytic} vs {numeric}",
                    obj.loss
                );
            }
        }
    }

    #[test]
    fn at_the_reference_the_sigmoid_loss_is_log_2_and_rewards_are_zero() {
        let p = [(-5.0, -6.0)];
        let out = pair_loss(&objective(DpoLoss::Sigmoid), &p, &p, &[(3, 4)]);
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-15);
        assert_eq!(out.metrics.rewards_margins, 0.0);
        assert_eq!(out.metrics.rewards_accuracies, 0.0);
        assert_eq!(
            (out.metrics.logps_chosen, out.metrics.logps_rejected),
            (-5.0, -6.0)
        );
        // IPO at zero log-ratios: (1/(2β))².
        let ipo = pair_loss(&objective(DpoLoss::Ipo), &p, &p, &[(3, 4)]);
        assert!((ipo.loss - 25.0).abs() < 1e-12);
        // Robust with ε = 0.1 at z = 0: ((0.9 − 0.1) log 2) / 0.8 = log 2.
        let robust = pair_loss(&objective(DpoLoss::Robust), &p, &p, &[(3, 4)]);
        assert!((robust.loss - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn the_watch_warns_once_when_chosen_replies_fall_while_margins_grow() {
        let obj = objective(DpoLoss::Sigmoid);
        let step = |chosen: f64, margin: f64| PreferenceMetrics {
            rewards_chosen: chosen,
            rewards_margins: margin,
            ..PreferenceMetrics::default()
        };
        let mut watch = ChosenWatch::default();
        // Chosen replies rising: nothing, however long.
        for _ in 0..20 {
            assert_eq!(watch.observe(&step(0.2, 0.5), &obj), None);
        }
        // Falling by 1.5 nats (β = 0.1) with a growing margin: once the window holds it.
        let mut said = Vec::new();
        for _ in 0..30 {
            said.extend(watch.observe(&step(-0.15, 0.8), &obj));
        }
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("add an SFT term with dpo.sft_weight"),
            "{}",
            said[0]
        );
        // Falling with no margin (the model is only getting worse): not this confusion.
        let mut watch = ChosenWatch::default();
        for _ in 0..20 {
            assert_eq!(watch.observe(&step(-0.3, -0.1), &obj), None);
        }
    }
}
