//! The dataset formats, in one table: how a JSONL line of each shape becomes a record (a
//! conversation, or a preference pair) and back. `data convert`, `data validate`, `data stats`,
//! `data split` and the synthetic-data writers all go through it.
//!
//! | name | one line |
//! |---|---|
//! | `openai` | `{"messages": [{role, content, weight?}]}` |
//! | `sharegpt` | `{"conversations": [{"from": "human"\|"gpt"\|"system", "value", "weight"?}]}` |
//! | `alpaca` | `{"instruction", "input", "output"}` |
//! | `chatml` | `{"text": "<\|im_start\|>role\n…<\|im_end\|>\n…"}` |
//! | `sft` | `{"instruction", "input", "output", "metadata"}` |
//! | `dpo-trl` | `{"prompt": [msgs] \| "text", "chosen": [assistant msg] \| "text", "rejected": …}`, or TRL's implicit prompt: `chosen` and `rejected` as whole conversations sharing all but their last (assistant) message |
//! | `dpo-seed` | `{"prompt", "chosen", "rejected", "metadata"}`, all strings but the metadata |
//! | `dpo-openai` | `{"input": {"messages"}, "preferred_output": [msg], "non_preferred_output": [msg]}` (Together and OpenAI DPO) |
//! | `gauntlet` | `{"prompt", "response", "attack_type", "success", "findings"}` |
//!
//! Keys a format does not define are kept as they are and written back by every target format,
//! so `{"id": ...}` survives a conversion. What a target cannot hold (weights in ChatML, the
//! earlier turns of a multi-turn conversation in Alpaca, the rejected reply in a conversation)
//! is dropped and counted in [`Losses`], never silently. Weights stay integers: Together
//! rejects `1.0`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::data::dataset::{json_type, parse_message_list, Message, Role};
use crate::{Error, Result};

/// A dataset format of the table above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "&'static str")]
pub enum Format {
    OpenAi,
    ShareGpt,
    Alpaca,
    ChatMl,
    Sft,
    DpoTrl,
    DpoSeed,
    DpoOpenAi,
    Gauntlet,
}

/// What a format's lines hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One conversation per line.
    Chat,
    /// A prompt with a chosen and a rejected reply per line.
    Preference,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::OpenAi,
        Format::ShareGpt,
        Format::Alpaca,
        Format::ChatMl,
        Format::Sft,
        Format::DpoTrl,
        Format::DpoSeed,
        Format::DpoOpenAi,
        Format::Gauntlet,
    ];

    /// Every name, as the command line spells them.
    pub const NAMES: &'static [&'static str] = &[
        "openai",
        "sharegpt",
        "alpaca",
        "chatml",
        "sft",
        "dpo-trl",
        "dpo-seed",
        "dpo-openai",
        "gauntlet",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn kind(self) -> Kind {
        match self {
            Format::DpoTrl | Format::DpoSeed | Format::DpoOpenAi => Kind::Preference,
            _ => Kind::Chat,
        }
    }

    /// The keys this format defines; any other key of a line is carried as it is.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Format::OpenAi => &["messages"],
            Format::ShareGpt => &["conversations"],
            Format::Alpaca => &["instruction", "input", "output"],
            Format::ChatMl => &["text"],
            Format::Sft => &["instruction", "input", "output", "metadata"],
            Format::DpoTrl => &["prompt", "chosen", "rejected"],
            Format::DpoSeed => &["prompt", "chosen", "rejected", "metadata"],
            Format::DpoOpenAi => &["input", "preferred_output", "non_preferred_output"],
            Format::Gauntlet => &["prompt", "response"],
        }
    }

    /// The format a line's keys show, and why; `None` when they fit none.
    pub fn detect(obj: &Map<String, Value>) -> Option<(Format, &'static str)> {
        let has = |k: &str| obj.contains_key(k);
        Some(if has("messages") {
            (Format::OpenAi, "a \"messages\" list")
        } else if has("conversations") {
            (Format::ShareGpt, "a \"conversations\" list")
        } else if has("preferred_output") && has("input") {
            (
                Format::DpoOpenAi,
                "\"input\", \"preferred_output\", \"non_preferred_output\"",
            )
        } else if has("prompt") && has("chosen") {
            let lists = ["prompt", "chosen"]
                .iter()
                .any(|k| obj.get(*k).is_some_and(Value::is_array));
            if !lists && has("metadata") {
                (
                    Format::DpoSeed,
                    "string \"prompt\", \"chosen\", \"rejected\" and \"metadata\"",
                )
            } else {
                (Format::DpoTrl, "\"prompt\", \"chosen\", \"rejected\"")
            }
        } else if has("chosen") && has("rejected") && !has("prompt") {
            (
                Format::DpoTrl,
                "\"chosen\" and \"rejected\" without \"prompt\" (TRL's implicit prompt)",
            )
        } else if has("prompt") && has("response") {
            (Format::Gauntlet, "\"prompt\" and \"response\"")
        } else if has("instruction") && has("output") {
            if has("metadata") {
                (
                    Format::Sft,
                    "\"instruction\", \"input\", \"output\" and \"metadata\"",
                )
            } else {
                (Format::Alpaca, "\"instruction\", \"input\", \"output\"")
            }
        } else if obj
            .get("text")
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains(IM_START))
        {
            (Format::ChatMl, "a \"text\" with <|im_start|> turns")
        } else {
            return None;
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Format> for &'static str {
    fn from(f: Format) -> Self {
        f.name()
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown format `{s}` (expected {})",
                    Format::NAMES.join(", ")
                )
            })
    }
}

