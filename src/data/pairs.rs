//! Preference pairs for DPO: the three JSONL shapes, each pair tokenized as TRL's
//! `DPOTrainer._prepare_dataset` tokenizes a conversational pair, and pairs fitted into the
//! sequence length.
//!
//! Shapes (detected from each line's keys; a file holds one):
//! - `dpo-trl`: `{"prompt": [messages] | "text", "chosen": [one assistant message] | "text",
//!   "rejected": ...}`, also without `prompt` when `chosen` and `rejected` are whole
//!   conversations that share everything but their last (assistant) message (TRL's implicit
//!   prompt);
//! - `dpo-openai`: `{"input": {"messages": [...]}, "preferred_output": [one assistant message],
//!   "non_preferred_output": [...]}` (OpenAI's and Together's preference format);
//! - `dpo-seed`: `{"prompt", "chosen", "rejected"}` strings with a `"metadata"` object.
//!
//! A text prompt is one user message: every shape goes through the chat template. The prompt
//! is rendered with the generation prompt, the reply is what rendering prompt + reply adds
//! after it (the SFT mask of [`crate::data::mask`]); where the two renderings disagree, the
//! reply starts where they first differ, taken over both replies so they share the prompt.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::data::dataset::{each_line_of, json_type, parse_message_list, LineKind};
use crate::data::{ChatTemplate, ChatTokenizer, Message, Role, TokenizedExample};
use crate::{Error, Result};

/// The JSONL shape of a pairs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PairFormat {
    /// TRL's `prompt` / `chosen` / `rejected`, conversational or text.
    Trl,
    /// OpenAI's and Together's `input` / `preferred_output` / `non_preferred_output`.
    OpenAi,
    /// The seeds' `prompt` / `chosen` / `rejected` strings with `metadata`.
    Seed,
}

impl PairFormat {
    /// The name in the data tools' format table.
    pub fn name(self) -> &'static str {
        match self {
            PairFormat::Trl => "dpo-trl",
            PairFormat::OpenAi => "dpo-openai",
            PairFormat::Seed => "dpo-seed",
        }
    }

    /// The shape of one line's object, or why it is none of them.
    fn detect(obj: &Map<String, Value>) -> std::result::Result<Self, String> {
        if obj.contains_key("input") || obj.contains_key("preferred_output") {
            return Ok(PairFormat::OpenAi);
        }
        if obj.contains_key("chosen") || obj.contains_key("rejected") {
            let all_text = ["prompt", "chosen", "rejected"]
                .iter()
                .all(|k| obj.get(*k).is_some_and(Value::is_string));
            return Ok(match all_text && obj.contains_key("metadata") {
                true => PairFormat::Seed,
                false => PairFormat::Trl,
            });
        }
        if obj.contains_key("messages") {
            return Err(format!(
                "a conversation (\"messages\"), not a preference pair: train.method = \"dpo\" \
                 reads pairs ({SHAPES})"
            ));
        }
        Err(format!("not a preference pair ({SHAPES})"))
    }
}

const SHAPES: &str = "dpo-trl: prompt/chosen/rejected; dpo-openai: \
                      input/preferred_output/non_preferred_output";

/// A prompt and two replies to it, the first preferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    /// The conversation before the reply; its last message is not the assistant's.
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

/// A pair read from `line` of its file.
pub type NumberedPair = (usize, PreferencePair);

/// Reads a JSONL file of preference pairs and its shape; every error names the file, the
/// 1-based line and the field at fault.
pub fn read_pairs(path: &Path) -> Result<(PairFormat, Vec<NumberedPair>)> {
    let mut first: Option<(usize, PairFormat)> = None;
    let pairs = each_line_of(path, PAIR_LINE, |line, obj| {
        let format = PairFormat::detect(obj)?;
        match first {
            None => first = Some((line, format)),
            Some((at, f)) if f != format && !(seedlike(f) && seedlike(format)) => {
                return Err(format!(
                    "a {} pair, but line {at} is {}: a file holds one shape",
                    format.name(),
                    f.name()
                ))
            }
            Some(_) => {}
        }
        match format {
            PairFormat::OpenAi => openai_pair(obj),
            PairFormat::Trl | PairFormat::Seed => trl_pair(obj),
        }
    })?;
    let format = first.map_or(PairFormat::Trl, |(_, f)| f);
    Ok((format, pairs))
}

/// The seeds' shape is TRL's text shape with metadata: a file may mix the two.
fn seedlike(f: PairFormat) -> bool {
    matches!(f, PairFormat::Trl | PairFormat::Seed)
}

