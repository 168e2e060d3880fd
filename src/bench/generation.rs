//! `bench --generate`: batched generation through [`crate::generate::generate_batch`] with the
//! adapter attached, on prompts of random token ids: time to the first token of the batch
//! (prefill), then the rate of the tokens after it (decode), greedy and without stop tokens
//! so that every row generates its whole budget.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::generate::{generate_batch, GenerateOptions};
use crate::model::LoadedModel;
use crate::{Error, Result};

/// What one batched generation measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateBench {
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Prompt tokens of the whole batch over the time to the first new token.
    pub prefill_tokens_per_second: f64,
    /// New tokens after each row's first, over the time after the first.
    pub decode_tokens_per_second: f64,
    pub time_to_first_token_s: f64,
}

/// Generates `new_tokens` after each of `batch` prompts of `prompt_tokens` random ids (seeded)
/// and times it.
pub fn bench_generate(
    model: &LoadedModel,
    batch: usize,
    prompt_tokens: usize,
    new_tokens: usize,
) -> Result<GenerateBench> {
    if batch == 0 || prompt_tokens == 0 || new_tokens < 2 {
        return Err(Error::Config(format!(
            "--generate needs a batch of at least one prompt of at least one token and at least \
             2 new tokens (got {batch} x {prompt_tokens}, {new_tokens} new)"
        )));
    }
    let vocab = model.config.vocab_size() as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..prompt_tokens)
                .map(|_| rng.random_range(0..vocab))
                .collect()
        })
        .collect();
    let prompts: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        ..Default::default()
    };
    let device = model.model.device().clone();
    device.synchronize()?;
    let clock = Instant::now();
    let mut first: Option<f64> = None;
    let out = generate_batch(model.model.as_ref(), &prompts, &opts, |_, _| {
        first.get_or_insert_with(|| clock.elapsed().as_secs_f64());
    })?;
    device.synchronize()?;
    let total = clock.elapsed().as_secs_f64();
    let ttft = first.unwrap_or(total);
    let generated: usize = out.iter().map(Vec::len).sum();
    Ok(GenerateBench {
        batch,
        prompt_tokens,
        new_tokens,
        prefill_tokens_per_second: (batch * prompt_tokens) as f64 / ttft.max(1e-9),
        decode_tokens_per_second: generated.saturating_sub(batch) as f64 / (total - ttft).max(1e-9),
        time_to_first_token_s: ttft,
    })
}

/// The rows of [`GenerateBench`] in `bench.md`.
pub fn markdown_rows(g: &GenerateBench) -> Vec<(&'static str, String)> {
    vec![
        (
            "generation",
            format!(
                "{} prompts of {} tokens, {} new tokens each",
                g.batch, g.prompt_tokens, g.new_tokens
            ),
        ),
        (
            "prefill / decode tokens/s",
            format!(
                "{:.1} / {:.1}",
                g.prefill_tokens_per_second, g.decode_tokens_per_second
            ),
        ),
        (
            "time to first token",
            format!("{:.3} s", g.time_to_first_token_s),
        ),
    ]
}
