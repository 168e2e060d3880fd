//! Local dataset checks with each provider's own rules, before anything is uploaded: Together's as
//! together-python `utils/files.py` (`check_file`) has them, OpenAI's from its chat fine-tuning
//! format. Unlike the SDKs, which stop at the first problem, every failing line is reported. The
//! rules are listed in docs/providers.md, "Checks before upload".

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::HostedProvider;
use crate::providers::error::{LineFailure, ProviderError, Result};

/// OpenAI's minimum number of training examples.
pub const OPENAI_MIN_EXAMPLES: usize = 10;
/// Together's minimum (constants.py `MIN_SAMPLES`).
pub const TOGETHER_MIN_EXAMPLES: usize = 1;
const MAX_IMAGES_PER_EXAMPLE: usize = 10;
const MAX_BASE64_IMAGE_LENGTH: usize = "data:image/jpeg;base64,".len() + 4 * 10 * 1024 * 1024 / 3;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub provider: HostedProvider,
    pub path: PathBuf,
    /// Non-failing examples counted.
    pub examples: usize,
    /// The detected format (Together: `general`, `conversation`, `instruction`, `preference_openai`).
    pub format: Option<String>,
    pub failures: Vec<LineFailure>,
}

impl ValidationReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report, or [`ProviderError::Dataset`] listing every failure.
    pub fn into_result(self) -> Result<Self> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(ProviderError::Dataset {
                provider: self.provider.to_string(),
                path: self.path,
                failures: self.failures,
            })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TogetherFormat {
    General,
    Conversation,
    Instruction,
    Preference,
}

impl TogetherFormat {
    const ALL: [TogetherFormat; 4] = [
        TogetherFormat::General,
        TogetherFormat::Conversation,
        TogetherFormat::Instruction,
        TogetherFormat::Preference,
    ];

    fn keys(self) -> &'static [&'static str] {
        match self {
            TogetherFormat::General => &["text"],
            TogetherFormat::Conversation => &["messages"],
            TogetherFormat::Instruction => &["prompt", "completion"],
            TogetherFormat::Preference => &["input", "preferred_output", "non_preferred_output"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            TogetherFormat::General => "general",
            TogetherFormat::Conversation => "conversation",
            TogetherFormat::Instruction => "instruction",
            TogetherFormat::Preference => "preference_openai",
        }
    }
}

/// What a hosted job trains on, and so which lines its files must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// SFT: conversations (Together also takes text and prompt/completion lines).
    Conversations,
    /// DPO: preference pairs in the shape both providers take, `input` /
    /// `preferred_output` / `non_preferred_output` (lora-train's `dpo-openai`).
    Pairs,
}

/// Checks `path` against `provider`'s rules for a job of `kind`. Only a file that cannot be
/// read is an `Err`; rule violations are in the report.
pub fn check_dataset(
    provider: HostedProvider,
    path: &Path,
    kind: DatasetKind,
) -> Result<ValidationReport> {
    let bytes = std::fs::read(path).map_err(|e| ProviderError::io(path, e))?;
    let mut report = ValidationReport {
        provider,
        path: path.to_path_buf(),
        examples: 0,
        format: None,
        failures: Vec::new(),
    };
    let fail = |report: &mut ValidationReport, line: Option<usize>, message: String| {
        report.failures.push(LineFailure { line, message });
    };
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        fail(
            &mut report,
            None,
            "only .jsonl files can be checked and uploaded (the file name must end in .jsonl)"
                .to_string(),
        );
        return Ok(report);
    }
    if bytes.is_empty() {
        fail(&mut report, None, "the file is empty".to_string());
        return Ok(report);
    }
    let mut file_format: Option<TogetherFormat> = None;
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let Ok(text) = std::str::from_utf8(raw) else {
            fail(&mut report, Some(line), "not UTF-8".to_string());
            continue;
        };
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            fail(
                &mut report,
                Some(line),
                "empty line (every line must be one JSON object)".to_string(),
            );
            continue;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                fail(&mut report, Some(line), format!("not valid JSON: {e}"));
                continue;
            }
        };
        let Value::Object(object) = value else {
            fail(&mut report, Some(line), "must be a JSON object".to_string());
            continue;
        };
        let checked = match (kind, provider) {
            (DatasetKind::Pairs, _) => check_pair_line(&object),
            (DatasetKind::Conversations, HostedProvider::Together) => check_together_line(&object)
                .and_then(|format| match file_format {
                    None => {
                        file_format = Some(format);
                        Ok(())
                    }
                    Some(first) if first != format => Err(format!(
                        "format `{}` differs from the file's format `{}` (one format per file)",
                        format.name(),
                        first.name()
                    )),
                    Some(_) => Ok(()),
                }),
            (DatasetKind::Conversations, HostedProvider::OpenAi) => check_openai_line(&object),
        };
        match checked {
            Ok(()) => report.examples += 1,
            Err(message) => fail(&mut report, Some(line), message),
        }
    }
    report.format = match (kind, provider) {
        (DatasetKind::Pairs, _) => Some(TogetherFormat::Preference.name().to_string()),
        (_, HostedProvider::Together) => file_format.map(|f| f.name().to_string()),
        (_, HostedProvider::OpenAi) => Some("chat".to_string()),
    };
    let (minimum, total) = match provider {
        HostedProvider::Together => (
            TOGETHER_MIN_EXAMPLES,
            report.examples + report.failures.len(),
        ),
        HostedProvider::OpenAi => (OPENAI_MIN_EXAMPLES, report.examples + report.failures.len()),
    };
    if total < minimum {
        fail(
            &mut report,
            None,
            format!("{total} examples; {provider} needs at least {minimum}"),
        );
    }
    Ok(report)
}

