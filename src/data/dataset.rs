//! OpenAI `messages` JSONL datasets: reading and validation with line numbers.
//!
//! One conversation per line, `{"messages": [{"role": ..., "content": ..., "weight": 0|1}, ...]}`,
//! as in OpenAI's chat fine-tuning format. Roles are `system`, `user` and `assistant`;
//! `weight` (assistant turns only) set to 0 keeps a turn out of the loss; `reasoning_content`
//! (assistant turns only) is the turn's reasoning, which templates that know it (Qwen3's) render
//! in a `<think>` block, as do inline `<think>…</think>` blocks in `content`. Other keys are ignored.
//! Every error names the file, the 1-based line and the field at fault. A file in another format
//! of [`crate::data::formats`] is read through that table.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role as chat templates and the OpenAI API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// OpenAI's per-turn weight: `Some(0)` keeps this assistant turn out of the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    /// An assistant turn's reasoning (transformers' and vLLM's `reasoning_content`), passed to
    /// the chat template as that field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl Message {
    /// A message without a weight.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            weight: None,
            reasoning_content: None,
        }
    }

    /// Whether this is an assistant turn that is trained on (weight absent or 1).
    pub fn is_trained_assistant(&self) -> bool {
        self.role == Role::Assistant && self.weight != Some(0)
    }
}

/// One training example: a conversation with at least one assistant turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

/// Reads and validates a JSONL dataset. Blank lines are skipped; an empty file is an error.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Conversation>> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, c)| c)
        .collect())
}

/// [`read_jsonl`] with each conversation's 1-based line in the file, for errors that name it.
///
/// A file whose first line is another format of [`crate::data::formats`] (ShareGPT, Alpaca,
/// ChatML, SFT, gauntlet, or a DPO format, whose chosen replies are read) is read through that
/// table; an OpenAI file, or one no format fits, as above.
pub fn read_jsonl_numbered(path: impl AsRef<Path>) -> Result<Vec<(usize, Conversation)>> {
    let path = path.as_ref();
    if let Some(format) = other_format(path)? {
        return read_other_format(path, format);
    }
    each_line(path, |_, obj| {
        let messages = messages_of(obj)?;
        if !messages.iter().any(|m| m.role == Role::Assistant) {
            return Err("no assistant turn".to_string());
        }
        Ok(Conversation { messages })
    })
}

/// The format of the file's first line when it is one of the table's other than OpenAI.
fn other_format(path: &Path) -> Result<Option<crate::data::formats::Format>> {
    use crate::data::formats::Format;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let first = bytes
        .split(|b| *b == b'\n')
        .map(|l| {
            String::from_utf8_lossy(l)
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .find(|l| !l.trim().is_empty());
    let Some(Ok(Value::Object(obj))) = first.map(|l| serde_json::from_str::<Value>(&l)) else {
        return Ok(None);
    };
    Ok(Format::detect(&obj)
        .map(|(f, _)| f)
        .filter(|f| *f != Format::OpenAi))
}

fn read_other_format(
    path: &Path,
    format: crate::data::formats::Format,
) -> Result<Vec<(usize, Conversation)>> {
    use crate::data::formats::{read_records, Kind};
    let file = read_records(path, Some(format))?;
    if format.kind() == Kind::Preference {
        tracing::warn!(
            "{}: a {format} file of preference pairs; SFT trains on each prompt and its chosen \
             reply (train.method = \"dpo\" trains on the pairs)",
            path.display()
        );
    }
    file.records
        .into_iter()
        .map(|(line, record)| {
            let messages = record.conversation();
            if !messages.iter().any(|m| m.role == Role::Assistant) {
                return Err(Error::Dataset {
                    path: path.to_path_buf(),
                    line,
                    msg: format!("no assistant turn (reading as {format})"),
                });
            }
            Ok((line, Conversation { messages }))
        })
        .collect()
}

/// One line of a prompts file: its `id` (a string or a number, as written) and its messages,
/// which need no assistant turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptLine {
    pub line: usize,
    pub id: Option<String>,
    pub messages: Vec<Message>,
}

/// A JSONL line's `id`: a string, or a number as written; `None` when absent or null.
pub fn line_id(
    obj: &serde_json::Map<String, Value>,
) -> std::result::Result<Option<String>, String> {
    match obj.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "\"id\" must be a string or a number, got {}",
            json_type(other)
        )),
    }
}

/// Reads a JSONL file of conversations for evaluation: as [`read_jsonl`], but a line may end
/// before any assistant turn (a prompt without a reference) and keeps its `id`.
pub fn read_prompt_lines(path: impl AsRef<Path>) -> Result<Vec<PromptLine>> {
    Ok(each_line(path.as_ref(), |line, obj| {
        let id = line_id(obj)?;
        Ok(PromptLine {
            line,
            id,
            messages: messages_of(obj)?,
        })
    })?
    .into_iter()
    .map(|(_, p)| p)
    .collect())
}

