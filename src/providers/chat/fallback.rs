//! An ordered fallback chain: the primary, then each fallback in turn, until one answers.
//!
//! Each client has already spent its own retries when it fails, so the chain moves
//! on at once; when every client fails the error lists each failure in order.

use super::{ChatClient, ChatRequest, ChatResponse, FailedAttempt, UsageTotals};
use crate::providers::error::{ProviderError, Result};

/// Clients tried in order.
pub struct FallbackChain {
    clients: Vec<Box<dyn ChatClient>>,
}

impl FallbackChain {
    /// A chain; the first client is the primary.
    pub fn new(clients: Vec<Box<dyn ChatClient>>) -> Self {
        FallbackChain { clients }
    }

    /// The clients, primary first.
    pub fn clients(&self) -> &[Box<dyn ChatClient>] {
        &self.clients
    }
}

impl std::fmt::Debug for FallbackChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.clients.iter().map(|c| c.name()).collect();
        f.debug_struct("FallbackChain")
            .field("clients", &names)
            .finish()
    }
}

impl ChatClient for FallbackChain {
    fn name(&self) -> String {
        self.clients
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(" -> ")
    }

    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        let mut failed = Vec::new();
        for (i, client) in self.clients.iter().enumerate() {
            match client.chat(request) {
                Ok(mut response) => {
                    failed.extend(std::mem::take(&mut response.failed_attempts));
                    response.failed_attempts = failed;
                    return Ok(response);
                }
                Err(e) => {
                    if i + 1 < self.clients.len() {
                        tracing::warn!(provider = %client.name(), "failed, falling back: {e}");
                    }
                    failed.push(FailedAttempt {
                        provider: client.name(),
                        error: e.to_string(),
                    });
                }
            }
        }
        Err(ProviderError::AllFailed {
            failures: failed.into_iter().map(|f| f.error).collect(),
        })
    }

    fn usage(&self) -> UsageTotals {
        let mut total = UsageTotals::default();
        for client in &self.clients {
            total.add(&client.usage());
        }
        total
    }
}
