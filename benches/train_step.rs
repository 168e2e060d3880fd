//! CPU LoRA training throughput on the quickstart job (SmolLM2-135M, r=8, q/k/v/o, f32):
//! tokens per second of full optimizer steps. Writes the batches it used to
//! `$BENCH_BATCHES` (JSON) so scripts/bench_train_cpu.sh can time PEFT on the same ones.
//! Run through scripts/bench_train_cpu.sh.

use std::time::Instant;

use lora_train::config::JobConfig;
use lora_train::train::optimizer::{AdamW, AdamWConfig};
use lora_train::train::{train_step, Trainer};

fn main() {
    lora_train::threads::settle();
    lora_train::alloc::tune();
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let job = JobConfig::load(std::path::Path::new("configs/quickstart.toml"), &[]).expect("job");
    let t = Trainer::new(job).expect("trainer");
    lora_train::alloc::host_training(t.device());
    let mut opt = AdamW::new(
        t.params().vars().into_iter().cloned().collect(),
        AdamWConfig::default(),
    )
    .expect("opt");
    let mut dump = Vec::new();
    let mut batches = Vec::new();
    for s in 0..=steps {
        let idx = t
            .plan()
            .step_batches(s, t.job().train.seed, t.job().data.shuffle);
        let exs: Vec<_> = idx
            .iter()
            .map(|mb| {
                mb.iter()
                    .map(|i| {
                        let e = &t.train()[*i];
                        serde_json::json!({"input_ids": e.input_ids, "targets": e.targets})
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        dump.push(exs);
        batches.push(t.step_micro_batches(s).expect("batches"));
    }
    if let Ok(path) = std::env::var("BENCH_BATCHES") {
        std::fs::write(&path, serde_json::to_string(&dump).expect("json")).expect("write batches");
    }
    // Step 0 warms up allocations; the rest are timed.
    train_step(
        t.model().model.as_ref(),
        t.params(),
        &mut opt,
        &batches[0],
        1e-4,
        1.0,
        0,
    )
    .expect("step");
    let start = Instant::now();
    let mut tokens = 0;
    for b in &batches[1..] {
        let o = train_step(
            t.model().model.as_ref(),
            t.params(),
            &mut opt,
            b,
            1e-4,
            1.0,
            0,
        )
        .expect("step");
        tokens += o.tokens;
    }
    let secs = start.elapsed().as_secs_f64();
    let peak_kb = peak_rss_kb();
    println!(
        "{{\"impl\": \"lora-train\", \"steps\": {steps}, \"tokens\": {tokens}, \"seconds\": {secs:.3}, \"tokens_per_second\": {:.1}, \"peak_rss_mb\": {:.0}}}",
        tokens as f64 / secs,
        peak_kb as f64 / 1024.0
    );
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