/// One line of a dataset, whatever its format.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Chat(ChatRecord),
    Preference(PreferenceRecord),
}

/// A conversation, and the line's keys that are not part of its format.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRecord {
    pub messages: Vec<Message>,
    pub extra: Map<String, Value>,
}

/// A prompt (messages ending with a user turn) with a chosen and a rejected assistant reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreferenceRecord {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    pub extra: Map<String, Value>,
}

impl Record {
    /// The conversation to train or measure on: a pair's prompt and chosen reply.
    pub fn conversation(&self) -> Vec<Message> {
        match self {
            Record::Chat(c) => c.messages.clone(),
            Record::Preference(p) => {
                let mut m = p.prompt.clone();
                m.push(Message::new(Role::Assistant, p.chosen.clone()));
                m
            }
        }
    }

    /// The line's keys outside its format.
    pub fn extra(&self) -> &Map<String, Value> {
        match self {
            Record::Chat(c) => &c.extra,
            Record::Preference(p) => &p.extra,
        }
    }
}

/// What conversions dropped, counted by what: "weights (chatml has none)": 12.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Losses(pub BTreeMap<String, usize>);

impl Losses {
    fn add(&mut self, what: &str) {
        *self.0.entry(what.to_string()).or_default() += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const IM_START: &str = "<|im_start|>";
const IM_END: &str = "<|im_end|>";

/// Reads one line's object as `format`; the message names the field at fault.
pub fn read_record(
    format: Format,
    obj: &Map<String, Value>,
) -> std::result::Result<Record, String> {
    let extra: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !format.keys().contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let chat = |messages| {
        Ok(Record::Chat(ChatRecord {
            messages,
            extra: extra.clone(),
        }))
    };
    match format {
        Format::OpenAi => chat(parse_message_list(required(obj, "messages")?)?),
        Format::ShareGpt => chat(read_sharegpt(required(obj, "conversations")?)?),
        Format::Alpaca | Format::Sft => {
            let instruction = string(obj, "instruction")?;
            let input = match obj.get("input") {
                None | Some(Value::Null) => String::new(),
                Some(_) => string(obj, "input")?,
            };
            let output = string(obj, "output")?;
            let mut extra = extra.clone();
            if format == Format::Sft {
                keep_metadata(&mut extra, required(obj, "metadata")?);
            }
            Ok(Record::Chat(ChatRecord {
                messages: vec![
                    Message::new(Role::User, join_input(&instruction, &input)),
                    Message::new(Role::Assistant, output),
                ],
                extra,
            }))
        }
        Format::ChatMl => chat(read_chatml(&string(obj, "text")?)?),
        Format::Gauntlet => chat(vec![
            Message::new(Role::User, string(obj, "prompt")?),
            Message::new(Role::Assistant, string(obj, "response")?),
        ]),
        Format::DpoTrl if !obj.contains_key("prompt") => {
            let (prompt, chosen, rejected) =
                implicit_prompt(required(obj, "chosen")?, required(obj, "rejected")?)?;
            Ok(Record::Preference(PreferenceRecord {
                prompt,
                chosen,
                rejected,
                extra,
            }))
        }
        Format::DpoTrl => {
            let prompt = match required(obj, "prompt")? {
                Value::String(s) => vec![Message::new(Role::User, s.clone())],
                v @ Value::Array(_) => parse_message_list(v).map_err(|e| format!("prompt: {e}"))?,
                other => {
                    return Err(format!(
                        "\"prompt\": expected a string or a list of messages, got {}",
                        json_type(other)
                    ))
                }
            };
            check_prompt(&prompt, "prompt")?;
            Ok(Record::Preference(PreferenceRecord {
                prompt,
                chosen: reply(obj, "chosen")?,
                rejected: reply(obj, "rejected")?,
                extra,
            }))
        }
        Format::DpoSeed => {
            let mut extra = extra.clone();
            keep_metadata(&mut extra, required(obj, "metadata")?);
            Ok(Record::Preference(PreferenceRecord {
                prompt: vec![Message::new(Role::User, string(obj, "prompt")?)],
                chosen: string(obj, "chosen")?,
                rejected: string(obj, "rejected")?,
                extra,
            }))
        }
        Format::DpoOpenAi => {
            let Value::Object(input) = required(obj, "input")? else {
                return Err(format!(
                    "\"input\": expected an object with \"messages\", got {}",
                    json_type(&obj["input"])
                ));
            };
            let messages = required(input, "messages").map_err(|e| format!("\"input\": {e}"))?;
            let prompt = parse_message_list(messages).map_err(|e| format!("input: {e}"))?;
            check_prompt(&prompt, "input.messages")?;
            Ok(Record::Preference(PreferenceRecord {
                prompt,
                chosen: reply(obj, "preferred_output")?,
                rejected: reply(obj, "non_preferred_output")?,
                extra,
            }))
        }
    }
}

/// Writes a record as one line of `format` (without the newline); what the format cannot hold
/// is counted in `losses`. `Err` when the record cannot be written at all (a conversation into
/// a preference format).
pub fn write_record(
    format: Format,
    record: &Record,
    losses: &mut Losses,
) -> std::result::Result<String, String> {
    let mut fields: Vec<(&str, Value)> = Vec::new();
    let extra = match (format.kind(), record) {
        (Kind::Chat, _) => {
            let (messages, mut extra) = match record {
                Record::Chat(c) => (c.messages.clone(), c.extra.clone()),
                Record::Preference(p) => {
                    losses.add("rejected replies (a conversation keeps the chosen one)");
                    (record.conversation(), p.extra.clone())
                }
            };
            write_chat(format, &messages, &mut extra, &mut fields, losses)?;
            extra
        }
        (Kind::Preference, Record::Chat(_)) => {
            return Err(format!(
                "a conversation has no rejected reply: {format} needs preference pairs \
                 (`data process` makes them)"
            ))
        }
        (Kind::Preference, Record::Preference(p)) => {
            let mut extra = p.extra.clone();
            write_pair(format, p, &mut extra, &mut fields, losses);
            extra
        }
    };
    let mut out = String::from("{");
    let all = fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(extra);
    for (i, (key, value)) in all.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&Value::String(key).to_string());
        out.push_str(": ");
        out.push_str(&value.to_string());
    }
    out.push('}');
    Ok(out)
}

