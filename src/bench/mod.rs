//! `lora-train bench`: a job's own training steps (model, quantization, LoRA, checkpointing,
//! packing) run through the trainer's step on this machine, timed, with their peak memory,
//! the memory check's estimate beside it, and MFU against the device's measured matmul peak;
//! sweeps of sizes in child processes ([`sweep`]) and batched generation ([`generation`]).
//! The JSON names follow `scripts/bench_gpu_peft.py`; docs/bench.md documents them.

pub mod flops;
pub mod generation;
pub mod peft;
pub mod probe;
pub mod sweep;

use std::time::Instant;

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::train::optimizer::AdamW;
use crate::train::step::{add_micro_batch_grads, set_micro_batch_dropout, update};
use crate::train::Trainer;
use crate::Result;
use flops::FlopsCounter;
use probe::{matmul_peak, probe_size, MatmulPeak};

/// How long the matmul probe runs at least, in seconds.
pub const PROBE_SECONDS: f64 = 0.5;
const MIB: f64 = 1024.0 * 1024.0;

/// How many steps to run, and whether to show progress.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Optimizer steps run first and not timed.
    pub warmup: usize,
    /// Optimizer steps timed.
    pub steps: usize,
    pub progress: bool,
}

/// What `bench --json` prints for one run (docs/bench.md describes every field).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainBench {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub quantize: String,
    pub gradient_checkpointing: bool,
    pub recompute_attention: bool,
    pub packing: bool,
    /// `synthetic`, or the job's training file.
    pub data: String,
    /// The longest sequence of the timed steps, in tokens.
    pub seq: usize,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub lora_r: usize,
    pub lora_parameters: usize,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    /// Real tokens per timed step, on average.
    pub tokens_per_step: f64,
    /// Real (non-pad) tokens per second: `real_tokens_per_second`, under the Python twin's name.
    pub tokens_per_second: f64,
    pub real_tokens_per_second: f64,
    /// Tokens computed on per second, padding included.
    pub padded_tokens_per_second: f64,
    pub step_time_p50_s: f64,
    pub step_time_p90_s: f64,
    pub step_time_mean_s: f64,
    /// The process's peak resident memory (Linux VmHWM), loading included.
    pub peak_rss_mib: Option<u64>,
    /// On CUDA, the memory pool's peak reserve (`torch.cuda.max_memory_reserved`'s peer).
    pub peak_gpu_mib: Option<u64>,
    /// On CUDA, the device's used memory after the timed steps, as the driver reports it.
    pub gpu_driver_used_mib: Option<u64>,
    /// The memory check's estimate of the run's peak.
    pub estimated_peak_mib: u64,
    /// Model FLOPs per real token (no recomputation), as `bench_gpu_peft.py` counts them.
    pub flops_per_token: f64,
    /// Hardware FLOPs per real token: model FLOPs plus checkpointing's recomputation.
    pub hardware_flops_per_token: f64,
    pub peak_tflops: f64,
    pub peak_probe: MatmulPeak,
    pub mfu: f64,
    pub hfu: f64,
    /// The loss of every step, warm-up included.
    pub losses: Vec<f64>,
    /// A DPO job's reference: `live` (a forward with the adapter off in every step) or
    /// `precomputed` (`dpo.precompute_reference`: before the timed steps, no reference
    /// forward in them); absent for SFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo_reference: Option<String>,
    /// Seconds spent precomputing the training pairs' reference log-probabilities, all of
    /// them, as a training run does before step 1 (not in the step times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_precompute_s: Option<f64>,
    /// Batched generation, with `--generate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<generation::GenerateBench>,
    /// PyTorch + PEFT on the same batches, with `--compare peft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<peft::PeftComparison>,
    /// Where an SFT step's time goes, from one extra step timed phase by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<PhaseTimes>,
}

/// The last timed SFT step run once more, split into phases that each end at a device
/// synchronization: the forwards with the loss, the backwards (forward and backward timed
/// together, less the forward alone, which runs once more for this) and the update (gradient
/// norm, clipping, AdamW). Their sum is a little above the unsplit step, whose queue never
/// drains between phases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseTimes {
    /// Forward passes with the loss, over the step's micro-batches.
    pub forward_s: f64,
    /// Backward passes, over the step's micro-batches.
    pub backward_s: f64,
    /// The gradient norm, clipping and AdamW.
    pub update_s: f64,
}

