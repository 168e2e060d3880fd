//! Text generation with a KV cache: greedy at temperature 0, otherwise temperature and
//! top-p (nucleus) sampling from a seeded RNG. Stops at the chat template's end-of-turn token
//! or at eos. The prompt and the new tokens stay within the model's context: a longer prompt
//! is refused with its count, and decoding stops where the context ends.

use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::model::CausalLm;
use crate::{Error, Result};

/// Sampling settings.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Token ids that end generation (the stop token is kept in the output ids).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

/// What `generate --json` prints (with `text` filled in by the caller).
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub tokens_per_second: f64,
}

/// Generates up to `max_new_tokens` after `prompt_ids`; `on_token` sees each new id.
pub fn generate(
    model: &dyn CausalLm,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let mut out = generate_batch(model, &[prompt_ids], opts, |_, id| on_token(id))?;
    Ok(out.pop().unwrap_or_default())
}

/// Generates after each of `prompts` in one batch: left-padded to the longest, with the padding
/// masked in the KV cache, each row stopping at its own stop token or token budget and leaving
/// the batch when it does. Rotary positions are relative, so a row's padding does not change
/// its logits. Sampling draws from one RNG per row seeded with `opts.seed`, so a prompt gets
/// the same tokens in any batch as alone. `on_token(row, id)` sees each new id.
pub fn generate_batch(
    model: &dyn CausalLm,
    prompts: &[&[u32]],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(crate::Error::unsupported("generate", "the prompt is empty"));
    }
    let budgets = prompts
        .iter()
        .map(|p| new_token_budget(p.len(), opts.max_new_tokens, model.context_len()))
        .collect::<Result<Vec<_>>>()?;
    let device = model.device();
    let n = prompts.len();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(n * longest);
    let mut real = Vec::with_capacity(n * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(p.iter().copied()));
        real.extend(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, p.len())));
    }
    let mut out = vec![Vec::new(); n];
    // Every row's budget is at least 1 unless max_new_tokens is 0.
    if n == 0 || opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut active: Vec<usize> = (0..n).collect();
    let mut rngs: Vec<_> = (0..n)
        .map(|_| rand::rngs::StdRng::seed_from_u64(opts.seed))
        .collect();
    let mut cache = model.new_cache();
    let mut input = Tensor::from_vec(ids, (n, longest), device)?;
    let mut padding = if real.contains(&0) {
        Some(Tensor::from_vec(real, (n, longest), device)?)
    } else {
        None
    };
    for step in 0.. {
        let logits = model
            .forward_cached(&input, padding.take().as_ref(), &mut cache)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut keep = Vec::with_capacity(active.len());
        let mut next_ids = Vec::with_capacity(active.len());
        for (r, (&i, row)) in active.iter().zip(&logits).enumerate() {
            if row.iter().any(|l| !l.is_finite()) {
                return Err(non_finite_logits(step));
            }
            let next = if opts.temperature <= 0.0 {
                argmax(row)
            } else {
                sample_top_p(row, opts.temperature, opts.top_p, &mut rngs[i])
            };
            out[i].push(next);
            on_token(i, next);
            if !opts.stop_ids.contains(&next) && out[i].len() < budgets[i] {
                keep.push(r);
                next_ids.push(next);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.retain_rows(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
        input = Tensor::new(next_ids.as_slice(), device)?.unsqueeze(1)?;
    }
    Ok(out)
}

/// How many tokens may follow a prompt of `prompt_len` tokens in a context of `context`:
/// `max_new_tokens`, or what the context leaves when that is less (with a warning). A
/// `max_new_tokens` beyond the context, or a prompt that fills it, is an error with the counts
/// (see [`check_prompt_fits`]).
pub fn new_token_budget(prompt_len: usize, max_new_tokens: usize, context: usize) -> Result<usize> {
    check_prompt_fits(prompt_len, max_new_tokens, context)?;
    let room = context - prompt_len;
    if max_new_tokens > room {
        tracing::warn!(
            "the prompt has {prompt_len} tokens: at most {room} new tokens fit the model's \
             context of {context}, not {max_new_tokens}"
        );
    }
    Ok(max_new_tokens.min(room))
}

/// The error [`new_token_budget`] gives, without its warning: for callers that check every
/// prompt before generating.
pub fn check_prompt_fits(prompt_len: usize, max_new_tokens: usize, context: usize) -> Result<()> {
    let limit = format!("the model's context of {context} tokens (max_position_embeddings)");
    if max_new_tokens > context {
        return Err(Error::TooLarge {
            what: format!("max_new_tokens = {max_new_tokens}"),
            limit,
        });
    }
    if prompt_len >= context {
        return Err(Error::TooLarge {
            what: format!("the prompt ({prompt_len} tokens)"),
            limit: format!("{limit} less one for the reply"),
        });
    }
    Ok(())
}

/// The error for NaN or infinite logits at decoding step `step` (0: the prompt's forward pass).
fn non_finite_logits(step: usize) -> Error {
    let place = match step {
        0 => "on the first forward pass".to_string(),
        n => format!("at new token {}", n + 1),
    };
    Error::NonFinite(format!(
        "logits {place}: {}",
        crate::model::NON_FINITE_CAUSE
    ))
}

/// Runs [`generate`] and measures decode speed.
pub fn generate_timed(
    model: &dyn CausalLm,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    let start = Instant::now();
    let token_ids = generate(model, prompt_ids, opts, on_token)?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Generation {
        text: String::new(),
        tokens_per_second: if secs > 0.0 {
            token_ids.len() as f64 / secs
        } else {
            0.0
        },
        prompt_tokens: prompt_ids.len(),
        token_ids,
    })
}

/// The first index of the largest value (ties go to the lower id, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_top_p(logits: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i, ((*l as f64 - max) / temperature).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Keep the smallest prefix whose mass reaches top_p (at least one token).
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let mut r = rng.random::<f64>() * mass;
    for (i, p) in probs {
        if r < *p {
            return *i as u32;
        }
        r -= p;
    }
    probs[probs.len() - 1].0 as u32
}

