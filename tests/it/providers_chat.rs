//! Chat clients against loopback mock servers that answer with the real APIs'
//! paths, bodies and error shapes (openai-python, anthropic-sdk-python, OpenRouter).

use crate::providers_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lora_train::providers::chat::HttpChatClient;
use lora_train::providers::{
    build_chat_client, ChatClient, ChatMessage, ChatProviderConfig, ChatProviderKind, ChatRequest,
    Env, FinishReason, ProviderError,
};
use providers_support::{anthropic_message, completion, MockServer, Reply};
use serde_json::json;

const OPENAI_KEY: &str = "sk-test-chat-0001";
const ANTHROPIC_KEY: &str = "sk-ant-test-0002";

fn env() -> Env {
    Env::from_pairs([
        ("OPENAI_API_KEY", OPENAI_KEY),
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
        ("OPENROUTER_API_KEY", "sk-or-test-0003"),
        ("TOGETHER_API_KEY", "tg-test-0004"),
    ])
}

/// A config pointing at `server`, with tiny backoffs so that retries cost milliseconds.
fn config(kind: ChatProviderKind, server: &MockServer) -> ChatProviderConfig {
    let mut cfg = ChatProviderConfig::new(kind, "mock-model");
    cfg.base_url = Some(match kind {
        ChatProviderKind::Anthropic => server.url(),
        _ => format!("{}/v1", server.url()),
    });
    cfg.initial_backoff_ms = Some(1);
    cfg.max_backoff_ms = Some(5);
    cfg.timeout_secs = Some(5.0);
    cfg
}

fn hello() -> ChatRequest {
    ChatRequest::new(vec![
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hello"),
    ])
}

#[test]
fn openai_request_shape_usage_and_cost() {
    let server = MockServer::start(|_| Reply::json(200, completion("Hi there", 12, 3)));
    let mut cfg = config(ChatProviderKind::OpenAi, &server);
    cfg.temperature = Some(0.2);
    cfg.max_tokens = Some(64);
    cfg.stop = Some(vec!["\n\n".into()]);
    cfg.seed = Some(7);
    cfg.input_cost_per_mtok = Some(2.0);
    cfg.output_cost_per_mtok = Some(10.0);
    let client = HttpChatClient::from_config(&cfg, &env()).unwrap();
    let mut request = hello();
    request.temperature = Some(0.0);
    let reply = client.chat(&request).unwrap();
    assert_eq!(reply.content, "Hi there");
    assert_eq!(reply.finish_reason, FinishReason::Stop);
    assert_eq!(
        (reply.usage.input_tokens, reply.usage.output_tokens),
        (12, 3)
    );
    let cost = reply.usage.cost_usd.unwrap();
    assert!(
        (cost - (12.0 * 2.0 + 3.0 * 10.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(
        (sent.method.as_str(), sent.path()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(
        sent.json(),
        json!({
            "model": "mock-model",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            "temperature": 0.0,
            "max_tokens": 64,
            "stop": ["\n\n"],
            "seed": 7
        })
    );
    let totals = client.usage();
    assert_eq!(
        (totals.requests, totals.input_tokens, totals.output_tokens),
        (1, 12, 3)
    );
    assert_eq!(totals.unpriced_requests, 0);
}

#[test]
fn rate_limit_429_waits_for_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start({
        let calls = calls.clone();
        move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::openai_error(
                    429,
                    "requests",
                    Some("rate_limit_exceeded"),
                    "Rate limit reached",
                )
                .header("retry-after", "1")
            } else {
                Reply::json(200, completion("ok", 1, 1))
            }
        }
    });
    let client =
        HttpChatClient::from_config(&config(ChatProviderKind::OpenAi, &server), &env()).unwrap();
    let started = Instant::now();
    let reply = client.chat(&hello()).unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.content, "ok");
    assert_eq!(server.requests().len(), 2);
    // The backoff is capped at 5 ms, so a wait of a second can only be the server's retry-after.
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

#[test]
fn retry_after_ms_is_preferred() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start({
        let calls = calls.clone();
        move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::openai_error(429, "requests", None, "slow down")
                    .header("retry-after-ms", "300")
                    .header("retry-after", "30")
            } else {
                Reply::json(200, completion("ok", 1, 1))
            }
        }
    });
    let client =
        HttpChatClient::from_config(&config(ChatProviderKind::OpenAi, &server), &env()).unwrap();
    let started = Instant::now();
    client.chat(&hello()).unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn server_error_then_success() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start({
        let calls = calls.clone();
        move |_| match calls.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::openai_error(500, "server_error", None, "The server had an error"),
            1 => Reply::json(
                502,
                json!({"error": {"message": "Bad gateway", "type": "server_error"}}),
            ),
            _ => Reply::json(200, completion("recovered", 2, 1)),
        }
    });
    let client =
        HttpChatClient::from_config(&config(ChatProviderKind::Together, &server), &env()).unwrap();
    let reply = client.chat(&hello()).unwrap();
    assert_eq!(reply.content, "recovered");
    assert_eq!(server.count("POST", "/v1/chat/completions"), 3);
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer tg-test-0004")
    );
}

