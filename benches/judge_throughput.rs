//! Judge throughput: 100 prompts judged in both orders (200 calls) against a loopback
//! OpenAI-compatible judge that takes 100 ms per reply, at the eval's default concurrency of 8.
//! The floor is 200 × 0.1 s / 8 = 2.5 s; what is above it is the harness's own cost.
//!
//!   cargo bench --profile dev --bench judge_throughput

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use lora_train::harness::judge::{default_traits, Judge};
use lora_train::harness::pool::map_parallel;
use lora_train::providers::{
    build_chat_client, ChatMessage, ChatProviderConfig, ChatProviderKind, Env,
};

const DELAY: Duration = Duration::from_millis(100);
const PROMPTS: usize = 100;
const CONCURRENCY: usize = 8;

/// Answers one HTTP request after `DELAY` with a completion holding a verdict.
fn serve(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    std::thread::sleep(DELAY);
    let reply = serde_json::json!({
        "id": "bench", "object": "chat.completion", "created": 0, "model": "judge",
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "A is better.\n{\"verdict\": \"A>B\"}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    })
    .to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    let mut cfg = ChatProviderConfig::new(ChatProviderKind::OpenAi, "judge");
    cfg.base_url = Some(format!("http://{addr}/v1"));
    let env = Env::from_pairs([("OPENAI_API_KEY", "sk-bench")]);
    let judge = Judge::new(
        build_chat_client(&[cfg], &env).expect("client"),
        None,
        None,
        default_traits(),
    )
    .expect("judge");
    let prompts: Vec<usize> = (0..PROMPTS).collect();
    let start = Instant::now();
    let done = map_parallel(&prompts, CONCURRENCY, "judging", |i| {
        judge.compare(
            &[ChatMessage::user(format!("Question {i}?"))],
            &format!("Reply A to {i}."),
            &format!("Reply B to {i}."),
        )
    });
    let secs = start.elapsed().as_secs_f64();
    let calls: u32 = done
        .iter()
        .flat_map(|j| j.calls.iter())
        .map(|c| c.requests)
        .sum();
    let errors = done.iter().filter(|j| j.game().is_none()).count();
    let floor = calls as f64 * DELAY.as_secs_f64() / CONCURRENCY as f64;
    println!(
        "{{\"calls\": {calls}, \"seconds\": {secs:.3}, \"floor_seconds\": {floor:.3}, \"concurrency\": {CONCURRENCY}, \"judge_errors\": {errors}}}"
    );
}
