//! `data synth` and `data process` through the binary against loopback providers (an
//! OpenAI-compatible and an Anthropic mock that count requests and fail on purpose): fallback to
//! the second provider on 529 and on a timeout, with the detailed file naming who answered;
//! gates with regeneration and rejects counted; near-duplicates dropped; failed calls recorded,
//! never cached and tried again; a kill mid-run followed by a re-run with no duplicate line and
//! no repeated successful call; a changed config refused; `process` in both methods writing SFT
//! and DPO files that never pair equal replies; and the judge filter dropping a pair whose
//! verdict flips with the order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;
use crate::harness_judge::judge_reply;
use crate::providers_support::{anthropic_message, MockServer, Recorded, Reply};

const KEY: &str = "sk-synth-test-77a1";

/// A chat-completions reply naming the model the request asked for.
fn answer(req: &Recorded, content: &str) -> Reply {
    let model = req.json()["model"].as_str().unwrap_or("?").to_string();
    Reply::json(
        200,
        json!({
            "id": "chatcmpl-x", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}
        }),
    )
}

/// The last user message of a chat request, and how many messages it has.
fn last_user(req: &Recorded) -> (String, usize) {
    let body = req.json();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let text = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    (text, messages.len())
}

/// `n` words that no other `tag` shares.
fn words(tag: &str, n: usize) -> String {
    (0..n)
        .map(|k| format!("{tag}w{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A text made from the request's first user message: distinct per slot and stage.
fn writer(req: &Recorded) -> Reply {
    let body = req.json();
    let first = body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let tag: String = first
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(40)
        .collect();
    answer(req, &words(&tag, 60))
}

fn provider(kind: &str, model: &str, url: &str, extra: &str) -> String {
    let base = if kind == "anthropic" {
        url.to_string()
    } else {
        format!("{url}/v1")
    };
    format!(
        "[[stage.providers]]\nprovider = \"{kind}\"\nmodel = \"{model}\"\nbase_url = \"{base}\"\nmax_retries = 0\n{extra}\n"
    )
}

/// A two-stage synth file: `document` through `doc_chain`, then `reply` through `reply_chain`.
fn synth_file(
    dir: &Path,
    examples: usize,
    doc_chain: &str,
    reply_chain: &str,
    extra: &str,
) -> PathBuf {
    let text = format!(
        r#"
[synth]
examples = {examples}
seed = 5
output = "out/synth.jsonl"
max_concurrency = 2
max_attempts = 2
system_prompt = "Be a colleague."
{extra}
[vars]
kind = ["memo", "email"]

[[stage]]
name = "document"
prompt = "doc {{{{ index }}}} as a {{{{ kind }}}}"
min_words = 20
{doc_chain}
[[stage]]
name = "reply"
system = "{{{{ system_prompt }}}}"
prompt = "{{{{ document }}}}"
min_words = 10
{reply_chain}"#
    );
    let path = dir.join("synth.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn synth(config: &Path, args: &[&str]) -> std::process::Output {
    common::cli::lora_train()
        .args(["data", "synth", "--config"])
        .arg(config)
        .args(args)
        .env("OPENAI_API_KEY", KEY)
        .env("ANTHROPIC_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
    stdout
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn outputs(dir: &Path) -> (Vec<Value>, Vec<Value>, Value) {
    let out = dir.join("out");
    (
        lines(&out.join("synth.jsonl")),
        lines(&out.join("synth_detailed.jsonl")),
        common::read_json(&out.join("synth_metadata.json")),
    )
}

#[test]
fn the_second_provider_answers_when_the_first_is_overloaded_or_slow() {
    let overloaded =
        MockServer::start(|_| Reply::anthropic_error(529, "overloaded_error", "Overloaded"));
    let backup = MockServer::start(writer);
    let tmp = tempfile::tempdir().unwrap();
    let doc_chain = provider("anthropic", "claude-x", &overloaded.url(), "")
        + &provider("openai", "backup-model", &backup.url(), "");
    let reply_chain = provider("openai", "reply-model", &backup.url(), "");
    let config = synth_file(tmp.path(), 3, &doc_chain, &reply_chain, "");
    let stdout = ok(&synth(&config, &[]));
    assert!(stdout.contains("3 accepted"), "{stdout}");
    let (train, detailed, meta) = outputs(tmp.path());
    assert_eq!(train.len(), 3);
    for row in &detailed {
        assert_eq!(row["status"], "accepted");
        let doc = &row["stages"][0];
        assert_eq!(doc["provider"], "openai/backup-model", "{row}");
        assert_eq!(doc["model"], "backup-model");
        let fallback = &doc["attempts"][0]["fallbacks"][0];
        assert_eq!(fallback["provider"], "anthropic/claude-x");
        assert!(
            fallback["error"].as_str().unwrap().contains("529"),
            "{fallback}"
        );
        assert_eq!(row["stages"][1]["provider"], "openai/reply-model");
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be a colleague."})
        );
        assert_eq!(messages[2]["content"], row["stages"][1]["text"]);
    }
    assert_eq!(train[0]["messages"], detailed[0]["messages"]);
    assert_eq!(meta["providers"]["anthropic/claude-x"]["failures"], 3);
    assert_eq!(meta["providers"]["openai/backup-model"]["replies"], 3);
    assert_eq!(overloaded.requests().len(), 3);

    // A primary that does not answer within its timeout falls back the same way.
    let slow = MockServer::start(|_| {
        Reply::json(200, anthropic_message("late", 1, 1)).delayed(Duration::from_secs(3))
    });
    let tmp = tempfile::tempdir().unwrap();
    let doc_chain = provider(
        "anthropic",
        "claude-slow",
        &slow.url(),
        "timeout_secs = 0.3",
    ) + &provider("openai", "backup-model", &backup.url(), "");
    let config = synth_file(tmp.path(), 2, &doc_chain, &reply_chain, "");
    ok(&synth(&config, &[]));
    let (_, detailed, _) = outputs(tmp.path());
    for row in &detailed {
        let doc = &row["stages"][0];
        assert_eq!(doc["provider"], "openai/backup-model");
        let error = doc["attempts"][0]["fallbacks"][0]["error"]
            .as_str()
            .unwrap();
        assert!(error.contains("no reply within 0.3s"), "{error}");
    }
}

#[test]
fn gates_regenerate_then_reject_and_the_metadata_counts_why() {
    // First tries are short; a follow-up ("does not meet a requirement") gets a full document,
    // except for the prompts of slots 0 and 3, which stay short.
    let server = MockServer::start(|req| {
        let (prompt, n) = last_user(req);
        let first = req.json()["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let hopeless = first.starts_with("doc 0 ") || first.starts_with("doc 3 ");
        if first.starts_with("doc ") && (n == 1 || hopeless) {
            return answer(req, "too short");
        }
        let _ = prompt;
        writer(req)
    });
    let tmp = tempfile::tempdir().unwrap();
    let chain = provider("openai", "m", &server.url(), "");
    let config = synth_file(tmp.path(), 6, &chain, &chain, "");
    let stdout = ok(&synth(&config, &[]));
    assert!(stdout.contains("4 accepted, 2 rejected"), "{stdout}");
    let (train, detailed, meta) = outputs(tmp.path());
    assert_eq!(train.len(), 4);
    assert_eq!(meta["counts"]["rejected"], 2);
    assert_eq!(meta["rejects"]["document: min_words"], 2);
    // 4 regenerated once + 2 tried twice.
    assert_eq!(meta["gate_failures"]["document: min_words"], 8);
    let rejected: Vec<&Value> = detailed
        .iter()
        .filter(|r| r["status"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 2);
    for r in rejected {
        let attempts = r["stages"][0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2);
        assert!(attempts[1]["rejected"]
            .as_str()
            .unwrap()
            .starts_with("min_words: 2 words"));
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .starts_with("document: min_words"));
    }
    // The regeneration is a new request with the refused reply and the reason.
    let follow_ups = server
        .requests()
        .iter()
        .filter(|r| {
            last_user(r)
                .0
                .contains("does not meet a requirement (min_words: 2 words")
        })
        .count();
    assert_eq!(follow_ups, 6);
}

#[test]
fn near_duplicates_are_dropped_and_counted() {
    // The same document for every prompt, and the same reply to it.
    let server = MockServer::start(|req| answer(req, &words("same", 80)));
    let tmp = tempfile::tempdir().unwrap();
    let chain = provider("openai", "m", &server.url(), "");
    let config = synth_file(tmp.path(), 4, &chain, &chain, "");
    ok(&synth(&config, &[]));
    let (train, detailed, meta) = outputs(tmp.path());
    assert_eq!(train.len(), 1);
    assert_eq!(meta["counts"]["duplicates"], 3);
    assert_eq!(meta["rejects"]["near-duplicate"], 3);
    assert_eq!(
        detailed
            .iter()
            .filter(|r| r["status"] == "duplicate")
            .count(),
        3
    );
    // Same prompt text in two slots is still two requests: the cache keeps slots apart.
    assert_eq!(server.requests().len(), 8);
}

#[test]
fn failed_calls_are_recorded_never_cached_and_retried() {
    let down = Arc::new(AtomicBool::new(true));
    let server = {
        let down = down.clone();
        MockServer::start(move |req| {
            if down.load(Ordering::SeqCst) {
                Reply::openai_error(503, "server_error", None, "down for maintenance")
            } else {
                writer(req)
            }
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let chain = provider("openai", "m", &server.url(), "");
    let config = synth_file(tmp.path(), 2, &chain, &chain, "");
    let stdout = ok(&synth(&config, &[]));
    assert!(stdout.contains("2 failed"), "{stdout}");
    let (train, detailed, meta) = outputs(tmp.path());
    assert!(train.is_empty());
    assert_eq!(meta["counts"]["failed"], 2);
    for row in &detailed {
        assert_eq!(row["status"], "failed");
        assert!(
            row["error"]
                .as_str()
                .unwrap()
                .contains("down for maintenance"),
            "{row}"
        );
        assert!(row.get("messages").is_none());
    }
    // Back up: the failures were not cached, so the re-run asks again and succeeds.
    down.store(false, Ordering::SeqCst);
    let before = server.requests().len();
    ok(&synth(&config, &[]));
    let (train, detailed, meta) = outputs(tmp.path());
    assert_eq!(train.len(), 2);
    assert_eq!(meta["counts"]["accepted"], 2);
    assert_eq!(meta["counts"]["failed"], 0);
    assert_eq!(
        detailed.len(),
        4,
        "the failed rows stay, the new ones follow"
    );
    assert_eq!(server.requests().len() - before, 4);
}

#[test]
fn a_killed_run_resumes_without_duplicates_or_repeated_calls() {
    // One slot at a time; the request for slot 4's document hangs until released.
    let hang = Arc::new(AtomicBool::new(true));
    let answered: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let server = {
        let (hang, answered) = (hang.clone(), answered.clone());
        MockServer::start(move |req| {
            let first = req.json()["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if first.starts_with("doc 4 ") && hang.load(Ordering::SeqCst) {
                let until = Instant::now() + Duration::from_secs(20);
                while hang.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Reply::openai_error(500, "server_error", None, "cut");
            }
            *answered.lock().unwrap().entry(req.text()).or_default() += 1;
            writer(req)
        })
    };
    let tmp = tempfile::tempdir().unwrap();
    let chain = provider("openai", "m", &server.url(), "");
    let config = synth_file(tmp.path(), 8, &chain, &chain, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("max_concurrency = 2", "max_concurrency = 1");
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lora-train"))
        .args(["data", "synth", "--config"])
        .arg(&config)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .env("LORA_TRAIN_HOME", tmp.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.requests().iter().any(|r| {
        r.json()["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .starts_with("doc 4 ")
    }) {
        assert!(Instant::now() < deadline, "the run never reached slot 4");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    hang.store(false, Ordering::SeqCst);
    // Nothing finished is lost.
    let (train, detailed, _) = outputs(tmp.path());
    assert_eq!((train.len(), detailed.len()), (4, 4));

    ok(&synth(&config, &[]));
    let (train, detailed, meta) = outputs(tmp.path());
    assert_eq!(meta["counts"]["accepted"], 8);
    assert_eq!(train.len(), 8);
    let texts: std::collections::HashSet<String> = train.iter().map(Value::to_string).collect();
    assert_eq!(texts.len(), 8, "no duplicate training line");
    let ids: std::collections::HashSet<&str> =
        detailed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((ids.len(), detailed.len()), (8, 8), "one row per slot");
    let answered = answered.lock().unwrap();
    assert_eq!(answered.len(), 16, "two stages of eight slots");
    assert!(
        answered.values().all(|n| *n == 1),
        "a successful call was repeated"
    );

    // A third run has nothing left to do and calls nothing.
    let before = server.requests().len();
    ok(&synth(&config, &[]));
    assert_eq!(server.requests().len(), before);
    // Another config is refused, unless forced.
    let out = synth(&config, &["--set", "stage.0.min_words=21"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("made with another config"),
        "{stderr}"
    );
    ok(&synth(
        &config,
        &[
            "--set",
            "stage.0.min_words=21",
            "--force",
            "--examples",
            "2",
        ],
    ));
    let (train, _, meta) = outputs(tmp.path());
    assert_eq!((train.len(), meta["examples"].as_u64()), (2, Some(2)));
}

/// `process`: a critic and a writer on one OpenAI-compatible mock.
fn process_server(calls: Arc<AtomicUsize>) -> MockServer {
    MockServer::start(move |req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let (prompt, _) = last_user(req);
        if prompt.contains("<response_a>") {
            return judge_reply(req);
        }
        let original = prompt
            .split("ORIGINAL[")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap_or("")
            .to_string();
        if prompt.starts_with("CRITIQUE") {
            return answer(req, &format!("critique of {original}"));
        }
        // "keep" replies cannot be improved; "plain" ones only get a new version.
        let improved = if original.contains("keep") {
            original.clone()
        } else if original.contains("plain") {
            format!("{original} v2")
        } else {
            format!("{} good", original.replace("bad", "fixed"))
        };
        answer(req, &improved)
    })
}

fn process_file(dir: &Path, url: &str, judge: bool) -> PathBuf {
    let p = |table: &str| {
        format!("[[{table}.providers]]\nprovider = \"openai\"\nmodel = \"m-{table}\"\nbase_url = \"{url}/v1\"\nmax_retries = 0\n")
    };
    let judge = if judge {
        format!("[judge]\n{}", p("judge"))
    } else {
        String::new()
    };
    let text = format!(
        r#"
[process]
max_concurrency = 2

[critic]
prompt = "CRITIQUE ORIGINAL[{{{{ response }}}}] after {{{{ transcript }}}}"
{}
[writer]
feedback_prompt = "REWRITE ORIGINAL[{{{{ response }}}}] with {{{{ critique }}}}"
alternative_prompt = "FRESH ORIGINAL[{{{{ response }}}}] for {{{{ conversation | length }}}} messages"
{}
{judge}"#,
        p("critic"),
        p("writer")
    );
    let path = dir.join("process.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("chats.jsonl");
    let rows = [
        json!({"conversation_id": "c1", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "explain"}, {"role": "assistant", "content": "a bad answer"}]}),
        json!({"conversation_id": "c2", "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "keep this"}]}),
        json!({"conversation_id": "c3", "messages": [
            {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a plain answer"}]}),
    ];
    let text: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

fn process(dir: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    common::cli::lora_train()
        .args(["data", "process", "--config"])
        .arg(config)
        .arg("--input")
        .arg(conversations(dir))
        .arg("-o")
        .arg(dir.join("out.jsonl"))
        .arg("--sft")
        .arg(dir.join("sft.jsonl"))
        .arg("--dpo")
        .arg(dir.join("dpo.jsonl"))
        .args(args)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

#[test]
fn process_writes_sft_and_dpo_for_both_methods_and_never_pairs_equal_replies() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = process_server(calls.clone());
    let tmp = tempfile::tempdir().unwrap();
    let config = process_file(tmp.path(), &server.url(), false);
    let stdout = ok(&process(tmp.path(), &config, &["--method", "both"]));
    assert!(
        stdout.contains("feedback_based: 2 improved, 1 unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alternative: 2 improved, 1 unchanged"),
        "{stdout}"
    );
    let records = lines(&tmp.path().join("out.jsonl"));
    assert_eq!(records.len(), 6);
    let c1 = records
        .iter()
        .find(|r| r["conversation_id"] == "c1" && r["generation_method"] == "feedback_based")
        .unwrap();
    assert_eq!(c1["critique"], "critique of a bad answer");
    assert_eq!(c1["improved_assistant_response"], "a fixed answer good");
    assert_eq!(c1["original_assistant_response"], "a bad answer");
    assert_eq!(c1["conversation_context"].as_array().unwrap().len(), 3);
    assert_eq!(c1["calls"][0]["provider"], "openai/m-critic");
    assert_eq!(c1["calls"][1]["provider"], "openai/m-writer");
    assert!(c1["improvement_timestamp"].as_str().unwrap().ends_with('Z'));
    for method in ["feedback_based", "alternative"] {
        let sft = lines(&tmp.path().join(format!("sft.{method}.jsonl")));
        let dpo = lines(&tmp.path().join(format!("dpo.{method}.jsonl")));
        assert_eq!((sft.len(), dpo.len()), (2, 2), "{method}");
        // Earlier replies are kept out of the loss; the improved one is trained.
        assert_eq!(sft[0]["messages"][1]["weight"], 0);
        assert!(sft[0]["messages"][3].get("weight").is_none());
        for pair in &dpo {
            assert_ne!(pair["preferred_output"], pair["non_preferred_output"]);
            assert_eq!(
                pair.as_object().unwrap().len(),
                3,
                "Together refuses extra keys: {pair}"
            );
        }
    }
    // Files a hosted provider takes as they are.
    let out = common::cli::lora_train()
        .args(["data", "validate"])
        .arg(tmp.path().join("dpo.alternative.jsonl"))
        .args(["--provider", "together"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A re-run has nothing to do.
    let before = calls.load(Ordering::SeqCst);
    ok(&process(tmp.path(), &config, &["--method", "both"]));
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

#[test]
fn the_judge_drops_a_pair_whose_verdict_flips_with_the_order() {
    let server = process_server(Arc::default());
    let tmp = tempfile::tempdir().unwrap();
    let config = process_file(tmp.path(), &server.url(), true);
    let stdout = ok(&process(tmp.path(), &config, &["--method", "alternative"]));
    assert!(
        stdout.contains("alternative: 1 improved, 1 unchanged, 1 not preferred by the judge"),
        "{stdout}"
    );
    let records = lines(&tmp.path().join("out.jsonl"));
    let by_id = |id: &str| records.iter().find(|r| r["conversation_id"] == id).unwrap();
    // "a fixed answer good" beats "a bad answer" whichever is shown first.
    let kept = &by_id("c1")["judge"];
    assert_eq!(
        (
            kept["improved_as_a"].as_str(),
            kept["improved_as_b"].as_str()
        ),
        (Some("A>>B"), Some("B>>A"))
    );
    assert_eq!(kept["kept"], true);
    assert_eq!(kept["margin"], 1.0);
    // A tie to the judge, which then prefers whatever it sees first: the verdict flips.
    let flipped = by_id("c3");
    assert_eq!(flipped["status"], "judge_rejected");
    assert_eq!(flipped["improved"], false);
    assert_eq!(flipped["judge"]["improved_as_a"], "A>B");
    assert_eq!(flipped["judge"]["improved_as_b"], "A>B");
    assert_eq!(flipped["judge"]["margin"], 0.0);
    let dpo = lines(&tmp.path().join("dpo.jsonl"));
    assert_eq!(dpo.len(), 1);
    assert_eq!(
        dpo[0]["preferred_output"][0]["content"],
        "a fixed answer good"
    );
}

#[test]
fn examples_overlapping_the_evaluation_set_are_dropped() {
    let server = MockServer::start(writer);
    let tmp = tempfile::tempdir().unwrap();
    let chain = provider("openai", "m", &server.url(), "");
    let config = synth_file(tmp.path(), 3, &chain, &chain, "");
    // The eval set holds slot 1's document word for word (the mock's text for its prompt).
    let doc1 = words("doc1asamemo", 60);
    let doc1_email = words("doc1asaemail", 60);
    let eval = tmp.path().join("eval.jsonl");
    let rows = [doc1, doc1_email].map(|d| {
        json!({"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": d}]})
            .to_string()
    });
    std::fs::write(&eval, rows.join("\n")).unwrap();
    // Its 48 13-grams of the example's 111 (system, document, reply): a share of 0.43.
    let against = [
        "--against",
        eval.to_str().unwrap(),
        "--contamination-threshold",
        "0.4",
    ];
    ok(&synth(&config, &against));
    let (train, detailed, meta) = outputs(tmp.path());
    assert_eq!(meta["counts"]["contaminated"], 1, "{meta}");
    assert_eq!(meta["rejects"]["contamination"], 1);
    assert_eq!(train.len(), 2);
    let row = detailed
        .iter()
        .find(|r| r["status"] == "contaminated")
        .unwrap();
    assert_eq!(row["index"], 1);
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .starts_with("contamination: 0.43 of its 13-grams"),
        "{row}"
    );
}
