//! A local model behind the chat-client trait, so it can judge (or answer) as a provider does:
//! the request's messages go through the model's chat template and greedy (or seeded) decoding.
//! Replies are cached under a hash of the model, the messages and the options, as remote ones
//! are, so a re-run judges nothing twice.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::data::{Message, Role as DataRole};
use crate::generate::{reply, GenerateOptions};
use crate::model::{load, LoadOptions, LoadedModel};
use crate::providers::cache::ResponseCache;
use crate::providers::chat::{
    ChatClient, ChatRequest, ChatResponse, FinishReason, Role, Usage, UsageTotals,
};
use crate::providers::error::Result as ProviderResult;

/// New tokens a local judge may write when the request sets no limit.
pub const DEFAULT_MAX_TOKENS: usize = 512;

/// A local model answering chat requests.
pub struct LocalChatClient {
    source: String,
    model: Mutex<LoadedModel>,
    cache: Option<ResponseCache>,
    max_tokens: usize,
    usage: Mutex<UsageTotals>,
}

impl LocalChatClient {
    /// Loads `source` (an HF folder, a Hub repo, a `.gguf`) on the CPU in f32.
    pub fn load(
        source: &str,
        max_tokens: Option<usize>,
        cache_dir: Option<PathBuf>,
    ) -> crate::Result<Self> {
        let m = load(source, &LoadOptions::default())?;
        Ok(LocalChatClient {
            source: source.to_string(),
            model: Mutex::new(m),
            cache: cache_dir.map(ResponseCache::new),
            max_tokens: max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            usage: Mutex::new(UsageTotals::default()),
        })
    }

    fn answer(&self, request: &ChatRequest) -> crate::Result<ChatResponse> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let messages: Vec<Message> = request
            .messages
            .iter()
            .map(|msg| {
                let role = match msg.role {
                    Role::System => DataRole::System,
                    Role::User => DataRole::User,
                    Role::Assistant => DataRole::Assistant,
                };
                Message::new(role, msg.content.clone())
            })
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: request.max_tokens.map_or(self.max_tokens, |t| t as usize),
            temperature: request.temperature.map_or(0.0, f64::from),
            top_p: 1.0,
            seed: request.seed.unwrap_or(0),
            stop_ids: Vec::new(),
        };
        let r = reply(&m, &messages, &opts)?;
        Ok(ChatResponse {
            provider: self.name(),
            model: self.source.clone(),
            id: None,
            content: r.text,
            finish_reason: if r.stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            },
            usage: Usage {
                input_tokens: r.prompt_tokens as u64,
                output_tokens: r.output_tokens as u64,
                cost_usd: None,
            },
            cached: false,
            failed_attempts: Vec::new(),
        })
    }

    fn key(&self, request: &ChatRequest) -> String {
        let body = serde_json::json!({
            "model": self.source,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens.map_or(self.max_tokens, |t| t as usize),
            "seed": request.seed,
        });
        ResponseCache::key("local", &body)
    }
}

impl ChatClient for LocalChatClient {
    fn name(&self) -> String {
        let file = Path::new(&self.source)
            .file_name()
            .map_or(self.source.clone(), |f| f.to_string_lossy().into_owned());
        format!("local/{file}")
    }

    fn chat(&self, request: &ChatRequest) -> ProviderResult<ChatResponse> {
        let key = self.key(request);
        let usage = |f: &dyn Fn(&mut UsageTotals)| {
            f(&mut self.usage.lock().unwrap_or_else(|p| p.into_inner()))
        };
        if let Some(mut hit) = self
            .cache
            .as_ref()
            .and_then(|c| c.get::<ChatResponse>(&key))
        {
            hit.cached = true;
            usage(&|u| u.cache_hits += 1);
            return Ok(hit);
        }
        let reply = self.answer(request)?;
        if let Some(cache) = &self.cache {
            cache.put(&key, &reply)?;
        }
        usage(&|u| {
            u.requests += 1;
            u.input_tokens += reply.usage.input_tokens;
            u.output_tokens += reply.usage.output_tokens;
            u.unpriced_requests += 1;
        });
        Ok(reply)
    }

    fn usage(&self) -> UsageTotals {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
