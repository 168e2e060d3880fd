//! CPU generation throughput of a local candidate, as `lora-train eval` runs it: SmolLM2-135M
//! (the GGUF's weights in f32), greedy, the quickstart validation prompts, one prompt per
//! forward pass against `BENCH_BATCH` (16) per pass. Writes the prompts' token ids and stop ids
//! to `$BENCH_PROMPTS` (JSON) so scripts/bench_generate.sh can time transformers on the same
//! ones. Run through scripts/bench_generate.sh.

use std::time::Instant;

use lora_train::generate::{generate_batch, prompt_ids, stop_ids, GenerateOptions};
use lora_train::harness::prompts::read_prompts;
use lora_train::model::{load, LoadOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    lora_train::threads::settle();
    lora_train::alloc::tune();
    let (n, batch, max_new) = (
        env("BENCH_N", 32),
        env("BENCH_BATCH", 16),
        env("BENCH_NEW", 64),
    );
    let m = load(
        "models/smollm2-135m-instruct.Q4_1.gguf",
        &LoadOptions::default(),
    )
    .expect("load the model (scripts/fetch-models.sh)");
    let prompts = read_prompts("data/quickstart/valid.jsonl".as_ref(), 0, 0).expect("prompts");
    let mut ids: Vec<Vec<u32>> = prompts
        .iter()
        .take(n)
        .map(|p| prompt_ids(&m, &p.messages).expect("template"))
        .collect();
    // Longest first, as the harness batches them.
    ids.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        stop_ids: stop_ids(&m),
        ..GenerateOptions::default()
    };
    if let Ok(path) = std::env::var("BENCH_PROMPTS") {
        let json = serde_json::json!({"prompts": ids, "stop_ids": opts.stop_ids, "max_new_tokens": max_new});
        std::fs::write(path, json.to_string()).expect("write the prompts");
    }
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    // One untimed prompt warms up allocations.
    generate_batch(m.model.as_ref(), &refs[..1], &opts, |_, _| {}).expect("warm-up");
    let mut outputs = Vec::new();
    for size in [1, batch] {
        let start = Instant::now();
        let mut out = Vec::new();
        for chunk in refs.chunks(size) {
            out.extend(
                generate_batch(m.model.as_ref(), chunk, &opts, |_, _| {}).expect("generate"),
            );
        }
        let secs = start.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(Vec::len).sum();
        println!(
            "{}",
            serde_json::json!({"impl": "lora-train", "batch": size, "prompts": refs.len(),
                "new_tokens": tokens, "seconds": (secs * 1000.0).round() / 1000.0,
                "tokens_per_second": (tokens as f64 / secs * 10.0).round() / 10.0,
                "outputs": out})
        );
        outputs.push(out);
    }
    if outputs[0] != outputs[1] {
        eprintln!("batch {batch} and batch 1 generated different tokens");
        std::process::exit(1);
    }
}
