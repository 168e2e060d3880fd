//! Hosted providers: chat clients with fallback and retries, and hosted fine-tuning.
//!
//! - [`chat`]: OpenAI-compatible and Anthropic Messages clients behind [`chat::ChatClient`],
//!   with ordered fallback, usage and cost accounting and an on-disk [`cache`].
//! - [`hosted`]: the same job file trained on Together or OpenAI: mapping, local
//!   dataset checks, upload, create, watch, cancel, list, download, local records.
//! - Underneath: [`http`] (blocking transport, timeouts), [`retry`] (when and how long
//!   to wait), [`limit`] (concurrency and requests per minute).
//!
//! Keys come from the environment only ([`env::Env`]), live in [`secret::ApiKey`], and
//! are never printed, logged or stored. Behaviour follows the providers' own SDKs:
//! together-python, openai-python and anthropic-sdk-python.

pub mod cache;
pub mod chat;
pub mod env;
pub mod error;
pub mod hosted;
pub mod http;
pub mod limit;
pub mod retry;
pub mod secret;

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
pub use retry::RetryPolicy;
pub use secret::ApiKey;