fn check_together_line(object: &Map<String, Value>) -> std::result::Result<TogetherFormat, String> {
    let mut found: Option<TogetherFormat> = None;
    for format in TogetherFormat::ALL {
        if !format.keys().iter().all(|k| object.contains_key(*k)) {
            continue;
        }
        if let Some(first) = found {
            return Err(format!(
                "keys match both the `{}` and the `{}` formats",
                first.name(),
                format.name()
            ));
        }
        found = Some(format);
        if let Some(extra) = object.keys().find(|k| !format.keys().contains(&k.as_str())) {
            return Err(format!(
                "extra key \"{extra}\" (the `{}` format takes only {})",
                format.name(),
                format.keys().join(", ")
            ));
        }
    }
    let Some(format) = found else {
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        return Err(format!(
            "no known format for keys [{}]: expected text | messages | prompt+completion | input+preferred_output+non_preferred_output",
            keys.join(", ")
        ));
    };
    match format {
        TogetherFormat::Conversation => together_messages(&object["messages"], true),
        TogetherFormat::General => content(&object["text"], "user").map(|_| ()),
        TogetherFormat::Instruction => {
            content(&object["prompt"], "user")?;
            content(&object["completion"], "assistant").map(|_| ())
        }
        TogetherFormat::Preference => together_preference(object),
    }?;
    Ok(format)
}

/// together-python `validate_messages`.
fn together_messages(messages: &Value, require_assistant: bool) -> std::result::Result<(), String> {
    let Value::Array(messages) = messages else {
        return Err("`messages` must be a list".to_string());
    };
    if messages.is_empty() {
        return Err("`messages` must not be empty".to_string());
    }
    let mut previous_role: Option<&str> = None;
    let mut has_assistant = false;
    let mut multimodal: Option<bool> = None;
    let mut images = 0;
    for (i, message) in messages.iter().enumerate() {
        let n = i + 1;
        let Value::Object(message) = message else {
            return Err(format!("message {n} must be an object"));
        };
        for key in ["role", "content"] {
            if !message.contains_key(key) {
                return Err(format!("message {n} has no `{key}`"));
            }
        }
        let weight = weight(message).map_err(|e| format!("message {n}: {e}"))?;
        let role = match &message["role"] {
            Value::String(role) if ["system", "user", "assistant"].contains(&role.as_str()) => {
                role.as_str()
            }
            Value::String(role) => {
                return Err(format!(
                    "message {n}: role `{role}` is not one of system, user, assistant"
                ))
            }
            other => return Err(format!("message {n}: role must be a string, got {other}")),
        };
        if previous_role == Some(role) {
            return Err(format!(
                "message {n}: two `{role}` messages in a row (after the optional system message, roles must alternate user/assistant)"
            ));
        }
        previous_role = Some(role);
        has_assistant |= role == "assistant";
        let (is_multimodal, n_images) =
            content(&message["content"], role).map_err(|e| format!("message {n}: {e}"))?;
        if n_images > 0 && weight.is_some_and(|w| w != 0) {
            return Err(format!(
                "message {n}: messages with images cannot have a non-zero weight"
            ));
        }
        match multimodal {
            None => multimodal = Some(is_multimodal),
            Some(m) if m != is_multimodal => {
                return Err("messages must be all multimodal lists or all plain text".to_string())
            }
            Some(_) => {}
        }
        images += n_images;
    }
    if images > MAX_IMAGES_PER_EXAMPLE {
        return Err(format!(
            "{images} images; at most {MAX_IMAGES_PER_EXAMPLE} per example"
        ));
    }
    if require_assistant && !has_assistant {
        return Err("no assistant message (at least one is required)".to_string());
    }
    Ok(())
}