const PAIR_LINE: LineKind = LineKind {
    keys: "\"prompt\", \"chosen\" and \"rejected\" (or \"input\", \"preferred_output\" and \"non_preferred_output\")",
    items: "preference pairs",
};

/// `dpo-trl` and `dpo-seed`: explicit `prompt`, or TRL's implicit prompt.
fn trl_pair(obj: &Map<String, Value>) -> std::result::Result<PreferencePair, String> {
    let field = |key: &str| obj.get(key).ok_or_else(|| format!("missing \"{key}\""));
    let (chosen, rejected) = (field("chosen")?, field("rejected")?);
    let Some(prompt) = obj.get("prompt") else {
        return implicit_prompt_pair(chosen, rejected);
    };
    let prompt = match prompt {
        Value::String(text) => vec![Message::new(Role::User, text.clone())],
        Value::Array(_) => parse_message_list(prompt).map_err(|e| format!("prompt: {e}"))?,
        other => {
            return Err(format!(
                "prompt: expected a string or a list of messages, got {}",
                json_type(other)
            ))
        }
    };
    check_prompt(&prompt, "prompt")?;
    Ok(PreferencePair {
        prompt,
        chosen: reply(chosen, "chosen")?,
        rejected: reply(rejected, "rejected")?,
    })
}

/// TRL's `extract_prompt`: the messages `chosen` and `rejected` share are the prompt, and each
/// must then end in one assistant message.
fn implicit_prompt_pair(
    chosen: &Value,
    rejected: &Value,
) -> std::result::Result<PreferencePair, String> {
    let (Value::Array(_), Value::Array(_)) = (chosen, rejected) else {
        return Err(
            "missing \"prompt\" (without it, \"chosen\" and \"rejected\" must be whole \
             conversations sharing the prompt)"
                .to_string(),
        );
    };
    let chosen = parse_message_list(chosen).map_err(|e| format!("chosen: {e}"))?;
    let rejected = parse_message_list(rejected).map_err(|e| format!("rejected: {e}"))?;
    let shared = chosen
        .iter()
        .zip(&rejected)
        .take_while(|(c, r)| c == r)
        .count();
    let prompt = chosen[..shared].to_vec();
    for (key, conv) in [("chosen", &chosen), ("rejected", &rejected)] {
        match &conv[shared..] {
            [m] if m.role == Role::Assistant => {}
            rest => {
                return Err(format!(
                    "{key}: without \"prompt\", expected the shared messages and then one \
                     assistant message, got {} message(s) after the {shared} shared",
                    rest.len()
                ))
            }
        }
    }
    check_prompt(&prompt, "chosen")?;
    Ok(PreferencePair {
        prompt,
        chosen: chosen[shared].content.clone(),
        rejected: rejected[shared].content.clone(),
    })
}

/// `dpo-openai`.
fn openai_pair(obj: &Map<String, Value>) -> std::result::Result<PreferencePair, String> {
    let input = match obj.get("input") {
        Some(Value::Object(input)) => input,
        Some(other) => {
            return Err(format!(
                "input: expected an object, got {}",
                json_type(other)
            ))
        }
        None => return Err("missing \"input\"".to_string()),
    };
    let messages = input.get("messages").ok_or("input: missing \"messages\"")?;
    let prompt = parse_message_list(messages).map_err(|e| format!("input.{e}"))?;
    check_prompt(&prompt, "input.messages")?;
    let output = |key: &str| match obj.get(key) {
        Some(Value::Array(items)) if items.len() == 1 => reply(&items[0], key),
        Some(Value::Array(items)) => Err(format!(
            "{key}: expected a list of one assistant message, got {} items",
            items.len()
        )),
        Some(other) => Err(format!(
            "{key}: expected a list of one assistant message, got {}",
            json_type(other)
        )),
        None => Err(format!("missing \"{key}\"")),
    };
    Ok(PreferencePair {
        prompt,
        chosen: output("preferred_output")?,
        rejected: output("non_preferred_output")?,
    })
}

/// A reply: text, one assistant message, or a list of exactly one.
fn reply(value: &Value, key: &str) -> std::result::Result<String, String> {
    let message = match value {
        Value::String(text) => return Ok(text.clone()),
        Value::Array(items) if items.len() != 1 => {
            return Err(format!(
                "{key}: expected one assistant message, got {} messages",
                items.len()
            ))
        }
        Value::Array(items) => &items[0],
        Value::Object(_) => value,
        other => {
            return Err(format!(
                "{key}: expected a string or an assistant message, got {}",
                json_type(other)
            ))
        }
    };
    let parsed = parse_message_list(&Value::Array(vec![message.clone()]))
        .map_err(|e| format!("{key}: {}", e.trim_start_matches("messages[0]")))?;
    match parsed.as_slice() {
        [m] if m.role == Role::Assistant => Ok(m.content.clone()),
        [m] => Err(format!(
            "{key}: the reply must be an assistant message, got role \"{}\"",
            m.role
        )),
        _ => Err(format!("{key}: expected one assistant message")),
    }
}

