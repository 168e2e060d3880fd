//! Synth throughput: a 3-stage pipeline of 320 examples against a loopback OpenAI-compatible
//! provider that takes 200 ms per reply, at 16 examples in flight. Each example waits for three
//! replies in turn, so the bound is 16 / 0.6 s ≈ 26.7 examples/s; what falls short of it is the
//! generator's own cost (templates, gates, dedupe, the cache and the per-example writes).
//!
//!   cargo bench --profile dev --bench synth_throughput

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lora_train::providers::Env;
use lora_train::synth::config::{SynthConfig, SynthOverrides};
use lora_train::synth::generate::{run_synth, SynthOptions};

const DELAY: Duration = Duration::from_millis(200);
const EXAMPLES: usize = 320;
const CONCURRENCY: usize = 16;
const STAGES: usize = 3;

static REPLIES: AtomicUsize = AtomicUsize::new(0);

/// Answers one HTTP request after `DELAY` with 60 words no other reply shares.
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
    let n = REPLIES.fetch_add(1, Ordering::SeqCst);
    let text: Vec<String> = (0..60).map(|k| format!("r{n}w{k}")).collect();
    let reply = serde_json::json!({
        "id": "bench", "object": "chat.completion", "created": 0, "model": "writer",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text.join(" ")},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 60, "total_tokens": 160}
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
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = format!(
        "[[stage.providers]]\nprovider = \"openai\"\nmodel = \"writer\"\nbase_url = \"http://{addr}/v1\"\n"
    );
    let mut text = format!(
        "[synth]\nexamples = {EXAMPLES}\noutput = \"out/synth.jsonl\"\nmax_concurrency = {CONCURRENCY}\n\
         system_prompt = \"Be helpful.\"\n[vars]\ntopic = [\"a\", \"b\", \"c\"]\n"
    );
    let names = ["idea", "document", "reply"];
    for (i, name) in names.iter().enumerate() {
        let prompt = match i {
            0 => "An idea about {{ topic }}.".to_string(),
            _ => format!("{{{{ {} }}}}", names[i - 1]),
        };
        text.push_str(&format!(
            "[[stage]]\nname = \"{name}\"\nprompt = \"{prompt}\"\nmin_words = 20\n{provider}"
        ));
    }
    let path = dir.path().join("synth.toml");
    std::fs::write(&path, text).expect("write");
    let cfg = SynthConfig::load(&path, &[], &SynthOverrides::default()).expect("config");
    let env = Env::from_pairs([("OPENAI_API_KEY", "sk-bench")]);
    let start = Instant::now();
    let outcome = run_synth(&cfg, &env, &SynthOptions::default()).expect("synth");
    let secs = start.elapsed().as_secs_f64();
    let bound = CONCURRENCY as f64 / (STAGES as f64 * DELAY.as_secs_f64());
    let rate = EXAMPLES as f64 / secs;
    println!(
        "{{\"examples\": {EXAMPLES}, \"accepted\": {}, \"requests\": {}, \"seconds\": {secs:.3}, \"examples_per_s\": {rate:.2}, \"bound_per_s\": {bound:.2}, \"share_of_bound\": {:.3}}}",
        outcome.metadata.counts.accepted,
        REPLIES.load(Ordering::SeqCst),
        rate / bound
    );
}
