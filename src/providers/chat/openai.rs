//! The OpenAI chat-completions wire format (`POST {base}/chat/completions`), spoken by OpenAI,
//! Together, OpenRouter, vLLM and the llama.cpp server; follows openai-python
//! `types/chat/completion_create_params.py` and `chat_completion.py`. An upstream failure that
//! OpenRouter reports inside an HTTP 200 body (`{"error":{...}}`, or an `error` on the choice) is
//! an error, and it is not retried.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ChatMessage, FinishReason, Role};
use crate::providers::error::{ProviderError, Result};
use crate::providers::http::error_in_ok_reply;

/// Effective options of one request (the request's, else the provider's).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Options {
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
}

/// What every wire format parses a reply into.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParsedReply {
    pub id: Option<String>,
    pub model: Option<String>,
    pub content: String,
    pub finish_reason: FinishReason,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub(crate) const PATH: &str = "/chat/completions";

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// The request body.
pub(crate) fn request_body(model: &str, messages: &[ChatMessage], options: &Options) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .iter()
                .map(|m| json!({"role": role_name(m.role), "content": m.content}))
                .collect(),
        ),
    );
    if let Some(t) = options.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(n) = options.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if let Some(stop) = &options.stop {
        body.insert("stop".into(), json!(stop));
    }
    if let Some(seed) = options.seed {
        body.insert("seed".into(), json!(seed));
    }
    Value::Object(body)
}

#[derive(Deserialize)]
struct Completion {
    id: Option<String>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<CompletionUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<AssistantMessage>,
    finish_reason: Option<String>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct AssistantMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

pub(crate) fn finish_reason(name: &str) -> FinishReason {
    match name {
        "stop" | "eos" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Parses a 200 reply. `provider` names the client in errors.
pub(crate) fn parse_reply(provider: &str, body: &[u8]) -> Result<ParsedReply> {
    let decode = |message: String| ProviderError::Decode {
        provider: provider.to_string(),
        path: PATH.to_string(),
        message,
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| decode(format!("malformed JSON: {e}")))?;
    if value.get("error").is_some_and(|e| !e.is_null()) {
        return Err(error_in_ok_reply(provider, &value));
    }
    let completion: Completion =
        serde_json::from_value(value).map_err(|e| decode(e.to_string()))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| decode("no choices in the reply".to_string()))?;
    if let Some(error) = choice.error.filter(|e| !e.is_null()) {
        return Err(error_in_ok_reply(provider, &json!({ "error": error })));
    }
    let usage = completion.usage.unwrap_or(CompletionUsage {
        prompt_tokens: 0,
        completion_tokens: 0,
    });
    Ok(ParsedReply {
        id: completion.id,
        model: completion.model,
        content: choice.message.and_then(|m| m.content).unwrap_or_default(),
        finish_reason: finish_reason(choice.finish_reason.as_deref().unwrap_or("stop")),
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_only_the_set_options() {
        let body = request_body(
            "gpt-x",
            &[ChatMessage::system("s"), ChatMessage::user("hi")],
            &Options {
                temperature: Some(0.0),
                seed: Some(7),
                ..Options::default()
            },
        );
        assert_eq!(
            body,
            json!({"model": "gpt-x", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "temperature": 0.0, "seed": 7})
        );
    }

    #[test]
    fn parses_replies_and_errors_inside_200() {
        let ok = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"eos"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let reply = parse_reply("p", ok).unwrap();
        assert_eq!(reply.content, "Hello");
        assert_eq!(reply.finish_reason, FinishReason::Stop);
        assert_eq!((reply.input_tokens, reply.output_tokens), (5, 2));

        let routed = br#"{"error":{"code":502,"message":"Upstream provider error"}}"#;
        match parse_reply("p", routed) {
            Err(ProviderError::Api {
                status: 200,
                code,
                retryable: false,
                ..
            }) => assert_eq!(code.as_deref(), Some("502")),
            other => panic!("{other:?}"),
        }
        let choice_error = br#"{"id":"x","choices":[{"finish_reason":"error","error":{"code":429,"message":"Rate limited upstream"}}]}"#;
        assert!(matches!(
            parse_reply("p", choice_error),
            Err(ProviderError::Api { status: 200, .. })
        ));
        assert!(matches!(
            parse_reply("p", b"{\"choices\":"),
            Err(ProviderError::Decode { .. })
        ));
        assert!(matches!(
            parse_reply("p", b"{\"choices\":[]}"),
            Err(ProviderError::Decode { .. })
        ));
    }
}