fn check_prompt(prompt: &[Message], key: &str) -> std::result::Result<(), String> {
    match prompt.last() {
        None => Err(format!("{key}: the prompt has no messages")),
        Some(m) if m.role == Role::Assistant => Err(format!(
            "{key}: the prompt ends with an assistant message; the replies follow it"
        )),
        Some(_) => Ok(()),
    }
}

/// A pair's two sequences, sharing their first tokens (the prompt); each one's targets are its
/// reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: TokenizedExample,
    pub rejected: TokenizedExample,
}

impl TokenizedPair {
    /// Tokens before the replies (the same in both sequences).
    pub fn prompt_len(&self) -> usize {
        let first = |e: &TokenizedExample| e.targets.iter().position(|t| *t).unwrap_or(0);
        first(&self.chosen).min(first(&self.rejected))
    }

    /// The longer of the two sequences.
    pub fn max_len(&self) -> usize {
        self.chosen
            .input_ids
            .len()
            .max(self.rejected.input_ids.len())
    }
}

/// Renders and tokenizes a pair as TRL 1.16 `DPOTrainer` tokenizes a conversational one:
/// `prompt_ids = template(prompt, add_generation_prompt)`, each reply's sequence
/// `template(prompt + [reply])`, and the replies start where `prompt_ids` stops being a prefix
/// of either sequence (TRL's `common_prefix_length`, the smaller of the two).
pub fn tokenize_pair(
    pair: &PreferencePair,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
) -> Result<TokenizedPair> {
    let encode = |msgs: &[Message], generation_prompt: bool| -> Result<Vec<u32>> {
        tokenizer.encode(&template.render(msgs, generation_prompt)?, false)
    };
    let prompt_ids = encode(&pair.prompt, true)?;
    let with_reply = |text: &str| {
        let mut msgs = pair.prompt.clone();
        msgs.push(Message::new(Role::Assistant, text));
        encode(&msgs, false)
    };
    let (chosen, rejected) = (with_reply(&pair.chosen)?, with_reply(&pair.rejected)?);
    let common = |seq: &[u32]| {
        seq.iter()
            .zip(&prompt_ids)
            .take_while(|(a, b)| a == b)
            .count()
    };
    // The first token is never a target: nothing predicts it.
    let start = common(&chosen).min(common(&rejected)).max(1);
    let example = |ids: Vec<u32>, key: &str| {
        if ids.len() <= start {
            return Err(Error::NoTargets(format!(
                "the {key} reply adds no tokens after the prompt"
            )));
        }
        let targets = (0..ids.len()).map(|i| i >= start).collect();
        Ok(TokenizedExample {
            input_ids: ids,
            targets,
        })
    };
    Ok(TokenizedPair {
        chosen: example(chosen, "chosen")?,
        rejected: example(rejected, "rejected")?,
    })
}

/// What fitting a pair into `max_seq_len` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairFit {
    Kept(TokenizedPair),
    /// The prompt lost tokens from its start; both replies are whole.
    Truncated(TokenizedPair),
    /// The longer reply and one prompt token do not fit.
    Dropped,
}

/// Fits a pair into `max_len` tokens per sequence by cutting the prompt from its start, as
/// both sequences share it, so both replies stay whole; drops the pair when even that is too
/// long (one prompt token must stay: it predicts the reply's first token).
pub fn fit_pair(pair: &TokenizedPair, max_len: usize) -> PairFit {
    let longest = pair.max_len();
    if longest <= max_len {
        return PairFit::Kept(pair.clone());
    }
    let cut = longest - max_len;
    if pair.prompt_len() < cut + 1 {
        return PairFit::Dropped;
    }
    let cut_example = |e: &TokenizedExample| TokenizedExample {
        input_ids: e.input_ids[cut..].to_vec(),
        targets: e.targets[cut..].to_vec(),
    };
    PairFit::Truncated(TokenizedPair {
        chosen: cut_example(&pair.chosen),
        rejected: cut_example(&pair.rejected),
    })
}