/// A model's reply to a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The decoded reply, trimmed, without its end-of-turn token.
    pub text: String,
    pub prompt_tokens: usize,
    /// New tokens, the end-of-turn token not counted.
    pub output_tokens: usize,
    /// Whether it ended at an end-of-turn token (else at the token limit).
    pub stopped: bool,
}

/// The assistant's next turn after `messages`: rendered through the chat template (with the
/// generation prompt), decoded with `opts` (whose `stop_ids` default to [`stop_ids`] when empty).
pub fn reply(
    m: &crate::model::LoadedModel,
    messages: &[crate::data::Message],
    opts: &GenerateOptions,
) -> Result<Reply> {
    let ids = prompt_ids(m, messages)?;
    let mut r = replies(m, &[&ids], opts)?;
    r.pop()
        .ok_or_else(|| Error::Msg("generate: no reply for the prompt".into()))
}

/// The token ids the model continues to answer `messages`: the chat template with its
/// generation prompt.
pub fn prompt_ids(
    m: &crate::model::LoadedModel,
    messages: &[crate::data::Message],
) -> Result<Vec<u32>> {
    let text = m.template.render(messages, true)?;
    m.tokenizer.encode(&text, false)
}

/// The replies to several prompts (from [`prompt_ids`]), generated as one batch with
/// [`generate_batch`]; `opts.stop_ids` default to [`stop_ids`] when empty.
pub fn replies(
    m: &crate::model::LoadedModel,
    prompts: &[&[u32]],
    opts: &GenerateOptions,
) -> Result<Vec<Reply>> {
    let mut opts = opts.clone();
    if opts.stop_ids.is_empty() {
        opts.stop_ids = stop_ids(m);
    }
    let new = generate_batch(m.model.as_ref(), prompts, &opts, |_, _| {})?;
    new.into_iter()
        .zip(prompts)
        .map(|(mut new, ids)| {
            let stopped = new.last().is_some_and(|t| opts.stop_ids.contains(t));
            if stopped {
                new.pop();
            }
            Ok(Reply {
                text: m.tokenizer.decode(&new, true)?.trim().to_string(),
                prompt_tokens: ids.len(),
                output_tokens: new.len(),
                stopped,
            })
        })
        .collect()
}

/// The ids that end a generated turn: eos ids and the template's end-of-turn token.
pub fn stop_ids(m: &crate::model::LoadedModel) -> Vec<u32> {
    let mut ids = m.tokenizer.eos_token_ids.clone();
    if let Some(eot) = m.template.end_of_turn_token() {
        if let Some(id) = m.tokenizer.token_to_id(&eot) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_stay_within_the_context() {
        assert_eq!(new_token_budget(10, 20, 100).unwrap(), 20);
        assert_eq!(new_token_budget(90, 20, 100).unwrap(), 10);
        let e = new_token_budget(10, 101, 100).unwrap_err().to_string();
        assert!(
            e.starts_with("max_new_tokens = 101 is more than the model's context of 100"),
            "{e}"
        );
        let e = new_token_budget(100, 1, 100).unwrap_err().to_string();
        assert!(e.starts_with("the prompt (100 tokens) is more than"), "{e}");
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logits = [10.0f32, 9.0, -5.0, -6.0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let t = sample_top_p(&logits, 1.0, 0.9, &mut rng);
            assert!(t < 2, "sampled {t} outside the nucleus");
        }
    }

    #[test]
    fn argmax_prefers_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