fn write_chat(
    format: Format,
    messages: &[Message],
    extra: &mut Map<String, Value>,
    fields: &mut Vec<(&str, Value)>,
    losses: &mut Losses,
) -> std::result::Result<(), String> {
    match format {
        Format::OpenAi => fields.push(("messages", messages_value(messages))),
        Format::ShareGpt => {
            let turns = messages
                .iter()
                .map(|m| {
                    let from = match m.role {
                        Role::System => "system",
                        Role::User => "human",
                        Role::Assistant => "gpt",
                    };
                    let mut t = Map::new();
                    t.insert("from".into(), from.into());
                    t.insert("value".into(), m.content.clone().into());
                    if let Some(w) = m.weight {
                        t.insert("weight".into(), w.into());
                    }
                    Value::Object(t)
                })
                .collect();
            fields.push(("conversations", Value::Array(turns)));
        }
        Format::ChatMl => {
            if messages.iter().any(|m| m.weight.is_some()) {
                losses.add("weights (chatml has none)");
            }
            if let Some(m) = messages
                .iter()
                .find(|m| m.content.contains(IM_START) || m.content.contains(IM_END))
            {
                return Err(format!(
                    "a {} message holds a ChatML marker, so ChatML cannot delimit it",
                    m.role
                ));
            }
            let text = messages
                .iter()
                .map(|m| format!("{IM_START}{}\n{}{IM_END}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n");
            fields.push(("text", text.into()));
        }
        Format::Alpaca | Format::Sft | Format::Gauntlet => {
            let (user, reply) = single_turn(messages, format, losses);
            match format {
                Format::Gauntlet => {
                    fields.push(("prompt", user.into()));
                    fields.push(("response", reply.into()));
                }
                _ => {
                    fields.push(("instruction", user.into()));
                    fields.push(("input", "".into()));
                    fields.push(("output", reply.into()));
                    if format == Format::Sft {
                        let metadata = extra
                            .remove("metadata")
                            .unwrap_or_else(|| Value::Object(Map::new()));
                        fields.push(("metadata", metadata));
                    }
                }
            }
        }
        Format::DpoTrl | Format::DpoSeed | Format::DpoOpenAi => {
            return Err(format!("{format} is not a conversation format"))
        }
    }
    Ok(())
}

fn write_pair(
    format: Format,
    p: &PreferenceRecord,
    extra: &mut Map<String, Value>,
    fields: &mut Vec<(&str, Value)>,
    losses: &mut Losses,
) {
    let assistant = |text: &str| {
        Value::Array(vec![messages_value(&[Message::new(Role::Assistant, text)])
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or(Value::Null)])
    };
    match format {
        Format::DpoTrl => {
            fields.push(("prompt", messages_value(&p.prompt)));
            fields.push(("chosen", assistant(&p.chosen)));
            fields.push(("rejected", assistant(&p.rejected)));
        }
        Format::DpoOpenAi => {
            if p.prompt.iter().any(|m| m.weight.is_some()) {
                losses.add("weights in a preference prompt");
            }
            let plain: Vec<Message> = p
                .prompt
                .iter()
                .map(|m| Message::new(m.role, m.content.clone()))
                .collect();
            let mut input = Map::new();
            input.insert("messages".into(), messages_value(&plain));
            fields.push(("input", Value::Object(input)));
            fields.push(("preferred_output", assistant(&p.chosen)));
            fields.push(("non_preferred_output", assistant(&p.rejected)));
        }
        Format::DpoSeed => {
            let last_user = p
                .prompt
                .iter()
                .rposition(|m| m.role == Role::User)
                .map(|i| p.prompt[i].content.clone());
            if p.prompt.len() > 1 {
                losses.add("earlier prompt turns (dpo-seed keeps the last user turn)");
            }
            if last_user.is_none() {
                losses.add("prompts without a user turn (written empty)");
            }
            fields.push(("prompt", last_user.unwrap_or_default().into()));
            fields.push(("chosen", p.chosen.clone().into()));
            fields.push(("rejected", p.rejected.clone().into()));
            let metadata = extra
                .remove("metadata")
                .unwrap_or_else(|| Value::Object(Map::new()));
            fields.push(("metadata", metadata));
        }
        _ => debug_assert!(false, "a chat format reached write_pair"),
    }
}

/// The last user turn and the last assistant reply after it, counting what else is dropped.
fn single_turn(messages: &[Message], format: Format, losses: &mut Losses) -> (String, String) {
    let reply_at = messages.iter().rposition(|m| m.role == Role::Assistant);
    let user_at = messages[..reply_at.unwrap_or(messages.len())]
        .iter()
        .rposition(|m| m.role == Role::User);
    let kept = usize::from(reply_at.is_some()) + usize::from(user_at.is_some());
    let system = messages.iter().filter(|m| m.role == Role::System).count();
    if system > 0 {
        losses.add(&format!("system prompts ({format} has none)"));
    }
    if messages.len() > kept + system {
        losses.add(&format!("earlier turns ({format} keeps the last exchange)"));
    }
    if messages.iter().any(|m| m.weight.is_some()) {
        losses.add(&format!("weights ({format} has none)"));
    }
    if reply_at.is_none() {
        losses.add("conversations without a reply (written empty)");
    }
    let text = |i: Option<usize>| i.map(|i| messages[i].content.clone()).unwrap_or_default();
    (text(user_at), text(reply_at))
}

fn messages_value(messages: &[Message]) -> Value {
    Value::Array(
        messages
            .iter()
            .map(|m| {
                let mut o = Map::new();
                o.insert("role".into(), m.role.as_str().into());
                o.insert("content".into(), m.content.clone().into());
                if let Some(w) = m.weight {
                    o.insert("weight".into(), w.into());
                }
                Value::Object(o)
            })
            .collect(),
    )
}

/// Carries a seed format's `metadata` as an extra key; an empty one, which the format writes
/// when there is none, carries nothing.
fn keep_metadata(extra: &mut Map<String, Value>, metadata: &Value) {
    let empty = matches!(metadata, Value::Null) || metadata.as_object().is_some_and(Map::is_empty);
    if !empty {
        extra.insert("metadata".into(), metadata.clone());
    }
}

fn join_input(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str) -> std::result::Result<&'a Value, String> {
    obj.get(key).ok_or_else(|| format!("missing \"{key}\""))
}

