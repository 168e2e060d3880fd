//! `lora-train score`: the masked cross-entropy of a chat dataset, token-weighted.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::loss::target_nll;
use crate::data::TokenizedExample;
use crate::model::CausalLm;
use crate::Result;

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

/// Scores each example alone (no padding), with a progress bar when `progress` is set.
pub fn score_examples(
    model: &dyn CausalLm,
    examples: &[TokenizedExample],
    progress: bool,
) -> Result<ScoreReport> {
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
    let mut per_example = Vec::with_capacity(examples.len());
    let mut total = 0f64;
    let mut count = 0usize;
    for (index, ex) in examples.iter().enumerate() {
        let nll = target_nll(model, ex)?.to_vec1::<f32>()?;
        let sum: f64 = nll.iter().map(|v| *v as f64).sum();
        let n = nll.len();
        total += sum;
        count += n;
        per_example.push(ExampleScore {
            index,
            loss: if n > 0 { sum / n as f64 } else { f64::NAN },
            target_tokens: n,
        });
        bar.inc(1);
    }
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