fn messages_of(obj: &serde_json::Map<String, Value>) -> std::result::Result<Vec<Message>, String> {
    let Some(messages) = obj.get("messages") else {
        if obj.contains_key("chosen") || obj.contains_key("preferred_output") {
            return Err(
                "missing \"messages\": this line is a preference pair, which only \
                        `train.method = \"dpo\"` reads"
                    .to_string(),
            );
        }
        return Err("missing \"messages\"".to_string());
    };
    parse_message_list(messages)
}

/// Each non-blank line of a JSONL file as a JSON object, through `f`; errors name the line.
pub(crate) fn each_line<T>(
    path: &Path,
    mut f: impl FnMut(usize, &serde_json::Map<String, Value>) -> std::result::Result<T, String>,
) -> Result<Vec<(usize, T)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut items = Vec::new();
    for (index, raw_line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = index + 1;
        let err = |msg: String| Error::Dataset {
            path: path.to_path_buf(),
            line: line_no,
            msg,
        };
        let line =
            std::str::from_utf8(raw_line).map_err(|e| err(format!("not valid UTF-8: {e}")))?;
        let line = if index == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = &value else {
            return Err(err(format!(
                "expected a JSON object with \"messages\", got {}",
                json_type(&value)
            )));
        };
        items.push((line_no, f(line_no, obj).map_err(err)?));
    }
    if items.is_empty() {
        return Err(Error::Dataset {
            path: path.to_path_buf(),
            line: 1,
            msg: "the file has no conversations".to_string(),
        });
    }
    Ok(items)
}

/// Reads the messages of one conversation from a JSON file holding either a list of messages
/// or `{"messages": [...]}` (for `generate --messages FILE.json`). No assistant turn is required.
pub fn parse_messages_json(path: impl AsRef<Path>) -> Result<Vec<Message>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let err = |line: usize, msg: String| Error::Dataset {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let value: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| err(e.line().max(1), format!("not valid JSON: {e}")))?;
    let messages = match &value {
        Value::Array(_) => &value,
        Value::Object(obj) => obj
            .get("messages")
            .ok_or_else(|| err(1, "missing \"messages\"".to_string()))?,
        other => {
            return Err(err(
                1,
                format!(
                    "expected a list of messages or an object with \"messages\", got {}",
                    json_type(other)
                ),
            ))
        }
    };
    parse_message_list(messages).map_err(|msg| err(1, msg))
}

/// Validates a `messages` value; the error says which field is wrong, e.g.
/// `messages[2].role: unknown role "bot" (expected system, user or assistant)`.
pub(crate) fn parse_message_list(value: &Value) -> std::result::Result<Vec<Message>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "\"messages\": expected a list, got {}",
            json_type(value)
        ));
    };
    if items.is_empty() {
        return Err("\"messages\" is empty".to_string());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_message(i, item))
        .collect()
}

fn parse_message(i: usize, item: &Value) -> std::result::Result<Message, String> {
    let Value::Object(obj) = item else {
        return Err(format!(
            "messages[{i}]: expected an object, got {}",
            json_type(item)
        ));
    };
    let role = match obj.get("role") {
        None => return Err(format!("messages[{i}].role: missing")),
        Some(Value::String(s)) => Role::parse(s).ok_or_else(|| {
            format!("messages[{i}].role: unknown role {s:?} (expected system, user or assistant)")
        })?,
        Some(other) => {
            return Err(format!(
                "messages[{i}].role: expected a string, got {}",
                json_type(other)
            ))
        }
    };
    let content = match obj.get("content") {
        None => return Err(format!("messages[{i}].content: missing")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "messages[{i}].content: expected a string, got {}",
                json_type(other)
            ))
        }
    };
    let weight = match obj.get("weight") {
        None | Some(Value::Null) => None,
        Some(w) => {
            let w = match w.as_u64() {
                Some(0) => 0,
                Some(1) => 1,
                _ => return Err(format!("messages[{i}].weight: must be 0 or 1, got {w}")),
            };
            if role != Role::Assistant {
                return Err(format!(
                    "messages[{i}].weight: only assistant messages take a weight (this one is {role})"
                ));
            }
            Some(w)
        }
    };
    let reasoning_content = match obj.get("reasoning_content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if role == Role::Assistant => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(format!(
                "messages[{i}].reasoning_content: only assistant messages take reasoning (this one is {role})"
            ))
        }
        Some(other) => {
            return Err(format!(
                "messages[{i}].reasoning_content: expected a string, got {}",
                json_type(other)
            ))
        }
    };
    Ok(Message {
        role,
        content,
        weight,
        reasoning_content,
    })
}

pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
