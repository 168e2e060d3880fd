//! Loss masks: which tokens of a rendered conversation are training targets. `last_assistant` is
//! TRL's completion-only loss (`DataCollatorForCompletionOnlyLM`): what the full rendering adds
//! after the conversation up to the last trained assistant turn, rendered with
//! `add_generation_prompt=True`. `all_assistant` does that for every trained assistant turn
//! (OpenAI's per-turn `weight`); `all` trains on every token after the first. Rendered text is
//! tokenized without special tokens, since templates emit BOS themselves.

use std::fmt;
use std::str::FromStr;
use std::sync::Once;

use serde::{Deserialize, Serialize};

use crate::data::dataset::{Conversation, Message};
use crate::data::template::ChatTemplate;
use crate::data::tokenizer::ChatTokenizer;
use crate::{Error, Result};

/// Which tokens the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// The last assistant turn with weight 1 (TRL's completion-only loss).
    #[default]
    LastAssistant,
    /// Every assistant turn with weight 1.
    AllAssistant,
    /// Every token of the conversation up to the last trained assistant turn.
    All,
}

impl LossOn {
    /// Every name, in the order of the variants.
    pub const NAMES: &'static [&'static str] = &["last_assistant", "all_assistant", "all"];

    /// The name used in job files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LossOn::LastAssistant => "last_assistant",
            LossOn::AllAssistant => "all_assistant",
            LossOn::All => "all",
        }
    }
}

impl fmt::Display for LossOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LossOn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.replace('-', "_").as_str() {
            "last_assistant" => Ok(LossOn::LastAssistant),
            "all_assistant" => Ok(LossOn::AllAssistant),
            "all" => Ok(LossOn::All),
            _ => Err(Error::Config(format!(
                "unknown loss_on {s:?} (expected last_assistant, all_assistant or all)"
            ))),
        }
    }
}

/// A tokenized conversation and its loss targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    pub input_ids: Vec<u32>,
    /// `targets[t]`: token `t` is a loss target, predicted from position `t - 1`.
    /// `targets[0]` is always false.
    pub targets: Vec<bool>,
}

impl TokenizedExample {
    /// An example of tokens `0..len` whose targets are the positions in `targets` (for tests).
    #[cfg(test)]
    pub(crate) fn synthetic(len: usize, targets: std::ops::Range<usize>) -> Self {
        TokenizedExample {
            input_ids: (0..len as u32).collect(),
            targets: (0..len).map(|i| targets.contains(&i)).collect(),
        }
    }

    /// How many tokens are loss targets.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|t| **t).count()
    }

    /// The positions of the loss targets, ascending.
    pub fn target_positions(&self) -> Vec<usize> {
        self.targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.then_some(i))
            .collect()
    }
}

static PREFIX_MISMATCH_WARNING: Once = Once::new();

/// [`tokenize_conversation`] for the conversation on 1-based `line` of the dataset `path` (as
/// [`crate::data::dataset::read_jsonl_numbered`] gives them): an error names the file and line.
pub fn tokenize_line(
    conv: &Conversation,
    path: &std::path::Path,
    line: usize,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    loss_on: LossOn,
) -> Result<TokenizedExample> {
    tokenize_conversation(conv, template, tokenizer, loss_on).map_err(|e| Error::Dataset {
        path: path.to_path_buf(),
        line,
        msg: e.to_string(),
    })
}

