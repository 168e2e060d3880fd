//! `lora-train score`: the masked cross-entropy of a chat dataset, token-weighted.

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::loss::nll_rows;
use crate::data::batch::collate;
use crate::data::TokenizedExample;
use crate::model::CausalLm;
use crate::{Error, Result};

/// The loss of one example.
#[derive(Debug, Clone, Serialize)]
pub struct ExampleScore {
    pub index: usize,
    pub loss: f64,
    pub target_tokens: usize,
}

/// The output of `score --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    /// Token-weighted mean over all target tokens.
    pub mean_loss: f64,
    pub target_tokens: usize,
    pub examples: usize,
    pub per_example: Vec<ExampleScore>,
}

impl ScoreReport {
    pub fn perplexity(&self) -> f64 {
        self.mean_loss.exp()
    }
}

/// Examples scored together by default (`score --batch-size`), as transformers' Trainer
/// evaluates (`per_device_eval_batch_size`).
pub const DEFAULT_SCORE_BATCH: usize = 8;

/// Scores the examples in right-padded batches of up to `batch_size`, longest first (so that
/// a batch holds examples of similar length, and one that does not fit in memory fails at
/// once), with a progress bar when `progress` is set. Each example's loss is the one it has
/// alone: padding comes after its last token, and no real token attends to a later position.
/// The per-example results keep the input order.
///
/// One example at a time, every product would pack each frozen weight for a few dozen rows:
/// on the CPU that packing, not the arithmetic, took most of the time.
pub fn score_examples(
    model: &dyn CausalLm,
    examples: &[TokenizedExample],
    batch_size: usize,
    progress: bool,
) -> Result<ScoreReport> {
    score_examples_until(
        model,
        examples,
        batch_size,
        progress,
        &AtomicBool::new(false),
    )
}

/// [`score_examples`] that gives up with [`Error::Interrupted`] once `stop` is set (checked
/// before each batch), for a validation that Ctrl-C must not wait for.
pub fn score_examples_until(
    model: &dyn CausalLm,
    examples: &[TokenizedExample],
    batch_size: usize,
    progress: bool,
    stop: &AtomicBool,
) -> Result<ScoreReport> {
    if batch_size == 0 {
        return Err(Error::Config(
            "the scoring batch size must be at least 1".into(),
        ));
    }
    let bar = if progress {
        let b = ProgressBar::new(examples.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "scoring {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut order: Vec<usize> = (0..examples.len()).collect();
    // Stable: equal lengths keep the input order.
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].input_ids.len()));
    let mut per_example: Vec<Option<ExampleScore>> = vec![None; examples.len()];
    let (mut total, mut count) = (0f64, 0usize);
    for (batch_index, chunk) in order.chunks(batch_size).enumerate() {
        if stop.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            return Err(Error::Interrupted("scoring".into()));
        }
        let batch: Vec<&TokenizedExample> = chunk.iter().map(|&i| &examples[i]).collect();
        let (nll, counts) = batch_nll(model, &batch)?;
        if nll.iter().any(|v| !v.is_finite()) {
            let place = match batch_index {
                0 => "on the first forward pass".to_string(),
                n => format!("in batch {} of the scoring", n + 1),
            };
            return Err(Error::NonFinite(format!(
                "loss {place}: {}",
                crate::model::NON_FINITE_CAUSE
            )));
        }
        let mut rest = nll.as_slice();
        for (&index, &n) in chunk.iter().zip(&counts) {
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            let sum: f64 = mine.iter().map(|v| *v as f64).sum();
            total += sum;
            count += n;
            per_example[index] = Some(ExampleScore {
                index,
                loss: if n > 0 { sum / n as f64 } else { f64::NAN },
                target_tokens: n,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    let per_example: Vec<ExampleScore> = per_example.into_iter().flatten().collect();
    bar.finish_and_clear();
    Ok(ScoreReport {
        mean_loss: if count > 0 {
            total / count as f64
        } else {
            f64::NAN
        },
        target_tokens: count,
        examples: examples.len(),
        per_example,
    })
}

/// The per-target NLLs of a batch, example after example (each in position order, as
/// [`collate`] lists the rows that predict them), and how many each example has.
fn batch_nll(model: &dyn CausalLm, batch: &[&TokenizedExample]) -> Result<(Vec<f32>, Vec<usize>)> {
    // Any id serves as padding: the attention mask hides it and its rows are never read.
    let mb = collate(batch, 0, model.device())?;
    let hidden = model.forward_hidden(&mb.input_ids, mb.attention_mask.as_ref())?;
    let (b, t, h) = hidden.dims3()?;
    let mut counts = vec![0; b];
    for &row in &mb.pred_rows {
        counts[row as usize / t] += 1;
    }
    let flat = hidden.reshape((b * t, h))?;
    let nll = nll_rows(model, &flat, &mb.pred_rows, &mb.target_ids)?.to_vec1::<f32>()?;
    if nll.len() != mb.pred_rows.len() {
        return Err(Error::shape(
            "scoring",
            format!("one loss per target ({})", mb.pred_rows.len()),
            format!("{} losses", nll.len()),
        ));
    }
    Ok((nll, counts))
}