/// `weight`, when present, must be the integer 0 or 1.
fn weight(message: &Map<String, Value>) -> std::result::Result<Option<i64>, String> {
    match message.get("weight") {
        None => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => match n.as_i64() {
            Some(w @ (0 | 1)) => Ok(Some(w)),
            _ => Err(format!("weight must be 0 or 1, got {n}")),
        },
        Some(other) => Err(format!("weight must be the integer 0 or 1, got {other}")),
    }
}

/// together-python `_check_message_content`: a string, or a list of text/image parts.
/// Returns (is multimodal, number of images).
fn content(value: &Value, role: &str) -> std::result::Result<(bool, usize), String> {
    match value {
        Value::String(_) => Ok((false, 0)),
        Value::Array(parts) => {
            let mut images = 0;
            for part in parts {
                let Value::Object(part) = part else {
                    return Err("`content` must be a string or a list of objects".to_string());
                };
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if !part.get("text").is_some_and(Value::is_string) {
                            return Err("a text part needs a string `text`".to_string());
                        }
                    }
                    Some("image_url") => {
                        if role != "user" {
                            return Err("only user messages can contain images".to_string());
                        }
                        let url = part
                            .get("image_url")
                            .and_then(|u| u.get("url"))
                            .and_then(Value::as_str)
                            .ok_or("an image part needs `image_url.url`")?;
                        if !["jpeg", "png", "webp"]
                            .iter()
                            .any(|fmt| url.starts_with(&format!("data:image/{fmt};base64,")))
                        {
                            return Err(
                                "an image must be a base64 JPEG, PNG or WEBP data URL".to_string()
                            );
                        }
                        if url.len() > MAX_BASE64_IMAGE_LENGTH {
                            return Err("an image is larger than 10MB".to_string());
                        }
                        images += 1;
                    }
                    Some(other) => {
                        return Err(format!(
                            "content part type `{other}` is not text or image_url"
                        ))
                    }
                    None => return Err("a content part has no `type`".to_string()),
                }
            }
            if images > MAX_IMAGES_PER_EXAMPLE {
                return Err(format!(
                    "{images} images; at most {MAX_IMAGES_PER_EXAMPLE} per example"
                ));
            }
            Ok((true, images))
        }
        other => Err(format!(
            "`content` must be a string or a list of parts, got {other}"
        )),
    }
}

/// A DPO line: the preference shape both providers take and nothing else; a pair in another
/// shape is named, so the user knows what to convert.
fn check_pair_line(object: &Map<String, Value>) -> std::result::Result<(), String> {
    let keys = TogetherFormat::Preference.keys();
    if !keys.iter().all(|k| object.contains_key(*k)) {
        if object.contains_key("chosen") || object.contains_key("rejected") {
            return Err(
                "a prompt/chosen/rejected pair (dpo-trl or dpo-seed): hosted DPO uploads \
                        the provider's shape, input/preferred_output/non_preferred_output \
                        (dpo-openai); convert the file first: lora-train data convert FILE \
                        -o OUT.jsonl --to dpo-openai"
                    .to_string(),
            );
        }
        if object.contains_key("messages") {
            return Err(
                "a conversation (\"messages\"): train.method = \"dpo\" needs preference \
                        pairs with input, preferred_output and non_preferred_output"
                    .to_string(),
            );
        }
        return Err(format!("a DPO line needs {}", keys.join(", ")));
    }
    if let Some(extra) = object.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!(
            "extra key \"{extra}\" (a preference line takes only {})",
            keys.join(", ")
        ));
    }
    together_preference(object)
}