/// Tokenizes pairs and fits them to `max_len`, counting what happened; errors name `path` and
/// the line.
pub fn tokenize_and_fit_pairs(
    pairs: &[NumberedPair],
    path: &Path,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    max_len: usize,
) -> Result<(Vec<TokenizedPair>, crate::data::FitReport)> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut report = crate::data::FitReport::default();
    for (line, pair) in pairs {
        let tokenized = tokenize_pair(pair, template, tokenizer).map_err(|e| Error::Dataset {
            path: path.to_path_buf(),
            line: *line,
            msg: e.to_string(),
        })?;
        match fit_pair(&tokenized, max_len) {
            PairFit::Kept(p) => {
                report.kept += 1;
                out.push(p)
            }
            PairFit::Truncated(p) => {
                report.truncated += 1;
                out.push(p)
            }
            PairFit::Dropped => report.dropped += 1,
        }
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> std::result::Result<(PairFormat, PreferencePair), String> {
        let obj: Map<String, Value> = serde_json::from_str(line).unwrap();
        let format = PairFormat::detect(&obj)?;
        let pair = match format {
            PairFormat::OpenAi => openai_pair(&obj)?,
            _ => trl_pair(&obj)?,
        };
        Ok((format, pair))
    }

    fn user(text: &str) -> Vec<Message> {
        vec![Message::new(Role::User, text)]
    }

    #[test]
    fn the_three_shapes_read_as_one_pair() {
        let want = PreferencePair {
            prompt: user("Hi"),
            chosen: "Ahoy!".into(),
            rejected: "Hello.".into(),
        };
        let cases = [
            (
                r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Ahoy!"}], "rejected": [{"role": "assistant", "content": "Hello."}]}"#,
                PairFormat::Trl,
            ),
            (
                r#"{"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello."}"#,
                PairFormat::Trl,
            ),
            (
                r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy!"}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#,
                PairFormat::Trl,
            ),
            (
                r#"{"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": [{"role": "assistant", "content": "Ahoy!"}], "non_preferred_output": [{"role": "assistant", "content": "Hello."}]}"#,
                PairFormat::OpenAi,
            ),
            (
                r#"{"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello.", "metadata": {"seed": 3}}"#,
                PairFormat::Seed,
            ),
        ];
        for (line, format) in cases {
            assert_eq!(parse(line).unwrap(), (format, want.clone()), "{line}");
        }
    }

    #[test]
    fn a_bad_pair_names_its_field() {
        let cases = [
            (r#"{"messages": []}"#, "a conversation (\"messages\")"),
            (r#"{"prompt": "Hi", "chosen": "a"}"#, "missing \"rejected\""),
            (
                r#"{"prompt": 3, "chosen": "a", "rejected": "b"}"#,
                "prompt: expected a string or a list of messages, got a number",
            ),
            (
                r#"{"prompt": "Hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}"#,
                "chosen: the reply must be an assistant message, got role \"user\"",
            ),
            (
                r#"{"prompt": "Hi", "chosen": "a", "rejected": [{"role": "assistant"}]}"#,
                "rejected: .content: missing",
            ),
            (
                r#"{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}"#,
                "prompt: the prompt ends with an assistant message",
            ),
            (
                r#"{"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": [], "non_preferred_output": []}"#,
                "preferred_output: expected a list of one assistant message, got 0 items",
            ),
            (
                r#"{"input": {}, "preferred_output": [], "non_preferred_output": []}"#,
                "input: missing \"messages\"",
            ),
            (r#"{"chosen": "a", "rejected": "b"}"#, "missing \"prompt\""),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    fn pair(prompt: usize, chosen: usize, rejected: usize) -> TokenizedPair {
        let seq =
            |reply: usize| TokenizedExample::synthetic(prompt + reply, prompt..prompt + reply);
        TokenizedPair {
            chosen: seq(chosen),
            rejected: seq(rejected),
        }
    }

    #[test]
    fn long_pairs_lose_prompt_tokens_from_the_start() {
        let p = pair(6, 3, 5);
        assert_eq!(p.prompt_len(), 6);
        assert_eq!(fit_pair(&p, 11), PairFit::Kept(p.clone()));
        let PairFit::Truncated(t) = fit_pair(&p, 8) else {
            panic!("not truncated")
        };
        assert_eq!(t.chosen.input_ids, vec![3, 4, 5, 6, 7, 8]);
        assert_eq!(t.rejected.input_ids, vec![3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!((t.prompt_len(), t.chosen.num_targets()), (3, 3));
        assert_eq!(t.rejected.num_targets(), 5);
        // One prompt token must stay to predict the reply's first token.
        assert!(matches!(fit_pair(&p, 6), PairFit::Truncated(_)));
        assert_eq!(fit_pair(&p, 5), PairFit::Dropped);
    }
}