/// Runs `opts.warmup` untimed and `opts.steps` timed optimizer steps of `trainer`'s job
/// through [`Trainer::optimizer_step`], then reads the peaks and probes the matmul peak.
pub fn bench_training(trainer: &Trainer, opts: &BenchOptions) -> Result<TrainBench> {
    if opts.steps == 0 {
        return Err(crate::Error::Config(
            "bench needs at least one timed step (--steps)".into(),
        ));
    }
    let job = trainer.job();
    let device = trainer.device();
    let total = trainer.plan().total_steps.max(1);
    let mut opt = trainer.optimizer()?;
    let bar = progress_bar(opts.progress, opts.warmup + opts.steps);
    let (mut times, mut losses, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
    let (mut real, mut padded) = (0usize, 0usize);
    for i in 0..opts.warmup + opts.steps {
        let step = i % total;
        let lr = trainer.schedule().lr_at(step);
        device.synchronize()?;
        let clock = Instant::now();
        let outcome = trainer.optimizer_step(step, lr, &mut opt)?;
        device.synchronize()?;
        let seconds = clock.elapsed().as_secs_f64();
        losses.push(outcome.loss);
        if i >= opts.warmup {
            times.push(seconds);
            real += outcome.tokens;
            padded += outcome.padded_tokens;
            lengths.extend(trainer.step_sequence_lengths(step));
        }
        bar.set_message(format!(
            "{} loss {:.4}  {:.0} tok/s",
            if i < opts.warmup { "warm-up" } else { "timed" },
            outcome.loss,
            outcome.tokens as f64 / seconds.max(1e-9)
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Again the last timed step, split into phases.
    let phases = match job.is_dpo() {
        true => None,
        false => Some(phase_times(
            trainer,
            (opts.warmup + opts.steps - 1) % total,
            &mut opt,
        )?),
    };
    // Read before the probe, whose matrices would count in the pool's peak.
    let peak_gpu_mib = crate::device::peak_reserved_bytes(device).map(|b| b >> 20);
    let gpu_driver_used_mib = crate::device::driver_used_bytes(device).map(|b| b >> 20);
    let peak_rss_mib = peak_rss_bytes().map(|b| b >> 20);
    let dtype = trainer.compute_dtype();
    let peak = matmul_peak(device, dtype, probe_size(device), PROBE_SECONDS)?;

    let model = trainer.model();
    let lora_parameters = trainer.params().num_parameters();
    let counter = FlopsCounter::of(&model.config, lora_parameters);
    let model_flops = counter.model_flops(&lengths);
    let hardware_flops = model_flops
        + counter.recompute_flops(
            &lengths,
            job.train.gradient_checkpointing,
            job.train.recompute_attention,
        );
    let seconds: f64 = times.iter().sum::<f64>().max(1e-9);
    let real_tps = real as f64 / seconds;
    let peak_flops = peak.peak_tflops * 1e12;
    let per_token = |flops: f64| flops / real.max(1) as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let data = match trainer.data_is_synthetic() {
        true => "synthetic".to_string(),
        false => job.data.train.display().to_string(),
    };
    Ok(TrainBench {
        model: model.name_or_path.clone(),
        device: crate::device::device_name(device),
        dtype: job.model.dtype.as_str().to_string(),
        quantize: job.model.quantize.name().to_string(),
        gradient_checkpointing: job.train.gradient_checkpointing,
        recompute_attention: job.train.recompute_attention,
        packing: job.data.packing,
        data,
        seq: lengths.iter().copied().max().unwrap_or(0),
        micro_batch_size: job.train.micro_batch_size,
        grad_accum: job.train.grad_accum,
        lora_r: job.lora.r,
        lora_parameters,
        warmup_steps: opts.warmup,
        timed_steps: times.len(),
        tokens_per_step: real as f64 / times.len() as f64,
        tokens_per_second: real_tps,
        real_tokens_per_second: real_tps,
        padded_tokens_per_second: padded as f64 / seconds,
        step_time_p50_s: percentile(&sorted, 0.5),
        step_time_p90_s: percentile(&sorted, 0.9),
        step_time_mean_s: seconds / times.len() as f64,
        peak_rss_mib,
        peak_gpu_mib,
        gpu_driver_used_mib,
        estimated_peak_mib: (trainer.memory_estimate().total() / MIB).round() as u64,
        flops_per_token: per_token(model_flops),
        hardware_flops_per_token: per_token(hardware_flops),
        peak_tflops: peak.peak_tflops,
        mfu: model_flops / seconds / peak_flops,
        hfu: hardware_flops / seconds / peak_flops,
        peak_probe: peak,
        losses,
        dpo_reference: job.is_dpo().then(|| {
            match trainer.reference_precomputed() {
                true => "precomputed",
                false => "live",
            }
            .to_string()
        }),
        reference_precompute_s: None,
        generate: None,
        peft: None,
        phases,
    })
}

/// Runs optimizer step `step` once more, phase by phase (see [`PhaseTimes`]), applying it
/// with `opt` as a timed step would, with the same dropout masks.
fn phase_times(trainer: &Trainer, step: usize, opt: &mut AdamW) -> Result<PhaseTimes> {
    let device = trainer.device();
    let model = trainer.model().model.as_ref();
    let params = trainer.params();
    let batches = trainer.step_micro_batches(step)?;
    let divisor: usize = batches.iter().map(|m| m.num_targets()).sum();
    let seed = trainer.dropout_seed(step);
    let mut grads: Vec<Option<Tensor>> = vec![None; params.vars().len()];
    let (mut forward, mut both, mut loss_sum) = (0.0, 0.0, 0.0);
    for (i, mb) in batches.iter().enumerate() {
        set_micro_batch_dropout(params, seed, i);
        device.synchronize()?;
        let clock = Instant::now();
        drop(crate::train::loss::micro_batch_nll_sum(model, mb)?);
        device.synchronize()?;
        forward += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        loss_sum += add_micro_batch_grads(model, params, mb, divisor.max(1), &mut grads)?;
        device.synchronize()?;
        both += clock.elapsed().as_secs_f64();
    }
    params.set_dropout_seed(0);
    let clock = Instant::now();
    let loss = loss_sum / divisor.max(1) as f64;
    let lr = trainer.schedule().lr_at(step);
    update(
        params,
        opt,
        grads,
        loss,
        lr,
        trainer.job().train.max_grad_norm,
    )?;
    device.synchronize()?;
    Ok(PhaseTimes {
        forward_s: forward,
        backward_s: (both - forward).max(0.0),
        update_s: clock.elapsed().as_secs_f64(),
    })
}

/// The signal that ended a child process (a sweep point, a Python twin), if one did; 9 is what
/// the kernel's out-of-memory killer sends.
pub fn killed_by_signal(status: &std::process::ExitStatus) -> Option<i32> {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        status.signal()
    }
    #[cfg(not(unix))]
    {
        let _ = status;
        None
    }
}

/// The nearest-rank `q`-quantile of ascending `sorted` (0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The most resident memory this process has held, in bytes: Linux's `VmHWM`, `getrusage`
/// elsewhere on Unix; `None` where neither can be read.
pub fn peak_rss_bytes() -> Option<u64> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        return Some(kib * 1024);
    }
    rusage_max_rss()
}

#[cfg(unix)]
fn rusage_max_rss() -> Option<u64> {
    // SAFETY: getrusage writes one rusage struct, which is plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let max = u64::try_from(usage.ru_maxrss).ok()?;
    // macOS reports bytes, the other Unixes KiB.
    Some(if cfg!(target_os = "macos") {
        max
    } else {
        max * 1024
    })
}

#[cfg(not(unix))]
fn rusage_max_rss() -> Option<u64> {
    None
}

fn progress_bar(show: bool, total: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// `report` as the Markdown of `bench.md` (and the command's table).
pub fn render_markdown(r: &TrainBench) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut rows = vec![
        ("model", r.model.clone()),
        (
            "run",
            format!(
                "{} {}, quantize {}, checkpointing {}, packing {}, LoRA r={} ({} parameters)",
                r.device,
                r.dtype,
                r.quantize,
                r.gradient_checkpointing,
                r.packing,
                r.lora_r,
                r.lora_parameters
            ),
        ),
        (
            "batches",
            format!(
                "{} data, {} x {} micro-batches, longest sequence {}, {} warm-up + {} timed steps",
                r.data, r.grad_accum, r.micro_batch_size, r.seq, r.warmup_steps, r.timed_steps
            ),
        ),
        (
            "tokens/s (real)",
            format!("{:.1}", r.real_tokens_per_second),
        ),
        (
            "tokens/s (padded)",
            format!("{:.1}", r.padded_tokens_per_second),
        ),
        (
            "step time p50 / p90",
            format!("{:.3} s / {:.3} s", r.step_time_p50_s, r.step_time_p90_s),
        ),
        ("peak RSS", format!("{} MiB", opt(r.peak_rss_mib))),
    ];
    if let Some(reference) = &r.dpo_reference {
        let precompute = r
            .reference_precompute_s
            .map_or(String::new(), |s| format!(", {s:.1} s before the steps"));
        rows.push(("DPO reference", format!("{reference}{precompute}")));
    }
    if r.peak_gpu_mib.is_some() || r.gpu_driver_used_mib.is_some() {
        rows.push((
            "peak GPU (pool) / driver used",
            format!(
                "{} MiB / {} MiB",
                opt(r.peak_gpu_mib),
                opt(r.gpu_driver_used_mib)
            ),
        ));
    }
    rows.extend([
        (
            "memory check's estimate",
            format!("{} MiB", r.estimated_peak_mib),
        ),
        (
            "FLOPs per token (model / hardware)",
            format!(
                "{:.4} / {:.4} GFLOP",
                r.flops_per_token / 1e9,
                r.hardware_flops_per_token / 1e9
            ),
        ),
        (
            "matmul peak",
            format!(
                "{:.3} TFLOP/s ({}, {:.1} s)",
                r.peak_tflops, r.peak_probe.matmul, r.peak_probe.seconds
            ),
        ),
        (
            "MFU / HFU",
            format!("{:.2}% / {:.2}%", 100.0 * r.mfu, 100.0 * r.hfu),
        ),
    ]);
    if let Some(p) = &r.phases {
        rows.push((
            "step phases (forward / backward / update)",
            format!(
                "{:.3} s / {:.3} s / {:.3} s",
                p.forward_s, p.backward_s, p.update_s
            ),
        ));
    }
    if let Some(g) = &r.generate {
        rows.extend(generation::markdown_rows(g));
    }
    if let Some(c) = &r.peft {
        rows.extend(peft::markdown_rows(c));
    }
    let mut out = String::from("| measure | value |\n|---|---|\n");
    for (k, v) in rows {
        out += &format!("| {k} | {} |\n", v.replace('|', "\\|"));
    }
    out
}

/// The folder `bench -o DIR` writes.
pub const BENCH_OUTPUT: crate::fsutil::Artifact = crate::fsutil::Artifact {
    what: "a bench output folder",
    files: &[
        "bench.json",
        "bench.md",
        "tokens_per_second.svg",
        "peak_memory.svg",
    ],
    folders: &[],
};

/// Writes `dir` as [`BENCH_OUTPUT`]: `bench.json`, `bench.md` and the plots given.
pub fn write_output(
    dir: &std::path::Path,
    force: bool,
    json: &str,
    markdown: &str,
    plots: &[(&str, String)],
) -> Result<()> {
    BENCH_OUTPUT.write(dir, force, |tmp| {
        crate::fsutil::write_atomic(&tmp.join("bench.json"), json.as_bytes())?;
        crate::fsutil::write_atomic(&tmp.join("bench.md"), markdown.as_bytes())?;
        for (name, svg) in plots {
            crate::fsutil::write_atomic(&tmp.join(name), svg.as_bytes())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.9), 9.0);
        assert_eq!(percentile(&[3.0], 0.9), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