fn string(obj: &Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    match required(obj, key)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "\"{key}\": expected a string, got {}",
            json_type(other)
        )),
    }
}

/// A reply written as a string, as one assistant message, or as a list holding one.
fn reply(obj: &Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    let message = match required(obj, key)? {
        Value::String(s) => return Ok(s.clone()),
        Value::Array(items) if items.len() == 1 => items[0].clone(),
        Value::Array(items) => {
            return Err(format!(
                "\"{key}\": expected one assistant message, got {} message(s)",
                items.len()
            ))
        }
        v @ Value::Object(_) => v.clone(),
        other => {
            return Err(format!(
                "\"{key}\": expected a string or a list with one assistant message, got {}",
                json_type(other)
            ))
        }
    };
    let msgs = parse_message_list(&Value::Array(vec![message]))
        .map_err(|e| format!("{key}: {}", e.trim_start_matches("messages[0]")))?;
    match msgs.as_slice() {
        [m] if m.role == Role::Assistant => Ok(m.content.clone()),
        [m] => Err(format!(
            "\"{key}\": the reply must be an assistant message, got role \"{}\"",
            m.role
        )),
        _ => Err(format!("\"{key}\": expected one assistant message")),
    }
}

/// A pair's prompt must have messages and must not end with the assistant: the replies follow.
fn check_prompt(prompt: &[Message], key: &str) -> std::result::Result<(), String> {
    match prompt.last() {
        None => Err(format!("\"{key}\": the prompt has no messages")),
        Some(m) if m.role == Role::Assistant => Err(format!(
            "\"{key}\": the prompt ends with an assistant message; the replies follow it"
        )),
        Some(_) => Ok(()),
    }
}

