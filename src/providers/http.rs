//! The blocking HTTP transport under every provider: auth headers, per-request
//! timeouts, client-side limits and the retry loop of [`crate::net::retry`].
//!
//! Keys go into headers here and nowhere else. Logs and errors carry the method,
//! the path and the status, never a header; text a server sends back is scrubbed
//! of the key before it reaches an error.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use super::error::{ProviderError, Result};
use super::limit::{Limiter, Permit};
use crate::net::lowercase_headers;
use crate::net::retry::{parse_retry_after, status_is_retryable, RetryPolicy, Verdict};
use crate::net::secret::ApiKey;
pub(crate) use crate::net::url::{display_path, resolve_location};

/// Timeouts, retries and limits of one client.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// The longest wait for a whole request (JSON calls) or for the first byte (downloads).
    pub timeout: Duration,
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// At most this many requests in flight.
    pub max_concurrency: Option<usize>,
    /// At most this many requests started per minute.
    pub requests_per_minute: Option<u32>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            max_concurrency: None,
            requests_per_minute: None,
        }
    }
}

/// How a provider wants its key.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// No key (a local vLLM or llama.cpp server).
    None,
    /// `Authorization: Bearer <key>` (OpenAI, Together, OpenRouter).
    Bearer(ApiKey),
    /// The key in a header of its own (`x-api-key` for Anthropic).
    Header(&'static str, ApiKey),
}

impl Auth {
    fn key(&self) -> Option<&ApiKey> {
        match self {
            Auth::None => None,
            Auth::Bearer(key) | Auth::Header(_, key) => Some(key),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub(crate) struct HttpRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<(Vec<u8>, String)>,
    /// False for presigned URLs, which must not see the provider's key.
    pub with_auth: bool,
}

impl HttpRequest {
    pub fn get(url: impl Into<String>) -> Self {
        HttpRequest {
            method: "GET",
            url: url.into(),
            headers: Vec::new(),
            body: None,
            with_auth: true,
        }
    }

    pub fn post_json(url: impl Into<String>, body: &serde_json::Value) -> Self {
        HttpRequest {
            method: "POST",
            url: url.into(),
            headers: Vec::new(),
            body: Some((
                body.to_string().into_bytes(),
                "application/json".to_string(),
            )),
            with_auth: true,
        }
    }

    pub fn post_empty(url: impl Into<String>) -> Self {
        HttpRequest {
            method: "POST",
            url: url.into(),
            headers: Vec::new(),
            body: Some((Vec::new(), "application/json".to_string())),
            with_auth: true,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A reply, with header names lower-cased.
#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers, name)
    }
}

fn header_in(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// A streamed reply body (downloads).
pub(crate) struct HttpStream {
    pub headers: Vec<(String, String)>,
    pub reader: Box<dyn Read + Send>,
    _permit: Permit,
}

impl HttpStream {
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.headers, name)
    }
}

/// `application/x-www-form-urlencoded` encoding of `pairs` (also used for query strings).
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The error a provider reported, parsed from any of the documented shapes:
/// OpenAI/Together `{"error":{message,type,param,code}}`, Anthropic
/// `{"type":"error","error":{type,message}}`, OpenRouter with a numeric `code`.
pub(crate) fn parse_api_error(body: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => parse_api_error_value(&value),
        Err(_) => (None, None, None),
    }
}

/// [`parse_api_error`] on a parsed body: (type, code, message).
pub(crate) fn parse_api_error_value(
    value: &serde_json::Value,
) -> (Option<String>, Option<String>, Option<String>) {
    let error = match value.get("error") {
        Some(e) if e.is_object() => e,
        Some(serde_json::Value::String(message)) => return (None, None, Some(message.clone())),
        _ => value,
    };
    let text = |field: &str| match error.get(field) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    (text("type"), text("code"), text("message"))
}

/// An error reported inside an HTTP 200 reply (OpenRouter, or a Messages body of
/// `type: error`). The request reached the model's provider and failed there; it is
/// not retried.
pub(crate) fn error_in_ok_reply(provider: &str, value: &serde_json::Value) -> ProviderError {
    let (kind, code, message) = parse_api_error_value(value);
    ProviderError::Api {
        provider: provider.to_string(),
        status: 200,
        kind,
        code,
        message: message.unwrap_or_else(|| "error reported inside a 200 reply".to_string()),
        retryable: false,
    }
}

/// The transport of one provider.
pub(crate) struct Transport {
    provider: String,
    auth: Auth,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
    settings: HttpSettings,
    limiter: Limiter,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("provider", &self.provider)
            .field("auth", &self.auth)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Transport {
    pub fn new(provider: &str, auth: Auth, settings: HttpSettings) -> Self {
        // Redirects are followed by hand (see `download`), so that a 302 from Together's
        // upload endpoint is seen and the key is never sent to another host.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(settings.timeout))
            .build()
            .new_agent();
        let stream_agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(settings.timeout))
            .timeout_recv_response(Some(settings.timeout))
            .build()
            .new_agent();
        let limiter = Limiter::new(settings.max_concurrency, settings.requests_per_minute);
        Transport {
            provider: provider.to_string(),
            auth,
            agent,
            stream_agent,
            settings,
            limiter,
        }
    }

