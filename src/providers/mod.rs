//! Hosted providers: [`chat`] clients (OpenAI-compatible and Anthropic, with ordered fallback,
//! usage and cost accounting and an on-disk [`cache`]) and [`hosted`] fine-tuning on Together or
//! OpenAI. Underneath: [`http`] (transport, timeouts), [`crate::net::retry`] (when and how long
//! to wait, shared with the Hub downloads of [`crate::hub`]) and [`limit`] (concurrency, requests
//! per minute). Keys come from the environment only ([`env::Env`]), live in
//! [`crate::net::secret::ApiKey`], and are never printed, logged or stored. Behaviour
//! follows the providers' own SDKs: together-python, openai-python and anthropic-sdk-python.

pub mod cache;
pub mod chat;
pub mod env;
pub mod error;
pub mod hosted;
pub mod http;
pub mod limit;

pub use crate::net::retry::RetryPolicy;
pub use crate::net::secret::ApiKey;
pub use chat::{
    build_chat_client, ChatClient, ChatMessage, ChatProviderConfig, ChatProviderKind, ChatRequest,
    ChatResponse, FinishReason, Role, Usage, UsageTotals,
};
pub use env::Env;
pub use error::{LineFailure, ProviderError};
pub use hosted::{
    DownloadKind, HostedConfig, HostedJobSpec, HostedJobs, HostedProvider, JobRecord, JobStatus,
    JobStore, SubmitOptions, WatchOptions, WatchUpdate,
};
pub use http::HttpSettings;
