//! The Anthropic Messages wire format (`POST {base}/v1/messages`), following anthropic-sdk-python
//! `types/message_create_params.py` and `message.py`: the key in `x-api-key` beside an
//! `anthropic-version` header, system text as a top-level field, `max_tokens` required, the reply a
//! list of content blocks with a `stop_reason`, errors as `{"type":"error","error":{type,message}}`
//! (HTTP 529: `overloaded_error`).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::openai::{Options, ParsedReply};
use super::{ChatMessage, FinishReason, Role};
use crate::providers::error::{ProviderError, Result};
use crate::providers::http::error_in_ok_reply;

pub(crate) const PATH: &str = "/v1/messages";
pub(crate) const VERSION: &str = "2023-06-01";
/// Used when neither the request nor the config sets `max_tokens`, which the API requires.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The request body; system messages must come before the conversation.
pub(crate) fn request_body(
    provider: &str,
    model: &str,
    messages: &[ChatMessage],
    options: &Options,
) -> Result<Value> {
    let mut system = Vec::new();
    let mut turns = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match message.role {
            Role::System if turns.is_empty() => system.push(message.content.as_str()),
            Role::System => {
                return Err(ProviderError::Config(format!(
                    "{provider}: message {} is a system message after the conversation started; the Messages API takes system text only at the start",
                    i + 1
                )))
            }
            Role::User => turns.push(json!({"role": "user", "content": message.content})),
            Role::Assistant => turns.push(json!({"role": "assistant", "content": message.content})),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(options.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(turns));
    if let Some(t) = options.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(stop) = &options.stop {
        body.insert("stop_sequences".into(), json!(stop));
    }
    Ok(Value::Object(body))
}

#[derive(Deserialize)]
struct Message {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

fn finish_reason(name: &str) -> FinishReason {
    match name {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Parses a 200 reply.
pub(crate) fn parse_reply(provider: &str, body: &[u8]) -> Result<ParsedReply> {
    let decode = |message: String| ProviderError::Decode {
        provider: provider.to_string(),
        path: PATH.to_string(),
        message,
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| decode(format!("malformed JSON: {e}")))?;
    if value.get("type").and_then(Value::as_str) == Some("error") {
        return Err(error_in_ok_reply(provider, &value));
    }
    let message: Message = serde_json::from_value(value).map_err(|e| decode(e.to_string()))?;
    let content = message
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect::<String>();
    let usage = message.usage.unwrap_or(MessageUsage {
        input_tokens: 0,
        output_tokens: 0,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: None,
    });
    Ok(ParsedReply {
        id: message.id,
        model: message.model,
        content,
        finish_reason: finish_reason(message.stop_reason.as_deref().unwrap_or("end_turn")),
        // Cached prompt tokens are billed too (at other rates); count them as input.
        input_tokens: usage.input_tokens
            + usage.cache_creation_input_tokens.unwrap_or(0)
            + usage.cache_read_input_tokens.unwrap_or(0),
        output_tokens: usage.output_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_goes_top_level_and_stop_becomes_stop_sequences() {
        let body = request_body(
            "p",
            "claude",
            &[ChatMessage::system("be brief"), ChatMessage::user("hi")],
            &Options {
                stop: Some(vec!["END".into()]),
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"model": "claude", "max_tokens": 1024, "system": "be brief", "messages": [{"role": "user", "content": "hi"}], "stop_sequences": ["END"]})
        );
        let late_system = [ChatMessage::user("hi"), ChatMessage::system("x")];
        assert!(request_body("p", "claude", &late_system, &Options::default()).is_err());
    }

    #[test]
    fn parses_blocks_and_stop_reason() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Hel"},{"type":"text","text":"lo"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":3}}"#;
        let reply = parse_reply("p", body).unwrap();
        assert_eq!(reply.content, "Hello");
        assert_eq!(reply.finish_reason, FinishReason::Length);
        assert_eq!((reply.input_tokens, reply.output_tokens), (10, 3));
    }
}