    /// Text from a server, made safe to show: the key removed.
    pub fn scrub(&self, text: &str) -> String {
        match self.auth.key() {
            Some(key) => key.scrub(text),
            None => text.to_string(),
        }
    }

    fn build(&self, req: &HttpRequest) -> Result<ureq::http::Request<Vec<u8>>> {
        let mut builder = ureq::http::Request::builder()
            .method(req.method)
            .uri(&req.url)
            .header("accept", "application/json")
            .header(
                "user-agent",
                concat!("lora-train/", env!("CARGO_PKG_VERSION")),
            );
        if req.with_auth {
            match &self.auth {
                Auth::None => {}
                Auth::Bearer(key) => {
                    builder = builder.header("authorization", format!("Bearer {}", key.expose()))
                }
                Auth::Header(name, key) => builder = builder.header(*name, key.expose()),
            }
        }
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = match &req.body {
            Some((bytes, content_type)) => {
                if !content_type.is_empty() {
                    builder = builder.header("content-type", content_type.as_str());
                }
                bytes.clone()
            }
            None => Vec::new(),
        };
        builder.body(body).map_err(|e| ProviderError::Transport {
            provider: self.provider.clone(),
            method: req.method.to_string(),
            path: display_path(&req.url),
            // The http crate's message names the bad part, never a header value.
            message: format!("invalid request: {e}"),
        })
    }

    fn run(
        &self,
        agent: &ureq::Agent,
        req: &HttpRequest,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let request = self.build(req)?;
        let result = if req.body.is_some() {
            agent.run(request)
        } else {
            let (parts, _) = request.into_parts();
            agent.run(ureq::http::Request::from_parts(parts, ()))
        };
        result.map_err(|e| self.transport_error(req, e))
    }

    fn transport_error(&self, req: &HttpRequest, e: ureq::Error) -> ProviderError {
        let timed_out = match &e {
            ureq::Error::Timeout(_) => true,
            ureq::Error::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        };
        if timed_out {
            ProviderError::Timeout {
                provider: self.provider.clone(),
                method: req.method.to_string(),
                path: display_path(&req.url),
                timeout: self.settings.timeout,
            }
        } else {
            ProviderError::Transport {
                provider: self.provider.clone(),
                method: req.method.to_string(),
                path: display_path(&req.url),
                message: self.scrub(&e.to_string()),
            }
        }
    }

