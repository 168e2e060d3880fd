//! Chat clients behind one trait: OpenAI-compatible servers (OpenAI, Together, OpenRouter, vLLM,
//! llama.cpp, any `base_url`) and Anthropic's Messages API. [`build_chat_client`] turns an ordered
//! list of [`ChatProviderConfig`]s (the TOML shape of one provider, primary first) into one
//! [`ChatClient`] that falls back in order. The wire formats live in [`openai`] and [`anthropic`],
//! the shared client (cache, usage, retries) in [`client`].

pub mod anthropic;
pub mod client;
pub mod fallback;
pub mod openai;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::env::Env;
use super::error::{ProviderError, Result};
use super::http::HttpSettings;
use crate::net::retry::RetryPolicy;

pub use client::HttpChatClient;
pub use fallback::FallbackChain;

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A chat request. Options left `None` take the provider's configured value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    /// Mixed into the response cache's key, never sent: requests with the same body that must
    /// not share a cached reply (the examples of a synthetic-data run, which ask the same
    /// prompt for separate samples) each give their own.
    pub cache_salt: Option<String>,
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            messages,
            ..ChatRequest::default()
        }
    }
}

/// Why generation stopped, mapped from each API's own names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end or a stop sequence (`stop`, `eos`, `end_turn`, `stop_sequence`).
    Stop,
    /// The token limit (`length`, `max_tokens`).
    Length,
    /// A tool call was requested.
    ToolCalls,
    /// Filtered or refused (`content_filter`, `refusal`).
    ContentFilter,
    /// Anything else, as the API named it.
    Other(String),
}

/// Tokens of one reply and, when prices are configured, its cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// US dollars, from the configured per-million-token prices.
    pub cost_usd: Option<f64>,
}

/// A chat reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The provider that answered (its configured name).
    pub provider: String,
    /// The model that answered, as the API reported it.
    pub model: String,
    pub id: Option<String>,
    pub content: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// True when the reply came from the on-disk cache (nothing was paid for it).
    #[serde(default)]
    pub cached: bool,
    /// The providers of a fallback chain that failed before this one answered, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
}

/// A provider that failed (after its own retries) before another in the chain answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub provider: String,
    pub error: String,
}

/// Usage added up over a client's lifetime. Cache hits cost nothing and are counted apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    /// Replies received from the network.
    pub requests: u64,
    /// Replies served from the cache.
    pub cache_hits: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The cost of priced replies, in US dollars.
    pub cost_usd: f64,
    /// Replies for which no price was configured.
    pub unpriced_requests: u64,
}

impl UsageTotals {
    pub(crate) fn add(&mut self, other: &UsageTotals) {
        self.requests += other.requests;
        self.cache_hits += other.cache_hits;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_usd += other.cost_usd;
        self.unpriced_requests += other.unpriced_requests;
    }
}

/// A chat model behind some API.
pub trait ChatClient: Send + Sync {
    /// A name for logs and reports (the provider's configured name).
    fn name(&self) -> String;
    /// Sends one request (retrying, caching and falling back as configured).
    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse>;
    /// What this client has used so far.
    fn usage(&self) -> UsageTotals;
}