/// TRL's `extract_prompt`: the messages `chosen` and `rejected` share are the prompt, and each
/// must then end in one assistant message. Returns the prompt and the two replies.
fn implicit_prompt(
    chosen: &Value,
    rejected: &Value,
) -> std::result::Result<(Vec<Message>, String, String), String> {
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
    for (key, conv) in [("chosen", &chosen), ("rejected", &rejected)] {
        match &conv[shared..] {
            [m] if m.role == Role::Assistant => {}
            rest => {
                return Err(format!(
                    "\"{key}\": without \"prompt\", expected the shared messages and then one \
                     assistant message, got {} message(s) after the {shared} shared",
                    rest.len()
                ))
            }
        }
    }
    let prompt = chosen[..shared].to_vec();
    check_prompt(&prompt, "chosen")?;
    Ok((
        prompt,
        chosen[shared].content.clone(),
        rejected[shared].content.clone(),
    ))
}

fn read_sharegpt(value: &Value) -> std::result::Result<Vec<Message>, String> {
    let Value::Array(turns) = value else {
        return Err(format!(
            "\"conversations\": expected a list, got {}",
            json_type(value)
        ));
    };
    if turns.is_empty() {
        return Err("\"conversations\" is empty".into());
    }
    let mut out = Vec::with_capacity(turns.len());
    for (i, turn) in turns.iter().enumerate() {
        let Value::Object(t) = turn else {
            return Err(format!(
                "conversations[{i}]: expected an object, got {}",
                json_type(turn)
            ));
        };
        let role = match t.get("from") {
            Some(Value::String(s)) => match s.as_str() {
                "human" | "user" => Role::User,
                "gpt" | "assistant" => Role::Assistant,
                "system" => Role::System,
                other => {
                    return Err(format!(
                        "conversations[{i}].from: unknown speaker {other:?} (expected human, gpt or system)"
                    ))
                }
            },
            None => return Err(format!("conversations[{i}].from: missing")),
            Some(other) => {
                return Err(format!(
                    "conversations[{i}].from: expected a string, got {}",
                    json_type(other)
                ))
            }
        };
        let content = match t.get("value") {
            Some(Value::String(s)) => s.clone(),
            None => return Err(format!("conversations[{i}].value: missing")),
            Some(other) => {
                return Err(format!(
                    "conversations[{i}].value: expected a string, got {}",
                    json_type(other)
                ))
            }
        };
        let weight = match t.get("weight") {
            None | Some(Value::Null) => None,
            Some(w) => match (w.as_u64(), role) {
                (Some(w @ (0 | 1)), Role::Assistant) => Some(w as u8),
                (Some(0 | 1), _) => {
                    return Err(format!(
                        "conversations[{i}].weight: only gpt turns take a weight"
                    ))
                }
                _ => {
                    return Err(format!(
                        "conversations[{i}].weight: must be 0 or 1, got {w}"
                    ))
                }
            },
        };
        out.push(Message {
            role,
            content,
            weight,
            reasoning_content: None,
        });
    }
    Ok(out)
}

