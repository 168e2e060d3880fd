//! The held-out prompts of an evaluation: each data line cut before its last assistant turn,
//! with that turn as the reference when there is one, and the line's `id` (else its 0-based
//! index). A `limit` samples that many lines with a seed and keeps them in file order.

use std::collections::HashSet;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::dataset::read_prompt_lines;
use crate::data::{Message, Role};
use crate::harness::EvalError;
use crate::providers::chat::ChatMessage;

/// One prompt to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPrompt {
    pub id: String,
    /// The data file's line.
    pub line: usize,
    /// The conversation up to the reply to be made.
    pub messages: Vec<Message>,
    /// The data's own reply, when the line has one.
    pub reference: Option<String>,
}

impl EvalPrompt {
    /// The prompt as chat messages for a remote model or a judge.
    pub fn chat_messages(&self) -> Vec<ChatMessage> {
        self.messages
            .iter()
            .map(|m| match m.role {
                Role::System => ChatMessage::system(m.content.clone()),
                Role::User => ChatMessage::user(m.content.clone()),
                Role::Assistant => ChatMessage::assistant(m.content.clone()),
            })
            .collect()
    }
}

/// Reads the prompts of `path`; `limit` > 0 samples that many with `seed`.
pub fn read_prompts(path: &Path, limit: usize, seed: u64) -> Result<Vec<EvalPrompt>, EvalError> {
    let lines = read_prompt_lines(path)?;
    let mut prompts = Vec::with_capacity(lines.len());
    let mut ids = HashSet::new();
    for (index, line) in lines.into_iter().enumerate() {
        let fail = |msg: String| EvalError::Input {
            file: path.to_path_buf(),
            line: Some(line.line),
            msg,
        };
        let mut messages = line.messages;
        let reference = match messages.last() {
            Some(m) if m.role == Role::Assistant => messages.pop().map(|m| m.content),
            _ => None,
        };
        if !messages.iter().any(|m| m.role == Role::User) {
            return Err(fail("\"messages\": the prompt has no user turn".into()));
        }
        let id = line.id.unwrap_or_else(|| index.to_string());
        if !ids.insert(id.clone()) {
            return Err(fail(format!("\"id\": `{id}` is used by an earlier line")));
        }
        prompts.push(EvalPrompt {
            id,
            line: line.line,
            messages,
            reference,
        });
    }
    if limit > 0 && limit < prompts.len() {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut keep: Vec<usize> = order.into_iter().take(limit).collect();
        keep.sort_unstable();
        prompts = keep.into_iter().map(|i| prompts[i].clone()).collect();
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), lines.join("\n")).unwrap();
        f
    }

    #[test]
    fn prompts_keep_ids_references_and_prompt_only_lines() {
        let f = write(&[
            r#"{"id": "a", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "R1"}]}"#,
            r#"{"messages": [{"role": "user", "content": "Q2"}]}"#,
            r#"{"id": 7, "messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "Q4"}]}"#,
        ]);
        let p = read_prompts(f.path(), 0, 0).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].id.as_str(), p[0].reference.as_deref()),
            ("a", Some("R1"))
        );
        assert_eq!(p[0].messages.len(), 2);
        assert_eq!((p[1].id.as_str(), p[1].reference.as_deref()), ("1", None));
        assert_eq!((p[2].id.as_str(), p[2].messages.len()), ("7", 3));
    }

    #[test]
    fn a_prompt_without_a_user_turn_and_a_repeated_id_name_their_line() {
        let f = write(&[
            r#"{"messages": [{"role": "user", "content": "Q"}]}"#,
            r#"{"messages": [{"role": "system", "content": "S"}, {"role": "assistant", "content": "R"}]}"#,
        ]);
        let err = read_prompts(f.path(), 0, 0).unwrap_err().to_string();
        assert!(
            err.ends_with(":2: \"messages\": the prompt has no user turn"),
            "{err}"
        );
        let f = write(&[
            r#"{"id": "x", "messages": [{"role": "user", "content": "Q"}]}"#,
            r#"{"id": "x", "messages": [{"role": "user", "content": "Q"}]}"#,
        ]);
        let err = read_prompts(f.path(), 0, 0).unwrap_err().to_string();
        assert!(err.contains(":2: \"id\": `x`"), "{err}");
    }

    #[test]
    fn a_limit_samples_with_the_seed_and_keeps_file_order() {
        let lines: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"messages": [{{"role": "user", "content": "Q{i}"}}]}}"#))
            .collect();
        let f = write(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let a = read_prompts(f.path(), 5, 3).unwrap();
        assert_eq!(a, read_prompts(f.path(), 5, 3).unwrap());
        assert_eq!(a.len(), 5);
        assert!(a.windows(2).all(|w| w[0].line < w[1].line));
        assert_ne!(a, read_prompts(f.path(), 5, 4).unwrap());
    }
}
