//! Preference pairs for DPO: read through the dataset format table
//! ([`crate::data::formats`]: `dpo-trl`, `dpo-openai`, `dpo-seed`), each pair tokenized as
//! TRL's `DPOTrainer._prepare_dataset` tokenizes a conversational pair, and pairs fitted into
//! the sequence length.
//!
//! A text prompt is one user message: every shape goes through the chat template. The prompt
//! is rendered with the generation prompt, the reply is what rendering prompt + reply adds
//! after it (the SFT mask of [`crate::data::mask`]); where the two renderings disagree, the
//! reply starts where they first differ, taken over both replies so they share the prompt.

use std::path::Path;

use crate::data::formats::{json_lines, read_record, Format, Kind, Record};
use crate::data::{ChatTemplate, ChatTokenizer, Message, Role, TokenizedExample};
use crate::{Error, Result};

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

/// Reads a JSONL file of preference pairs and its format (detected from the first line); every
/// error names the file, the 1-based line and the field at fault.
pub fn read_pairs(path: &Path) -> Result<(Format, Vec<NumberedPair>)> {
    let lines = json_lines(path)?;
    let error = |line: usize, msg: String| Error::Dataset {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let (first_line, first) = (lines[0].0, &lines[0].1);
    let format = match Format::detect(first) {
        Some((f, _)) if f.kind() == Kind::Preference => f,
        Some((f, _)) => {
            return Err(error(
                first_line,
                format!(
                    "a conversation ({f}), not a preference pair: train.method = \"dpo\" \
                     reads pairs ({SHAPES}); `lora-train data process` makes them"
                ),
            ))
        }
        None => {
            return Err(error(
                first_line,
                format!("not a preference pair ({SHAPES})"),
            ))
        }
    };
    // The seeds' shape is TRL's text shape with metadata: a file may mix the two.
    let read_as = match format {
        Format::DpoSeed => Format::DpoTrl,
        f => f,
    };
    let pairs = lines
        .into_iter()
        .map(|(line, obj)| match read_record(read_as, &obj) {
            Ok(Record::Preference(p)) => Ok((
                line,
                PreferencePair {
                    prompt: p.prompt,
                    chosen: p.chosen,
                    rejected: p.rejected,
                },
            )),
            Ok(Record::Chat(_)) => Err(error(line, format!("not a preference pair ({SHAPES})"))),
            Err(msg) => Err(error(line, format!("{msg} (reading as {format})"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((format, pairs))
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

    fn parse(line: &str) -> std::result::Result<(Format, PreferencePair), String> {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        std::fs::write(&path, format!("{}\n", serde_json::Value::Object(obj))).unwrap();
        let (format, mut pairs) = read_pairs(&path).map_err(|e| e.to_string())?;
        Ok((format, pairs.remove(0).1))
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
                Format::DpoTrl,
            ),
            (
                r#"{"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello."}"#,
                Format::DpoTrl,
            ),
            (
                r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy!"}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#,
                Format::DpoTrl,
            ),
            (
                r#"{"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": [{"role": "assistant", "content": "Ahoy!"}], "non_preferred_output": [{"role": "assistant", "content": "Hello."}]}"#,
                Format::DpoOpenAi,
            ),
            (
                r#"{"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello.", "metadata": {"seed": 3}}"#,
                Format::DpoSeed,
            ),
        ];
        for (line, format) in cases {
            assert_eq!(parse(line).unwrap(), (format, want.clone()), "{line}");
        }
    }

    #[test]
    fn a_bad_pair_names_its_field() {
        let cases = [
            (
                r#"{"messages": []}"#,
                "a conversation (openai), not a preference pair",
            ),
            (r#"{"prompt": "Hi", "chosen": "a"}"#, "missing \"rejected\""),
            (
                r#"{"prompt": 3, "chosen": "a", "rejected": "b"}"#,
                "\"prompt\": expected a string or a list of messages, got a number",
            ),
            (
                r#"{"prompt": "Hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}"#,
                "\"chosen\": the reply must be an assistant message, got role \"user\"",
            ),
            (
                r#"{"prompt": "Hi", "chosen": "a", "rejected": [{"role": "assistant"}]}"#,
                "rejected: .content: missing",
            ),
            (
                r#"{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}"#,
                "\"prompt\": the prompt ends with an assistant message",
            ),
            (
                r#"{"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": [], "non_preferred_output": []}"#,
                "\"preferred_output\": expected one assistant message, got 0 message(s)",
            ),
            (
                r#"{"input": {}, "preferred_output": [], "non_preferred_output": []}"#,
                "\"input\": missing \"messages\"",
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