    fn api_error(&self, response: &HttpResponse, retryable: bool) -> ProviderError {
        let (kind, code, message) = parse_api_error(&response.body);
        let message = message.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            if text.is_empty() {
                "(empty body)".to_string()
            } else {
                text.chars().take(300).collect()
            }
        });
        ProviderError::Api {
            provider: self.provider.clone(),
            status: response.status,
            kind: kind.map(|k| self.scrub(&k)),
            code: code.map(|c| self.scrub(&c)),
            message: self.scrub(&message),
            retryable,
        }
    }

    /// Sleeps before retry `retry` if the verdict allows one; false means give up.
    fn wait_for_retry(
        &self,
        req: &HttpRequest,
        retry: u32,
        retryable: bool,
        server_wait: Option<Duration>,
        why: &str,
    ) -> bool {
        match self
            .settings
            .retry
            .verdict(retry, retryable, server_wait, rand::random::<f64>())
        {
            Verdict::GiveUp => false,
            Verdict::RetryAfter(wait) => {
                tracing::warn!(
                    provider = %self.provider,
                    method = req.method,
                    path = %display_path(&req.url),
                    retry = retry + 1,
                    wait_ms = wait.as_millis() as u64,
                    "{why}; retrying"
                );
                std::thread::sleep(wait);
                true
            }
        }
    }

    /// Sends `req`, retrying as the policy allows. Any 1xx-3xx reply is returned;
    /// a 4xx/5xx becomes [`ProviderError::Api`] once retries are spent.
    pub fn send(&self, req: &HttpRequest) -> Result<HttpResponse> {
        let mut retry = 0u32;
        loop {
            let started = Instant::now();
            let outcome = {
                let _permit = self.limiter.acquire();
                self.run(&self.agent, req).and_then(|mut response| {
                    let status = response.status().as_u16();
                    let headers = lowercase_headers(response.headers());
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(256 * 1024 * 1024)
                        .read_to_vec()
                        .map_err(|e| self.transport_error(req, e))?;
                    Ok(HttpResponse {
                        status,
                        headers,
                        body,
                    })
                })
            };
            match outcome {
                Ok(response) => {
                    tracing::debug!(
                        provider = %self.provider,
                        method = req.method,
                        path = %display_path(&req.url),
                        status = response.status,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "reply"
                    );
                    if response.status < 400 {
                        return Ok(response);
                    }
                    let lookup = |name: &str| response.header(name);
                    let retryable = status_is_retryable(response.status, &lookup, &response.body);
                    let server_wait = parse_retry_after(&lookup, SystemTime::now());
                    let why = format!("HTTP {}", response.status);
                    if !self.wait_for_retry(req, retry, retryable, server_wait, &why) {
                        return Err(self.api_error(&response, retryable));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    if !(e.is_retryable() && self.wait_for_retry(req, retry, true, None, &why)) {
                        return Err(e);
                    }
                }
            }
            retry += 1;
        }
    }

    /// [`Transport::send`], then the body as JSON of type `T`.
    pub fn send_json<T: serde::de::DeserializeOwned>(&self, req: &HttpRequest) -> Result<T> {
        let response = self.send(req)?;
        self.decode(req, &response)
    }

    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        req: &HttpRequest,
        response: &HttpResponse,
    ) -> Result<T> {
        serde_json::from_slice(&response.body).map_err(|e| ProviderError::Decode {
            provider: self.provider.clone(),
            path: display_path(&req.url),
            message: format!("HTTP {}: {e}", response.status),
        })
    }

    /// Opens a streamed GET, following up to five redirects; the key is sent to the
    /// first URL only (redirect targets are presigned).
    pub fn open_stream(&self, req: &HttpRequest) -> Result<HttpStream> {
        let mut current = req.clone();
        let mut retry = 0u32;
        let mut redirects = 0;
        loop {
            let permit = self.limiter.acquire();
            let mut response = match self.run(&self.stream_agent, &current) {
                Ok(response) => response,
                Err(e) => {
                    drop(permit);
                    if e.is_retryable()
                        && self.wait_for_retry(&current, retry, true, None, &e.to_string())
                    {
                        retry += 1;
                        continue;
                    }
                    return Err(e);
                }
            };
            let status = response.status().as_u16();
            let headers = lowercase_headers(response.headers());
            if (300..400).contains(&status) {
                let location =
                    header_in(&headers, "location").ok_or_else(|| ProviderError::Decode {
                        provider: self.provider.clone(),
                        path: display_path(&current.url),
                        message: format!("HTTP {status} without a Location header"),
                    })?;
                redirects += 1;
                if redirects > 5 {
                    return Err(ProviderError::Transport {
                        provider: self.provider.clone(),
                        method: current.method.to_string(),
                        path: display_path(&current.url),
                        message: "more than 5 redirects".to_string(),
                    });
                }
                current = HttpRequest {
                    url: resolve_location(&current.url, &location),
                    with_auth: false,
                    ..HttpRequest::get("")
                };
                continue;
            }
            if status >= 400 {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(1024 * 1024)
                    .read_to_vec()
                    .unwrap_or_default();
                drop(permit);
                let reply = HttpResponse {
                    status,
                    headers,
                    body,
                };
                let lookup = |name: &str| reply.header(name);
                let retryable = status_is_retryable(status, &lookup, &reply.body);
                let server_wait = parse_retry_after(&lookup, SystemTime::now());
                if self.wait_for_retry(
                    &current,
                    retry,
                    retryable,
                    server_wait,
                    &format!("HTTP {status}"),
                ) {
                    retry += 1;
                    continue;
                }
                return Err(self.api_error(&reply, retryable));
            }
            let reader = Box::new(response.into_body().into_reader());
            return Ok(HttpStream {
                headers,
                reader,
                _permit: permit,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("purpose", "fine-tune"), ("file_name", "my data.jsonl")]),
            "purpose=fine-tune&file_name=my+data.jsonl"
        );
        assert_eq!(form_encode(&[("ft_id", "ft-1:2")]), "ft_id=ft-1%3A2");
    }

    #[test]
    fn error_shapes() {
        let openai = br#"{"error":{"message":"Rate limit","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            parse_api_error(openai),
            (
                Some("requests".into()),
                Some("rate_limit_exceeded".into()),
                Some("Rate limit".into())
            )
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            parse_api_error(anthropic),
            (
                Some("overloaded_error".into()),
                None,
                Some("Overloaded".into())
            )
        );
        let openrouter = br#"{"error":{"code":502,"message":"Provider returned error"}}"#;
        assert_eq!(parse_api_error(openrouter).1, Some("502".into()));
        assert_eq!(parse_api_error(b"<html>"), (None, None, None));
    }
}
