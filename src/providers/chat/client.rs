//! One chat provider over HTTP: options, the response cache, usage and cost.

use std::sync::{Mutex, PoisonError};

use super::openai::{Options, ParsedReply};
use super::{
    anthropic, openai, ChatClient, ChatProviderConfig, ChatProviderKind, ChatRequest, ChatResponse,
    Usage, UsageTotals,
};
use crate::net::secret::ApiKey;
use crate::providers::cache::ResponseCache;
use crate::providers::env::{resolve_base_url, Env};
use crate::providers::error::{ProviderError, Result};
use crate::providers::http::{Auth, HttpRequest, Transport};

/// A chat client for one provider.
#[derive(Debug)]
pub struct HttpChatClient {
    name: String,
    kind: ChatProviderKind,
    model: String,
    base_url: String,
    defaults: Options,
    transport: Transport,
    cache: Option<ResponseCache>,
    /// US dollars per million input and output tokens.
    prices: Option<(f64, f64)>,
    usage: Mutex<UsageTotals>,
}

impl HttpChatClient {
    /// Builds the client; keys and endpoint overrides come from `env`.
    pub fn from_config(cfg: &ChatProviderConfig, env: &Env) -> Result<Self> {
        let name = cfg.display_name();
        let config_error =
            |msg: String| ProviderError::Config(format!("chat provider {name}: {msg}"));
        if cfg.model.trim().is_empty() {
            return Err(config_error("`model` is empty".to_string()));
        }
        if cfg.provider == ChatProviderKind::Anthropic && cfg.seed.is_some() {
            return Err(config_error(
                "`seed` is not supported by the Anthropic Messages API; remove it".to_string(),
            ));
        }
        let (default_url, url_var, key_var) = cfg.provider.endpoint_defaults();
        let base_url = match (default_url, url_var) {
            (Some(default), Some(var)) => {
                resolve_base_url(cfg.base_url.as_deref(), env, var, default)
            }
            _ => cfg
                .base_url
                .as_deref()
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    config_error(
                        "`base_url` is required for an openai-compatible provider".to_string(),
                    )
                })?,
        };
        let key = match (&cfg.api_key_env, key_var) {
            (Some(var), _) => Some(env.api_key(&name, var)?),
            (None, Some((var, true))) => Some(env.api_key(&name, var)?),
            (None, Some((var, false))) => env.var(var).and_then(ApiKey::new),
            (None, None) => None,
        };
        let auth = match (key, cfg.provider) {
            (None, _) => Auth::None,
            (Some(key), ChatProviderKind::Anthropic) => Auth::Header("x-api-key", key),
            (Some(key), _) => Auth::Bearer(key),
        };
        let prices = match (cfg.input_cost_per_mtok, cfg.output_cost_per_mtok) {
            (None, None) => None,
            (Some(i), Some(o)) if i >= 0.0 && o >= 0.0 => Some((i, o)),
            _ => {
                return Err(config_error(
                    "set both `input_cost_per_mtok` and `output_cost_per_mtok` (non-negative), or neither".to_string(),
                ))
            }
        };
        Ok(HttpChatClient {
            transport: Transport::new(&name, auth, cfg.http_settings()?),
            name,
            kind: cfg.provider,
            model: cfg.model.clone(),
            base_url,
            defaults: Options {
                temperature: cfg.temperature,
                max_tokens: cfg.max_tokens,
                stop: cfg.stop.clone(),
                seed: cfg.seed,
            },
            cache: cfg.cache_dir.as_ref().map(ResponseCache::new),
            prices,
            usage: Mutex::new(UsageTotals::default()),
        })
    }

    /// The endpoint in use.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The model name sent to the API.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn options(&self, request: &ChatRequest) -> Options {
        Options {
            temperature: request.temperature.or(self.defaults.temperature),
            max_tokens: request.max_tokens.or(self.defaults.max_tokens),
            stop: request.stop.clone().or_else(|| self.defaults.stop.clone()),
            seed: request.seed.or(self.defaults.seed),
        }
    }

    fn record(&self, update: impl FnOnce(&mut UsageTotals)) {
        update(&mut self.usage.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl ChatClient for HttpChatClient {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        if request.messages.is_empty() {
            return Err(ProviderError::Config(format!(
                "{}: a chat request needs at least one message",
                self.name
            )));
        }
        let options = self.options(request);
        if self.kind == ChatProviderKind::Anthropic && options.seed.is_some() {
            return Err(ProviderError::Config(format!(
                "{}: `seed` is not supported by the Anthropic Messages API",
                self.name
            )));
        }
        let (url, body) = match self.kind {
            ChatProviderKind::Anthropic => (
                format!("{}{}", self.base_url, anthropic::PATH),
                anthropic::request_body(&self.name, &self.model, &request.messages, &options)?,
            ),
            _ => (
                format!("{}{}", self.base_url, openai::PATH),
                openai::request_body(&self.model, &request.messages, &options),
            ),
        };
        let cache_key = self.cache.as_ref().map(|_| match &request.cache_salt {
            None => ResponseCache::key(&url, &body),
            Some(salt) => ResponseCache::key(&format!("{url}\0{salt}"), &body),
        });
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
            if let Some(mut hit) = cache.get::<ChatResponse>(key) {
                self.record(|u| u.cache_hits += 1);
                tracing::debug!(provider = %self.name, "chat reply from cache");
                hit.cached = true;
                return Ok(hit);
            }
        }
        let mut http_request = HttpRequest::post_json(url, &body);
        if self.kind == ChatProviderKind::Anthropic {
            http_request = http_request.header("anthropic-version", anthropic::VERSION);
        }
        let reply = self.transport.send(&http_request)?;
        let parsed: ParsedReply = match self.kind {
            ChatProviderKind::Anthropic => anthropic::parse_reply(&self.name, &reply.body)?,
            _ => openai::parse_reply(&self.name, &reply.body)?,
        };
        let cost_usd = self.prices.map(|(input, output)| {
            (parsed.input_tokens as f64 * input + parsed.output_tokens as f64 * output) / 1e6
        });
        self.record(|u| {
            u.requests += 1;
            u.input_tokens += parsed.input_tokens;
            u.output_tokens += parsed.output_tokens;
            match cost_usd {
                Some(cost) => u.cost_usd += cost,
                None => u.unpriced_requests += 1,
            }
        });
        tracing::debug!(
            provider = %self.name,
            input_tokens = parsed.input_tokens,
            output_tokens = parsed.output_tokens,
            "chat reply"
        );
        let response = ChatResponse {
            provider: self.name.clone(),
            model: parsed.model.unwrap_or_else(|| self.model.clone()),
            id: parsed.id,
            content: parsed.content,
            finish_reason: parsed.finish_reason,
            usage: Usage {
                input_tokens: parsed.input_tokens,
                output_tokens: parsed.output_tokens,
                cost_usd,
            },
            cached: false,
            failed_attempts: Vec::new(),
        };
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
            if let Err(e) = cache.put(key, &response) {
                tracing::warn!(provider = %self.name, "could not write the response cache: {e}");
            }
        }
        Ok(response)
    }

    fn usage(&self) -> UsageTotals {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