#[test]
fn anthropic_529_overloaded_is_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start({
        let calls = calls.clone();
        move |_| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::anthropic_error(529, "overloaded_error", "Overloaded")
            } else {
                Reply::json(200, anthropic_message("Bonjour", 9, 2))
            }
        }
    });
    let mut cfg = config(ChatProviderKind::Anthropic, &server);
    cfg.max_tokens = Some(50);
    cfg.stop = Some(vec!["END".into()]);
    let client = HttpChatClient::from_config(&cfg, &env()).unwrap();
    let reply = client.chat(&hello()).unwrap();
    assert_eq!(reply.content, "Bonjour");
    assert_eq!(
        (reply.usage.input_tokens, reply.usage.output_tokens),
        (9, 2)
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let sent = &requests[1];
    assert_eq!(sent.path(), "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.json(),
        json!({
            "model": "mock-model",
            "max_tokens": 50,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hello"}],
            "stop_sequences": ["END"]
        })
    );
}

#[test]
fn anthropic_529_past_the_retries_reports_the_error_type() {
    let server =
        MockServer::start(|_| Reply::anthropic_error(529, "overloaded_error", "Overloaded"));
    let mut cfg = config(ChatProviderKind::Anthropic, &server);
    cfg.max_retries = Some(2);
    let client = HttpChatClient::from_config(&cfg, &env()).unwrap();
    match client.chat(&hello()) {
        Err(ProviderError::Api {
            status: 529,
            kind,
            retryable: true,
            message,
            ..
        }) => {
            assert_eq!(kind.as_deref(), Some("overloaded_error"));
            assert_eq!(message, "Overloaded");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn malformed_json_is_a_decode_error_without_retry() {
    let server = MockServer::start(|_| {
        Reply::bytes(
            200,
            "application/json",
            b"{\"id\": \"chatcmpl-1\", \"choices\": [{",
        )
    });
    let client =
        HttpChatClient::from_config(&config(ChatProviderKind::OpenAi, &server), &env()).unwrap();
    match client.chat(&hello()) {
        Err(ProviderError::Decode { message, .. }) => {
            assert!(message.contains("malformed JSON"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn timeout_is_retried_then_reported() {
    let server = MockServer::start(|_| {
        Reply::json(200, completion("late", 1, 1)).delayed(Duration::from_millis(1500))
    });
    let mut cfg = config(ChatProviderKind::OpenAi, &server);
    cfg.timeout_secs = Some(0.2);
    cfg.max_retries = Some(1);
    let client = HttpChatClient::from_config(&cfg, &env()).unwrap();
    let started = Instant::now();
    match client.chat(&hello()) {
        Err(ProviderError::Timeout { timeout, path, .. }) => {
            assert_eq!(timeout, Duration::from_millis(200));
            assert_eq!(path, "/v1/chat/completions");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn client_errors_and_insufficient_quota_are_not_retried() {
    let cases = [
        Reply::openai_error(400, "invalid_request_error", None, "bad model"),
        Reply::openai_error(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided",
        ),
        Reply::openai_error(403, "permission_error", None, "Forbidden"),
        Reply::openai_error(
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            "You exceeded your current quota",
        ),
    ];
    for reply in cases {
        let status = reply.status;
        let server = MockServer::start(move |_| reply.clone());
        let client =
            HttpChatClient::from_config(&config(ChatProviderKind::OpenAi, &server), &env())
                .unwrap();
        match client.chat(&hello()) {
            Err(ProviderError::Api {
                status: got,
                retryable: false,
                ..
            }) => assert_eq!(got, status),
            other => panic!("{status}: {other:?}"),
        }
        assert_eq!(server.requests().len(), 1, "status {status}");
    }
}

#[test]
fn openrouter_error_inside_200_is_not_retried_and_falls_back() {
    let router = MockServer::start(|_| {
        Reply::json(
            200,
            json!({"error": {"code": 502, "message": "Provider returned error", "metadata": {"provider_name": "X"}}}),
        )
    });
    let backup = MockServer::start(|_| Reply::json(200, completion("from backup", 4, 2)));
    let mut primary = config(ChatProviderKind::OpenRouter, &router);
    primary.base_url = Some(format!("{}/api/v1", router.url()));
    let chain = build_chat_client(
        &[primary.clone(), config(ChatProviderKind::OpenAi, &backup)],
        &env(),
    )
    .unwrap();
    let reply = chain.chat(&hello()).unwrap();
    assert_eq!(reply.content, "from backup");
    assert_eq!(reply.provider, "openai/mock-model");
    assert_eq!(router.count("POST", "/api/v1/chat/completions"), 1);
    assert_eq!(
        router.requests()[0].header("authorization"),
        Some("Bearer sk-or-test-0003")
    );

    let alone = HttpChatClient::from_config(&primary, &env()).unwrap();
    match alone.chat(&hello()) {
        Err(ProviderError::Api {
            status: 200,
            code,
            retryable: false,
            ..
        }) => assert_eq!(code.as_deref(), Some("502")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fallback_to_the_second_provider_after_retries() {
    let down = MockServer::start(|_| Reply::openai_error(503, "server_error", None, "unavailable"));
    let up = MockServer::start(|_| Reply::json(200, anthropic_message("second", 3, 1)));
    let mut first = config(ChatProviderKind::OpenAi, &down);
    first.max_retries = Some(1);
    first.name = Some("primary".into());
    let mut second = config(ChatProviderKind::Anthropic, &up);
    second.name = Some("secondary".into());
    let chain = build_chat_client(&[first.clone(), second], &env()).unwrap();
    let reply = chain.chat(&hello()).unwrap();
    assert_eq!(reply.provider, "secondary");
    assert_eq!(reply.content, "second");
    assert_eq!(down.requests().len(), 2);
    // The reply says who failed before it answered.
    assert_eq!(reply.failed_attempts.len(), 1);
    assert_eq!(reply.failed_attempts[0].provider, "primary");
    assert!(
        reply.failed_attempts[0].error.contains("HTTP 503"),
        "{:?}",
        reply.failed_attempts
    );
    assert_eq!(chain.usage().requests, 1);
    assert_eq!(chain.name(), "primary -> secondary");

    let both_down = build_chat_client(&[first.clone(), first], &env()).unwrap();
    match both_down.chat(&hello()) {
        Err(ProviderError::AllFailed { failures }) => {
            assert_eq!(failures.len(), 2);
            assert!(failures[0].contains("HTTP 503"), "{failures:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn response_cache_avoids_paying_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start(|_| Reply::json(200, completion("cached answer", 10, 5)));
    let mut cfg = config(ChatProviderKind::OpenAi, &server);
    cfg.cache_dir = Some(dir.path().join("cache"));
    let first = HttpChatClient::from_config(&cfg, &env()).unwrap();
    let a = first.chat(&hello()).unwrap();
    assert!(!a.cached);
    // A new client (a re-run) over the same cache directory.
    let again = HttpChatClient::from_config(&cfg, &env()).unwrap();
    let b = again.chat(&hello()).unwrap();
    assert!(b.cached);
    assert_eq!(b.content, "cached answer");
    assert_eq!(server.requests().len(), 1);
    assert_eq!((again.usage().requests, again.usage().cache_hits), (0, 1));

    let mut other = hello();
    other.temperature = Some(0.7);
    again.chat(&other).unwrap();
    assert_eq!(server.requests().len(), 2);

    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn concurrency_limit_holds_across_threads() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start({
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        move |_| {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(80));
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Reply::json(200, completion("ok", 1, 1))
        }
    });
    let mut cfg = config(ChatProviderKind::Vllm, &server);
    cfg.max_concurrency = Some(2);
    let client =
        Arc::new(HttpChatClient::from_config(&cfg, &Env::from_pairs::<&str, &str>([])).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || client.chat(&hello()).map(|r| r.content))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), "ok");
    }
    assert_eq!(server.requests().len(), 6);
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    // vLLM without VLLM_API_KEY sends no key at all.
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("authorization").is_none()));
}

#[test]
fn endpoint_and_key_come_from_the_given_environment() {
    let server = MockServer::start(|_| Reply::json(200, completion("via env", 1, 1)));
    let env = Env::from_pairs([
        ("OPENAI_API_KEY", "sk-from-env".to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", server.url())),
    ]);
    let cfg = ChatProviderConfig::new(ChatProviderKind::OpenAi, "gpt-mock");
    let client = HttpChatClient::from_config(&cfg, &env).unwrap();
    assert_eq!(client.base_url(), format!("{}/v1", server.url()));
    assert_eq!(client.chat(&hello()).unwrap().content, "via env");
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer sk-from-env")
    );

    match HttpChatClient::from_config(
        &ChatProviderConfig::new(ChatProviderKind::Anthropic, "c"),
        &env,
    ) {
        Err(ProviderError::MissingKey { var, .. }) => assert_eq!(var, "ANTHROPIC_API_KEY"),
        other => panic!("{other:?}"),
    }
    let mut seeded = ChatProviderConfig::new(ChatProviderKind::Anthropic, "c");
    seeded.seed = Some(1);
    assert!(matches!(
        HttpChatClient::from_config(&seeded, &Env::from_pairs([("ANTHROPIC_API_KEY", "k")])),
        Err(ProviderError::Config(_))
    ));
}
