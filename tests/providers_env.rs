//! Keys set in the process environment reach the providers' servers and nothing else:
//! no log line (at trace level, ureq's included), no job record, no error text.
//!
//! This is the one test that reads and sets process-wide variables, so it is the only
//! test of this binary.

#[path = "it/providers_support/mod.rs"]
mod providers_support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lora_train::providers::chat::HttpChatClient;
use lora_train::providers::{
    ChatClient, ChatMessage, ChatProviderConfig, ChatProviderKind, ChatRequest, Env, HostedConfig,
    HostedJobSpec, HostedJobs, HostedProvider, HttpSettings, JobStore, RetryPolicy, SubmitOptions,
    WatchOptions,
};
use providers_support::apis::{self, Outcome, TOGETHER_JOB};
use providers_support::{completion, MockServer, Reply};

const KEYS: [(&str, &str); 4] = [
    ("TOGETHER_API_KEY", "tg-LEAKCHECK-7f3a9c1e5b2d4a60"),
    ("OPENAI_API_KEY", "sk-LEAKCHECK-91b2c3d4e5f6a7b8"),
    ("ANTHROPIC_API_KEY", "sk-ant-LEAKCHECK-0a1b2c3d4e5f6071"),
    ("OPENROUTER_API_KEY", "sk-or-LEAKCHECK-5e6f7a8b9c0d1e2f"),
];

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A server that rejects every key and, as some real APIs do, quotes it back.
fn echoing_server() -> MockServer {
    MockServer::start(|req| {
        let presented = req
            .header("x-api-key")
            .map(str::to_string)
            .or_else(|| {
                req.header("authorization")
                    .map(|a| a.trim_start_matches("Bearer ").to_string())
            })
            .unwrap_or_default();
        let message = format!("Incorrect API key provided: {presented}. You can find your API key in your account settings.");
        if req.path() == "/v1/messages" {
            Reply::anthropic_error(401, "authentication_error", &message)
        } else {
            Reply::openai_error(
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                &message,
            )
        }
    })
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned());
        }
    }
    out
}

#[test]
fn keys_from_the_environment_never_reach_logs_records_or_errors() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let writer = Capture(logs.clone());
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");

    let together = apis::together(Outcome::Fail);
    let router = MockServer::start(|_| Reply::json(200, completion("routed", 3, 1)));
    let echo = echoing_server();
    for (name, key) in KEYS {
        std::env::set_var(name, key);
    }
    std::env::set_var("TOGETHER_BASE_URL", together.base_url());
    std::env::set_var("OPENAI_BASE_URL", format!("{}/v1", echo.url()));
    std::env::set_var("ANTHROPIC_BASE_URL", echo.url());
    std::env::set_var("OPENROUTER_BASE_URL", format!("{}/api/v1", router.url()));
    let env = Env::from_process();

    let mut texts: Vec<String> = vec![format!("{env:?}")];
    let mut record = |text: String| texts.push(text);

    // Chat: a success through OpenRouter, and two rejections that quote the key back.
    for (kind, expect_ok) in [
        (ChatProviderKind::OpenRouter, true),
        (ChatProviderKind::OpenAi, false),
        (ChatProviderKind::Anthropic, false),
    ] {
        let mut cfg = ChatProviderConfig::new(kind, "mock-model");
        cfg.max_retries = Some(1);
        cfg.initial_backoff_ms = Some(1);
        cfg.max_backoff_ms = Some(2);
        let client = HttpChatClient::from_config(&cfg, &env).unwrap();
        record(format!("{client:?}"));
        let result = client.chat(&ChatRequest::new(vec![ChatMessage::user("hi")]));
        assert_eq!(result.is_ok(), expect_ok, "{kind:?}: {result:?}");
        if let Err(e) = result {
            assert!(e.to_string().contains("[redacted]"), "{e}");
            record(e.to_string());
            record(format!("{e:?}"));
        }
    }

    // Hosted: submit (endpoint from TOGETHER_BASE_URL), watch a job that fails, cancel, list.
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    std::fs::write(
        &train,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n",
    )
    .unwrap();
    let settings = HttpSettings {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retry_after: Duration::from_secs(1),
        },
        max_concurrency: None,
        requests_per_minute: None,
    };
    let records = dir.path().join("records");
    let hosted =
        HostedJobs::new(JobStore::new(&records), Env::from_process()).with_http_settings(settings);
    record(format!("{hosted:?}"));
    let mut cfg = HostedConfig::new(HostedProvider::Together);
    cfg.model = Some("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference".into());
    let spec = HostedJobSpec {
        train_file: train,
        lora_r: Some(8),
        ..HostedJobSpec::default()
    };
    let submitted = hosted
        .submit(&cfg, &spec, &SubmitOptions::default())
        .unwrap();
    assert_eq!(submitted.base_url, together.base_url());
    record(format!("{submitted:?}"));
    let watch = WatchOptions {
        poll_interval: Duration::from_millis(5),
        timeout: Some(Duration::from_secs(10)),
        progress_bar: false,
    };
    let failed = hosted
        .watch(TOGETHER_JOB, &watch, &mut |u| record(format!("{u:?}")))
        .unwrap_err();
    record(failed.to_string());
    record(format!("{failed:?}"));
    record(format!("{:?}", hosted.cancel(TOGETHER_JOB).unwrap()));
    record(format!("{:?}", hosted.list().unwrap()));

    // A Together endpoint that rejects the key and quotes it.
    cfg.base_url = Some(format!("{}/v1", echo.url()));
    let rejected = hosted
        .submit(&cfg, &spec, &SubmitOptions::default())
        .unwrap_err();
    assert!(rejected.to_string().contains("[redacted]"), "{rejected}");
    record(rejected.to_string());
    record(format!("{rejected:?}"));

    // The keys did reach the servers, so their absence below means something.
    let presented: Vec<String> = [&together.server, &router, &echo]
        .iter()
        .flat_map(|s| s.requests())
        .flat_map(|r| r.headers.into_iter().map(|(_, v)| v))
        .collect();
    for (name, key) in KEYS {
        assert!(
            presented.iter().any(|v| v.contains(key)),
            "{name} was never sent"
        );
    }

    let log_text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        log_text.contains("job created"),
        "logs were not captured:\n{log_text}"
    );
    let mut haystacks = texts.clone();
    haystacks.push(log_text);
    haystacks.extend(files_under(&records));
    assert!(files_under(&records)
        .iter()
        .any(|f| f.contains(TOGETHER_JOB)));
    for (name, key) in KEYS {
        // Any 8 characters of the key's random part: a key split across log lines is caught too.
        let secret = key.rsplit('-').next().unwrap();
        for window in secret.as_bytes().windows(8) {
            let window = std::str::from_utf8(window).unwrap();
            for text in &haystacks {
                assert!(
                    !text.contains(window),
                    "{name} leaked ({window}) in:\n{text}"
                );
            }
        }
    }
}