/// together-python `validate_preference_openai`.
fn together_preference(object: &Map<String, Value>) -> std::result::Result<(), String> {
    let Some(Value::Object(input)) = object.get("input") else {
        return Err("`input` must be an object".to_string());
    };
    let messages = input.get("messages").ok_or("`input` has no `messages`")?;
    together_messages(messages, false)?;
    if messages
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("assistant")
    {
        return Err("the last input message must not be from the assistant".to_string());
    }
    for key in ["preferred_output", "non_preferred_output"] {
        let Some(Value::Array(outputs)) = object.get(key) else {
            return Err(format!("`{key}` must be a list"));
        };
        let [Value::Object(output)] = outputs.as_slice() else {
            return Err(format!("`{key}` must hold exactly one message object"));
        };
        if output.get("role").and_then(Value::as_str) != Some("assistant") {
            return Err(format!("`{key}` must be an assistant message"));
        }
        let text = output
            .get("content")
            .ok_or(format!("`{key}` has no `content`"))?;
        content(text, "assistant")?;
    }
    Ok(())
}

/// OpenAI's chat format, as its fine-tuning data checks describe it.
fn check_openai_line(object: &Map<String, Value>) -> std::result::Result<(), String> {
    const ROLES: [&str; 6] = [
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "function",
    ];
    const MESSAGE_KEYS: [&str; 8] = [
        "role",
        "content",
        "name",
        "weight",
        "function_call",
        "tool_calls",
        "tool_call_id",
        "refusal",
    ];
    let Some(messages) = object.get("messages") else {
        return Err("no `messages` list".to_string());
    };
    let Value::Array(messages) = messages else {
        return Err("`messages` must be a list".to_string());
    };
    let mut has_assistant = false;
    for (i, message) in messages.iter().enumerate() {
        let n = i + 1;
        let Value::Object(message) = message else {
            return Err(format!("message {n} must be an object"));
        };
        if let Some(key) = message.keys().find(|k| !MESSAGE_KEYS.contains(&k.as_str())) {
            return Err(format!("message {n}: unrecognized key `{key}`"));
        }
        let role = match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => role.as_str(),
            Some(Value::String(role)) => {
                return Err(format!("message {n}: unrecognized role `{role}`"))
            }
            Some(_) => return Err(format!("message {n}: role must be a string")),
            None => return Err(format!("message {n} has no `role`")),
        };
        has_assistant |= role == "assistant";
        let calls = message.contains_key("function_call") || message.contains_key("tool_calls");
        match message.get("content") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(Value::Null) | None if calls => {}
            _ => return Err(format!("message {n}: missing or non-text `content`")),
        }
        if message.contains_key("weight") {
            if role != "assistant" {
                return Err(format!(
                    "message {n}: `weight` is only allowed on assistant messages"
                ));
            }
            weight(message).map_err(|e| format!("message {n}: {e}"))?;
        }
    }
    if !has_assistant {
        return Err("no assistant message (at least one is required)".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const GOOD: &str = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":1}]}"#;

    #[test]
    fn together_reports_every_failing_line() {
        let text = [
            GOOD,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"id":7}"#,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"user","content":"q2"},{"role":"assistant","content":"a"}]}"#,
            r#"{"messages":[{"role":"user","content":"q"}]}"#,
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":2}]}"#,
            r#"{"text":"plain"}"#,
            "not json",
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":true}]}"#,
        ]
        .join("\n");
        let (_dir, path) = write("train.jsonl", &(text + "\n"));
        let report =
            check_dataset(HostedProvider::Together, &path, DatasetKind::Conversations).unwrap();
        let lines: Vec<Option<usize>> = report.failures.iter().map(|f| f.line).collect();
        assert_eq!(
            lines,
            vec![
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                Some(6),
                Some(7),
                Some(8)
            ],
            "{:#?}",
            report.failures
        );
        assert!(report.failures[0].message.contains("extra key \"id\""));
        assert!(report.failures[1].message.contains("in a row"));
        assert!(report.failures[2].message.contains("no assistant"));
        assert!(report.failures[3].message.contains("0 or 1"));
        assert!(report.failures[4].message.contains("one format per file"));
        assert_eq!(report.examples, 1);
        assert_eq!(report.format.as_deref(), Some("conversation"));
        let err = report.into_result().unwrap_err().to_string();
        assert!(err.contains("train.jsonl: line 8:"), "{err}");
    }

    #[test]
    fn together_formats_by_keys() {
        let text = "{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"prompt\":\"p\",\"completion\":3}\n";
        let (_dir, path) = write("d.jsonl", text);
        let report =
            check_dataset(HostedProvider::Together, &path, DatasetKind::Conversations).unwrap();
        assert_eq!(report.format.as_deref(), Some("instruction"));
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].line, Some(2));
        let (_dir, path) = write("d.jsonl", "{\"foo\":1}\n");
        let report =
            check_dataset(HostedProvider::Together, &path, DatasetKind::Conversations).unwrap();
        assert!(report.failures[0].message.contains("no known format"));
        let (_dir, path) = write("d.json", GOOD);
        assert!(
            !check_dataset(HostedProvider::Together, &path, DatasetKind::Conversations)
                .unwrap()
                .is_ok()
        );
        let (_dir, path) = write("d.jsonl", "");
        assert_eq!(
            check_dataset(HostedProvider::Together, &path, DatasetKind::Conversations)
                .unwrap()
                .failures[0]
                .message,
            "the file is empty"
        );
    }

    #[test]
    fn openai_needs_ten_examples_and_valid_messages() {
        let nine = [GOOD; 9].join("\n");
        let (_dir, path) = write("t.jsonl", &nine);
        let report =
            check_dataset(HostedProvider::OpenAi, &path, DatasetKind::Conversations).unwrap();
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].line, None);
        assert!(report.failures[0].message.contains("at least 10"));

        let mut lines = vec![GOOD; 10];
        lines.push(r#"{"messages":[{"role":"user","content":"q","weight":1},{"role":"assistant","content":"a"}]}"#);
        lines.push(r#"{"messages":[{"role":"robot","content":"q"}]}"#);
        lines.push(r#"{"prompt":"p"}"#);
        let (_dir, path) = write("t.jsonl", &lines.join("\n"));
        let report =
            check_dataset(HostedProvider::OpenAi, &path, DatasetKind::Conversations).unwrap();
        let failing: Vec<Option<usize>> = report.failures.iter().map(|f| f.line).collect();
        assert_eq!(failing, vec![Some(11), Some(12), Some(13)]);
        assert_eq!(report.examples, 10);
    }

    #[test]
    fn dpo_files_must_hold_the_providers_pair_shape() {
        let pair = r#"{"input":{"messages":[{"role":"user","content":"Hi"}]},"preferred_output":[{"role":"assistant","content":"Ahoy!"}],"non_preferred_output":[{"role":"assistant","content":"Hello."}]}"#;
        let text = [
            pair,
            r#"{"prompt":"Hi","chosen":"Ahoy!","rejected":"Hello."}"#,
            GOOD,
            r#"{"input":{"messages":[{"role":"user","content":"Hi"}]},"preferred_output":[],"non_preferred_output":[{"role":"assistant","content":"x"}]}"#,
        ]
        .join("\n");
        let (_dir, path) = write("pairs.jsonl", &(text + "\n"));
        for provider in [HostedProvider::Together, HostedProvider::OpenAi] {
            let report = check_dataset(provider, &path, DatasetKind::Pairs).unwrap();
            // (OpenAI also wants 10 examples: a failure of the file, not of a line.)
            let lines: Vec<usize> = report.failures.iter().filter_map(|f| f.line).collect();
            assert_eq!(lines, [2, 3, 4], "{provider}: {:?}", report.failures);
            assert!(report.failures[0].message.contains("dpo-openai"));
            assert!(report.failures[1].message.contains("a conversation"));
            assert!(report.failures[2].message.contains("exactly one message"));
        }
    }
}