fn read_chatml(text: &str) -> std::result::Result<Vec<Message>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    if !rest.trim_start().starts_with(IM_START) {
        return Err("\"text\": expected ChatML turns starting with <|im_start|>".into());
    }
    while let Some(start) = rest.find(IM_START) {
        let i = out.len();
        let turn = &rest[start + IM_START.len()..];
        let Some(end) = turn.find(IM_END) else {
            return Err(format!("\"text\": turn {i} has no <|im_end|>"));
        };
        let body = &turn[..end];
        let (role, content) = body.split_once('\n').unwrap_or((body, ""));
        let role = match role.trim() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(format!(
                "\"text\": turn {i}: unknown role {other:?} (expected system, user or assistant)"
            ))
            }
        };
        out.push(Message::new(role, content));
        rest = &turn[end + IM_END.len()..];
        if !rest.trim_start().is_empty() && !rest.trim_start().starts_with(IM_START) {
            return Err(format!("\"text\": text after turn {i}'s <|im_end|>"));
        }
    }
    Ok(out)
}

/// A JSONL file read as records: the format used (given, or detected from the first line) and
/// each record with its 1-based line. Blank lines are skipped; errors name the file and line.
#[derive(Debug, Clone)]
pub struct RecordFile {
    pub format: Format,
    /// How the format was detected (`None` when it was given).
    pub detected_from: Option<&'static str>,
    pub records: Vec<(usize, Record)>,
}

/// Each non-blank line of a JSONL file with its 1-based line: the JSON object, or why the line
/// is not one. Only a file that cannot be read is an `Err`.
#[allow(clippy::type_complexity)]
pub fn json_lines_lenient(
    path: &std::path::Path,
) -> Result<Vec<(usize, std::result::Result<Map<String, Value>, String>)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                out.push((index + 1, Err(format!("not valid UTF-8: {e}"))));
                continue;
            }
        };
        let text = if index == 0 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        if text.trim().is_empty() {
            continue;
        }
        let parsed = match serde_json::from_str(text) {
            Ok(Value::Object(obj)) => Ok(obj),
            Ok(other) => Err(format!("expected a JSON object, got {}", json_type(&other))),
            Err(e) => Err(format!("not valid JSON: {e}")),
        };
        out.push((index + 1, parsed));
    }
    Ok(out)
}