/// Renders and tokenizes a conversation up to its last trained assistant turn, and marks the
/// loss targets chosen by `loss_on`.
pub fn tokenize_conversation(
    conv: &Conversation,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    loss_on: LossOn,
) -> Result<TokenizedExample> {
    let messages = &conv.messages;
    let last = messages
        .iter()
        .rposition(Message::is_trained_assistant)
        .ok_or_else(|| {
            Error::NoTargets(
                "no assistant turn to train on (every assistant turn has weight 0)".into(),
            )
        })?;
    let encode = |msgs: &[Message], add_generation_prompt: bool| -> Result<Vec<u32>> {
        tokenizer.encode(&template.render(msgs, add_generation_prompt)?, false)
    };

    let input_ids = encode(&messages[..=last], false)?;
    let mut targets = vec![false; input_ids.len()];
    match loss_on {
        LossOn::LastAssistant => {
            let prompt = encode(&messages[..last], true)?;
            mark_turn(&mut targets, &input_ids, &prompt, &input_ids);
        }
        LossOn::AllAssistant => {
            for (j, message) in messages[..=last].iter().enumerate() {
                if !message.is_trained_assistant() {
                    continue;
                }
                let prompt = encode(&messages[..j], true)?;
                let through_turn = if j == last {
                    input_ids.clone()
                } else {
                    encode(&messages[..=j], false)?
                };
                mark_turn(&mut targets, &input_ids, &prompt, &through_turn);
            }
        }
        LossOn::All => targets.iter_mut().skip(1).for_each(|t| *t = true),
    }

    let example = TokenizedExample { input_ids, targets };
    if example.num_targets() == 0 {
        return Err(Error::NoTargets(format!(
            "no loss targets: the assistant turn adds no tokens after the prompt (loss_on = {loss_on})"
        )));
    }
    Ok(example)
}

/// Marks `sequence[len(prompt)..len(through_turn)]` as targets. When a rendering is not a token
/// prefix of the sequence (a merge across the boundary), its length is replaced by the longest
/// common prefix, so targets never cover tokens that differ from what was rendered.
fn mark_turn(targets: &mut [bool], sequence: &[u32], prompt: &[u32], through_turn: &[u32]) {
    let start = prefix_len(sequence, prompt).max(1);
    let end = prefix_len(sequence, through_turn);
    for t in targets.iter_mut().take(end).skip(start) {
        *t = true;
    }
}

fn prefix_len(sequence: &[u32], prefix: &[u32]) -> usize {
    let common = sequence
        .iter()
        .zip(prefix)
        .take_while(|(a, b)| a == b)
        .count();
    if common < prefix.len() {
        PREFIX_MISMATCH_WARNING.call_once(|| {
            tracing::warn!(
                "a rendered prompt is not a token prefix of the rendered conversation; \
                 loss targets start where their tokens first differ"
            )
        });
    }
    common
}

/// A readable view of a tokenized example for `lora-train inspect`: the rendered text, one line
/// per token (position, id, `>` for a target, the token text escaped), the target text and a
/// summary.
pub fn format_inspect(example: &TokenizedExample, tokenizer: &ChatTokenizer) -> Result<String> {
    use std::fmt::Write;

    let mut out = String::new();
    let text = tokenizer.decode(&example.input_ids, false)?;
    let _ = writeln!(out, "=== rendered text ===");
    let _ = writeln!(out, "{text}");
    let _ = writeln!(out, "=== tokens (> = loss target) ===");
    let _ = writeln!(out, "{:>6} {:>8}   token", "pos", "id");
    for (pos, (&id, &target)) in example.input_ids.iter().zip(&example.targets).enumerate() {
        let piece = tokenizer.decode(&[id], false)?;
        let marker = if target { '>' } else { ' ' };
        let _ = writeln!(out, "{pos:>6} {id:>8} {marker} {}", escape_token(&piece));
    }
    let _ = writeln!(out, "=== target text ===");
    for (start, end) in target_runs(&example.targets) {
        let piece = tokenizer.decode(&example.input_ids[start..end], false)?;
        let _ = writeln!(out, "[{start}..{end}) {}", escape_token(&piece));
    }
    let total = example.input_ids.len();
    let targets = example.num_targets();
    let percent = if total == 0 {
        0.0
    } else {
        100.0 * targets as f64 / total as f64
    };
    let _ = writeln!(
        out,
        "=== {total} tokens, {targets} targets ({percent:.1}%) ==="
    );
    Ok(out)
}

/// Quotes a token's text with newlines, tabs and other control characters made visible.
fn escape_token(s: &str) -> String {
    format!("\"{}\"", s.escape_debug())
}

/// Half-open ranges of consecutive targets.
fn target_runs(targets: &[bool]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &t) in targets.iter().enumerate() {
        match (t, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, targets.len()));
    }
    runs
}