/// The API family and defaults of a chat provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatProviderKind {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "together")]
    Together,
    #[serde(rename = "openrouter")]
    OpenRouter,
    #[serde(rename = "vllm")]
    Vllm,
    #[serde(rename = "llamacpp", alias = "llama.cpp", alias = "llama-cpp")]
    LlamaCpp,
    /// Any OpenAI-compatible server; `base_url` is required.
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl ChatProviderKind {
    /// The name used in TOML and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatProviderKind::OpenAi => "openai",
            ChatProviderKind::Together => "together",
            ChatProviderKind::OpenRouter => "openrouter",
            ChatProviderKind::Vllm => "vllm",
            ChatProviderKind::LlamaCpp => "llamacpp",
            ChatProviderKind::OpenAiCompatible => "openai-compatible",
            ChatProviderKind::Anthropic => "anthropic",
        }
    }

    /// The default endpoint, its override variable, and the key variable (with
    /// whether the key is required).
    pub fn endpoint_defaults(
        self,
    ) -> (
        Option<&'static str>,
        Option<&'static str>,
        Option<(&'static str, bool)>,
    ) {
        match self {
            ChatProviderKind::OpenAi => (
                Some("https://api.openai.com/v1"),
                Some("OPENAI_BASE_URL"),
                Some(("OPENAI_API_KEY", true)),
            ),
            ChatProviderKind::Together => (
                Some("https://api.together.xyz/v1"),
                Some("TOGETHER_BASE_URL"),
                Some(("TOGETHER_API_KEY", true)),
            ),
            ChatProviderKind::OpenRouter => (
                Some("https://openrouter.ai/api/v1"),
                Some("OPENROUTER_BASE_URL"),
                Some(("OPENROUTER_API_KEY", true)),
            ),
            ChatProviderKind::Vllm => (
                Some("http://localhost:8000/v1"),
                Some("VLLM_BASE_URL"),
                Some(("VLLM_API_KEY", false)),
            ),
            ChatProviderKind::LlamaCpp => (
                Some("http://localhost:8080/v1"),
                Some("LLAMACPP_BASE_URL"),
                Some(("LLAMACPP_API_KEY", false)),
            ),
            ChatProviderKind::OpenAiCompatible => (None, None, None),
            ChatProviderKind::Anthropic => (
                Some("https://api.anthropic.com"),
                Some("ANTHROPIC_BASE_URL"),
                Some(("ANTHROPIC_API_KEY", true)),
            ),
        }
    }
}

/// One chat provider, as written in a TOML table.
///
/// ```toml
/// [[judge.providers]]
/// provider = "anthropic"
/// model = "claude-sonnet-4-5"
/// temperature = 0.0
/// max_tokens = 1024
/// requests_per_minute = 50
/// cache_dir = ".cache/judge"
/// input_cost_per_mtok = 3.0
/// output_cost_per_mtok = 15.0
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatProviderConfig {
    pub provider: ChatProviderKind,
    pub model: String,
    /// A name for logs and reports; defaults to `provider/model`.
    pub name: Option<String>,
    /// Overrides the endpoint (else the provider's `*_BASE_URL` variable, else its default).
    pub base_url: Option<String>,
    /// The environment variable holding the key (else the provider's default variable).
    pub api_key_env: Option<String>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<u64>,
    /// Per-request timeout in seconds (default 600).
    pub timeout_secs: Option<f64>,
    /// Retries after the first attempt (default 2).
    pub max_retries: Option<u32>,
    /// First backoff in milliseconds (default 500).
    pub initial_backoff_ms: Option<u64>,
    /// Longest backoff in milliseconds (default 8000).
    pub max_backoff_ms: Option<u64>,
    /// Longest server-requested wait obeyed, in seconds (default 60).
    pub max_retry_after_secs: Option<f64>,
    /// Requests in flight at once.
    pub max_concurrency: Option<usize>,
    /// Requests started per minute.
    pub requests_per_minute: Option<u32>,
    /// Directory of the response cache; no cache when unset.
    pub cache_dir: Option<PathBuf>,
    /// Price of a million input tokens, in US dollars.
    pub input_cost_per_mtok: Option<f64>,
    /// Price of a million output tokens, in US dollars.
    pub output_cost_per_mtok: Option<f64>,
}