/// Each non-blank line of a JSONL file as a JSON object with its 1-based line; the first bad
/// line, or a file without any, is an error naming the file and line.
pub fn json_lines(path: &std::path::Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let lines = json_lines_lenient(path)?
        .into_iter()
        .map(|(line, obj)| {
            obj.map(|o| (line, o)).map_err(|msg| Error::Dataset {
                path: path.to_path_buf(),
                line,
                msg,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if lines.is_empty() {
        return Err(Error::Dataset {
            path: path.to_path_buf(),
            line: 1,
            msg: "the file has no records".into(),
        });
    }
    Ok(lines)
}

/// The format of a file's first record, given or detected; an error names the line.
pub fn resolve_format(
    path: &std::path::Path,
    first: (usize, &Map<String, Value>),
    given: Option<Format>,
) -> Result<(Format, Option<&'static str>)> {
    if let Some(f) = given {
        return Ok((f, None));
    }
    let (line, obj) = first;
    Format::detect(obj)
        .map(|(f, why)| (f, Some(why)))
        .ok_or_else(|| {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            Error::Dataset {
                path: path.to_path_buf(),
                line,
                msg: format!(
                    "cannot tell the format from the keys [{}]; give --from ({})",
                    keys.join(", "),
                    Format::NAMES.join(", ")
                ),
            }
        })
}

/// Reads a file as records of `given` (or the format its first line shows); the first bad line
/// is an error naming the file, the line and the field.
pub fn read_records(path: &std::path::Path, given: Option<Format>) -> Result<RecordFile> {
    let lines = json_lines(path)?;
    let (format, detected_from) = resolve_format(path, (lines[0].0, &lines[0].1), given)?;
    let records = lines
        .into_iter()
        .map(|(line, obj)| {
            read_record(format, &obj)
                .map(|r| (line, r))
                .map_err(|msg| Error::Dataset {
                    path: path.to_path_buf(),
                    line,
                    msg: format!("{msg} (reading as {format})"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordFile {
        format,
        detected_from,
        records,
    })
}

/// A file converted in memory: its lines in the target format and what was dropped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Converted {
    pub from: Format,
    /// How `from` was detected (`None` when it was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_from: Option<&'static str>,
    pub to: Format,
    pub records: usize,
    /// What the target could not hold, counted by record.
    pub losses: Losses,
    #[serde(skip)]
    pub text: String,
}

/// Converts every record of `input` (read as `from`, or the format its first line shows) to
/// `to`; the first line that cannot be read or written is an error naming it.
pub fn convert_file(
    input: &std::path::Path,
    from: Option<Format>,
    to: Format,
) -> Result<Converted> {
    let file = read_records(input, from)?;
    let mut losses = Losses::default();
    let mut text = String::new();
    for (line, record) in &file.records {
        let out = write_record(to, record, &mut losses).map_err(|msg| Error::Dataset {
            path: input.to_path_buf(),
            line: *line,
            msg: format!("cannot write as {to}: {msg}"),
        })?;
        text.push_str(&out);
        text.push('\n');
    }
    Ok(Converted {
        from: file.format,
        detected_from: file.detected_from,
        to,
        records: file.records.len(),
        losses,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn convert(from: Format, to: Format, v: Value) -> (Value, Losses) {
        let rec = read_record(from, &obj(v)).unwrap();
        let mut losses = Losses::default();
        let line = write_record(to, &rec, &mut losses).unwrap();
        (serde_json::from_str(&line).unwrap(), losses)
    }

    #[test]
    fn detection_names_each_format() {
        let cases = [
            (json!({"messages": []}), Format::OpenAi),
            (json!({"conversations": []}), Format::ShareGpt),
            (
                json!({"instruction": "", "input": "", "output": ""}),
                Format::Alpaca,
            ),
            (
                json!({"instruction": "", "output": "", "metadata": {}}),
                Format::Sft,
            ),
            (
                json!({"text": "<|im_start|>user\nhi<|im_end|>"}),
                Format::ChatMl,
            ),
            (
                json!({"prompt": [], "chosen": [], "rejected": []}),
                Format::DpoTrl,
            ),
            (
                json!({"prompt": "p", "chosen": "c", "rejected": "r"}),
                Format::DpoTrl,
            ),
            (
                json!({"prompt": "p", "chosen": "c", "rejected": "r", "metadata": {}}),
                Format::DpoSeed,
            ),
            (
                json!({"input": {}, "preferred_output": [], "non_preferred_output": []}),
                Format::DpoOpenAi,
            ),
            (
                json!({"prompt": "p", "response": "r", "attack_type": "x"}),
                Format::Gauntlet,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(
                Format::detect(&obj(v.clone())).map(|d| d.0),
                Some(want),
                "{v}"
            );
        }
        assert!(Format::detect(&obj(json!({"text": "plain"}))).is_none());
        assert_eq!("DPO_openai".parse::<Format>(), Ok(Format::DpoOpenAi));
        assert!("dpo".parse::<Format>().unwrap_err().contains("dpo-trl"));
    }

    #[test]
    fn chat_round_trips_are_exact_and_weights_stay_integers() {
        let line = json!({"id": 7, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye!", "weight": 1}
        ]});
        let (share, l1) = convert(Format::OpenAi, Format::ShareGpt, line.clone());
        assert_eq!(
            share["conversations"][2],
            json!({"from": "gpt", "value": "Hello", "weight": 0})
        );
        let (back, l2) = convert(Format::ShareGpt, Format::OpenAi, share);
        assert_eq!(back, line);
        assert!(l1.is_empty() && l2.is_empty());
        let text = write_record(
            Format::OpenAi,
            &read_record(Format::OpenAi, &obj(line)).unwrap(),
            &mut Losses::default(),
        )
        .unwrap();
        assert!(
            text.contains("\"weight\":0") || text.contains("\"weight\": 0"),
            "{text}"
        );
        assert!(!text.contains("0.0"), "{text}");
    }

    #[test]
    fn lossy_conversions_count_what_they_drop() {
        let multi = json!({"messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}
        ]});
        let (alpaca, losses) = convert(Format::OpenAi, Format::Alpaca, multi.clone());
        assert_eq!(
            alpaca,
            json!({"instruction": "c", "input": "", "output": "d"})
        );
        assert_eq!(losses.0.len(), 3, "{losses:?}");
        let (_, losses) = convert(Format::OpenAi, Format::ChatMl, multi);
        assert_eq!(losses.0.get("weights (chatml has none)"), Some(&1));
        let pair = json!({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]});
        let (chat, losses) = convert(Format::DpoTrl, Format::OpenAi, pair);
        assert_eq!(chat["messages"][1]["content"], "good");
        assert_eq!(losses.0.values().sum::<usize>(), 1);
        let rec = read_record(
            Format::OpenAi,
            &obj(json!({"messages": [{"role": "user", "content": "q"}]})),
        )
        .unwrap();
        let err = write_record(Format::DpoOpenAi, &rec, &mut Losses::default()).unwrap_err();
        assert!(err.contains("no rejected reply"), "{err}");
    }

    #[test]
    fn preference_formats_round_trip() {
        let trl = json!({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}], "margin": 0.5});
        let (oa, l) = convert(Format::DpoTrl, Format::DpoOpenAi, trl.clone());
        assert!(l.is_empty());
        assert_eq!(oa["input"]["messages"][1]["content"], "q");
        assert_eq!(oa["non_preferred_output"][0]["content"], "bad");
        let (back, _) = convert(Format::DpoOpenAi, Format::DpoTrl, oa);
        assert_eq!(back, trl);
        let seed =
            json!({"prompt": "q", "chosen": "good", "rejected": "bad", "metadata": {"m": 1}});
        let (trl2, _) = convert(Format::DpoSeed, Format::DpoTrl, seed.clone());
        let (seed2, l) = convert(Format::DpoTrl, Format::DpoSeed, trl2);
        assert_eq!(seed2, seed);
        assert!(l.is_empty());
    }

    #[test]
    fn chatml_parses_and_refuses_bad_text() {
        let text = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nline 1\nline 2<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n";
        let rec = read_record(Format::ChatMl, &obj(json!({"text": text}))).unwrap();
        let Record::Chat(c) = &rec else { panic!() };
        assert_eq!(c.messages[1].content, "line 1\nline 2");
        let out = write_record(Format::ChatMl, &rec, &mut Losses::default()).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"].as_str().unwrap(), text.trim_end());
        for bad in [
            "no markers",
            "<|im_start|>bot\nx<|im_end|>",
            "<|im_start|>user\nx",
        ] {
            assert!(
                read_record(Format::ChatMl, &obj(json!({"text": bad}))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = read_record(
            Format::ShareGpt,
            &obj(json!({"conversations": [{"from": "bot", "value": "x"}]})),
        )
        .unwrap_err();
        assert!(
            e.starts_with("conversations[0].from: unknown speaker"),
            "{e}"
        );
        let e = read_record(Format::DpoOpenAi, &obj(json!({"input": {"messages": [{"role": "user"}]}, "preferred_output": [], "non_preferred_output": []}))).unwrap_err();
        assert!(e.contains("content: missing"), "{e}");
        let e = read_record(
            Format::Alpaca,
            &obj(json!({"instruction": 3, "output": "o"})),
        )
        .unwrap_err();
        assert_eq!(e, "\"instruction\": expected a string, got a number");
    }
}