impl ChatProviderConfig {
    /// A config with only the provider and model set.
    pub fn new(provider: ChatProviderKind, model: impl Into<String>) -> Self {
        ChatProviderConfig {
            provider,
            model: model.into(),
            name: None,
            base_url: None,
            api_key_env: None,
            temperature: None,
            max_tokens: None,
            stop: None,
            seed: None,
            timeout_secs: None,
            max_retries: None,
            initial_backoff_ms: None,
            max_backoff_ms: None,
            max_retry_after_secs: None,
            max_concurrency: None,
            requests_per_minute: None,
            cache_dir: None,
            input_cost_per_mtok: None,
            output_cost_per_mtok: None,
        }
    }

    /// The configured name, or `provider/model`.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.provider.as_str(), self.model))
    }

    /// Timeouts, retries and limits from this config.
    pub fn http_settings(&self) -> Result<HttpSettings> {
        let name = self.display_name();
        let secs = |value: Option<f64>, field: &str, default: Duration| -> Result<Duration> {
            match value {
                None => Ok(default),
                Some(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v)),
                Some(v) => Err(ProviderError::Config(format!(
                    "chat provider {name}: `{field}` must be a non-negative number of seconds, got {v}"
                ))),
            }
        };
        let defaults = RetryPolicy::default();
        let timeout = secs(self.timeout_secs, "timeout_secs", Duration::from_secs(600))?;
        if timeout.is_zero() {
            return Err(ProviderError::Config(format!(
                "chat provider {name}: `timeout_secs` must be greater than 0"
            )));
        }
        Ok(HttpSettings {
            timeout,
            retry: RetryPolicy {
                max_retries: self.max_retries.unwrap_or(defaults.max_retries),
                initial_backoff: self
                    .initial_backoff_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.initial_backoff),
                max_backoff: self
                    .max_backoff_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.max_backoff),
                max_retry_after: secs(
                    self.max_retry_after_secs,
                    "max_retry_after_secs",
                    defaults.max_retry_after,
                )?,
            },
            max_concurrency: self.max_concurrency,
            requests_per_minute: self.requests_per_minute,
        })
    }
}

/// Builds one client from an ordered list of providers (primary first, then fallbacks).
pub fn build_chat_client(
    providers: &[ChatProviderConfig],
    env: &Env,
) -> Result<Box<dyn ChatClient>> {
    match providers {
        [] => Err(ProviderError::Config(
            "no chat provider configured (give at least one)".to_string(),
        )),
        [single] => Ok(Box::new(HttpChatClient::from_config(single, env)?)),
        many => {
            let clients = many
                .iter()
                .map(|cfg| {
                    HttpChatClient::from_config(cfg, env)
                        .map(|c| Box::new(c) as Box<dyn ChatClient>)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Box::new(FallbackChain::new(clients)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects_unknown_keys() {
        let cfg: ChatProviderConfig = toml::from_str(
            r#"
provider = "anthropic"
model = "claude-x"
temperature = 0.0
max_tokens = 100
stop = ["END"]
requests_per_minute = 60
"#,
        )
        .unwrap();
        assert_eq!(cfg.provider, ChatProviderKind::Anthropic);
        assert_eq!(cfg.display_name(), "anthropic/claude-x");
        assert!(toml::from_str::<ChatProviderConfig>(
            "provider = \"openai\"\nmodel = \"m\"\napi_key = \"k\""
        )
        .is_err());
        let llama: ChatProviderConfig =
            toml::from_str("provider = \"llama.cpp\"\nmodel = \"m\"").unwrap();
        assert_eq!(llama.provider, ChatProviderKind::LlamaCpp);
    }

    #[test]
    fn settings_validate_numbers() {
        let mut cfg = ChatProviderConfig::new(ChatProviderKind::OpenAi, "m");
        cfg.max_backoff_ms = Some(5);
        cfg.timeout_secs = Some(2.5);
        let s = cfg.http_settings().unwrap();
        assert_eq!(s.retry.max_backoff, Duration::from_millis(5));
        assert_eq!(s.timeout, Duration::from_millis(2500));
        cfg.timeout_secs = Some(-1.0);
        assert!(cfg.http_settings().is_err());
    }
}
