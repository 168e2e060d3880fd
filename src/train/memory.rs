//! A peak-memory estimate for a training job, checked against what the machine has before
//! the first step, so that a job that cannot fit fails at once with settings that would
//! fit, instead of being killed by the OS halfway through.
//!
//! The activation term is calibrated on measured CPU runs (`scripts/bench_memory.sh`,
//! BENCHMARKS.md): what a decoder layer keeps per token, in units of its widths.

use crate::config::{JobConfig, ModelConfig};
use crate::data::TokenizedExample;
use crate::model::LoadedModel;
use crate::quant::Quantize;
use crate::{Error, Result};

/// Bytes kept per token and decoder layer, in units of `(4·hidden + 3·intermediate +
/// 2·heads·head_dim) · dtype bytes`, fitted to the peak RSS of f32 runs without checkpointing
/// (BENCHMARKS.md, "The memory check's activation factor") with room for the allocator and for
/// a GPU's caching allocator in bf16.
const ACTIVATION_FACTOR: f64 = 2.0;
/// The runtime, tokenizer, data and allocator slack.
const OVERHEAD: f64 = 400.0 * MIB;
/// Blocked attention and blocked cross-entropy buffers (a few 32 MiB blocks).
const BLOCK_BUFFERS: f64 = 256.0 * MIB;
const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// The sizes of a decoder that memory depends on.
#[derive(Debug, Clone, Copy)]
pub struct ModelDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
}

impl ModelDims {
    pub fn of(config: &ModelConfig) -> Self {
        match config {
            ModelConfig::Llama(c) => Self {
                hidden: c.hidden_size,
                intermediate: c.intermediate_size,
                layers: c.num_hidden_layers,
                heads: c.num_attention_heads,
                kv_heads: c.num_kv_heads(),
                head_dim: c.head_dim(),
                vocab: c.vocab_size,
                tied: c.tie_word_embeddings,
            },
            ModelConfig::Gemma3(c) => Self {
                hidden: c.hidden_size,
                intermediate: c.intermediate_size,
                layers: c.num_hidden_layers,
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                vocab: c.vocab_size,
                tied: c.tie_word_embeddings,
            },
        }
    }

    /// Parameters of the seven projections of all layers.
    pub fn projection_params(&self) -> f64 {
        let (h, i) = (self.hidden as f64, self.intermediate as f64);
        let q = (self.heads * self.head_dim) as f64;
        let kv = (self.kv_heads * self.head_dim) as f64;
        self.layers as f64 * (h * (q + 2.0 * kv) + q * h + 3.0 * h * i)
    }
}

/// What a run's memory depends on besides the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunShape {
    pub dtype_bytes: usize,
    pub quantize: Quantize,
    pub checkpointing: bool,
    /// With checkpointing: keep only layer inputs (no attention outputs).
    pub recompute_attention: bool,
    pub micro_batch_size: usize,
    /// The longest sequence a micro-batch will hold.
    pub seq_len: usize,
    pub lora_params: usize,
}

/// An estimate of peak resident memory, by part.
#[derive(Debug, Clone, Copy)]
pub struct MemoryEstimate {
    pub weights: f64,
    pub lora: f64,
    pub activations: f64,
    pub other: f64,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.weights + self.lora + self.activations + self.other
    }
}

pub fn estimate(dims: &ModelDims, run: &RunShape) -> MemoryEstimate {
    let b = run.dtype_bytes as f64;
    let (h, i) = (dims.hidden as f64, dims.intermediate as f64);
    let heads_width = (dims.heads * dims.head_dim) as f64;
    let embed = dims.vocab as f64 * h * if dims.tied { 1.0 } else { 2.0 };
    let weights =
        embed * b + dims.projection_params() * run.quantize.bits_per_weight(run.dtype_bytes) / 8.0;
    // Parameter, gradient and two Adam moments, all f32.
    let lora = run.lora_params as f64 * 16.0;
    let tokens = (run.micro_batch_size * run.seq_len) as f64;
    let per_token_layer = ACTIVATION_FACTOR * (4.0 * h + 3.0 * i + 2.0 * heads_width) * b;
    let activations = if run.checkpointing {
        // Each layer's input (and attention output with its two f32 statistics per head,
        // unless attention is recomputed), plus one layer rebuilt (and its backward) at a time.
        let kept = if run.recompute_attention {
            h * b
        } else {
            (h + heads_width) * b + dims.heads as f64 * 8.0
        };
        tokens * dims.layers as f64 * kept + 2.0 * tokens * per_token_layer
    } else {
        tokens * dims.layers as f64 * per_token_layer
    };
    MemoryEstimate {
        weights,
        lora,
        activations,
        other: OVERHEAD + BLOCK_BUFFERS + 4.0 * tokens * h * 4.0,
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / GIB)
}

/// Checks `run` against `available` bytes; the error names the estimate's parts and the
/// settings that would fit.
pub fn check_fits(
    dims: &ModelDims,
    run: &RunShape,
    available: f64,
    place: &str,
) -> Result<MemoryEstimate> {
    let est = estimate(dims, run);
    if est.total() <= available {
        return Ok(est);
    }
    let mut fits = Vec::new();
    let mut try_shape = |what: String, shape: RunShape| {
        let t = estimate(dims, &shape).total();
        if t <= available {
            fits.push(format!("{what} (about {})", gib(t)));
        }
    };
    if !run.checkpointing {
        try_shape(
            "train.gradient_checkpointing = true".into(),
            RunShape {
                checkpointing: true,
                ..*run
            },
        );
    }
    if run.quantize == Quantize::None {
        try_shape(
            "model.quantize = \"nf4\" with train.gradient_checkpointing = true".into(),
            RunShape {
                checkpointing: true,
                quantize: Quantize::Nf4,
                ..*run
            },
        );
    }
    let mut mbs = run.micro_batch_size;
    while mbs > 1 {
        mbs /= 2;
        let shape = RunShape {
            micro_batch_size: mbs,
            ..*run
        };
        if estimate(dims, &shape).total() <= available {
            let accum = run.micro_batch_size.div_ceil(mbs);
            try_shape(
                format!(
                    "train.micro_batch_size = {mbs} with train.grad_accum multiplied by {accum} \
                     (same effective batch)"
                ),
                shape,
            );
            break;
        }
    }
    let suggestion = if fits.is_empty() {
        "no single change fits; combine checkpointing, a 4-bit base, a smaller micro-batch and a \
         shorter data.max_seq_len"
            .to_string()
    } else {
        format!("settings that would fit: {}", fits.join("; "))
    };
    Err(Error::DoesNotFit {
        place: place.to_string(),
        msg: format!(
            "this run needs about {} at its peak (weights {}, LoRA with optimizer state {}, \
         activations {} for {} x {} tokens, other {}) but only {} is available; {suggestion}. \
         (train.memory_check = false skips this check.)",
            gib(est.total()),
            gib(est.weights),
            gib(est.lora),
            gib(est.activations),
            run.micro_batch_size,
            run.seq_len,
            gib(est.other),
            gib(available)
        ),
    })
}

/// Memory the run may use on `device`, in bytes, with the model already loaded:
/// `LORA_TRAIN_MEMORY_LIMIT` (e.g. `8GiB`, `512MiB`, or bytes) if set; on a CUDA device, its
/// free memory plus what this process's memory pool holds (the loaded weights, which the
/// estimate counts, and what loading freed into the pool), or plus `loaded` (the estimate's
/// weights) where the pool cannot be read; on the CPU (and Metal's unified memory),
/// the host's available memory. `None` where it cannot be read.
pub fn available_on(device: &candle_core::Device, loaded: f64) -> Result<Option<f64>> {
    if let Some(limit) = memory_limit()? {
        return Ok(Some(limit));
    }
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(c) => {
            let (free, _total) = c.cuda_stream().context().mem_get_info().map_err(|e| {
                Error::Msg(format!("cannot read the CUDA device's free memory: {e}"))
            })?;
            let held = crate::device::reserved_bytes(device).map_or(loaded, |b| b as f64);
            Ok(Some(free as f64 + held))
        }
        _ => {
            let _ = loaded;
            Ok(host_available())
        }
    }
}

/// `LORA_TRAIN_MEMORY_LIMIT` in bytes, if set.
fn memory_limit() -> Result<Option<f64>> {
    match std::env::var("LORA_TRAIN_MEMORY_LIMIT") {
        Ok(v) => parse_size(&v).map(Some).ok_or_else(|| {
            Error::Config(format!(
                "LORA_TRAIN_MEMORY_LIMIT = {v:?} is not a size like 8GiB, 512MiB or 1000000"
            ))
        }),
        Err(_) => Ok(None),
    }
}

/// Host memory this process may still grow into, in bytes: what Linux reports as available
/// (or a cgroup limit leaves) plus what the process already holds (the loaded weights are part
/// of the estimate). `None` where it cannot be read (not Linux).
fn host_available() -> Option<f64> {
    let kib = |text: &str, key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|k| k * 1024.0)
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut avail = kib(&meminfo, "MemAvailable:");
    // A cgroup limit (containers) can be lower than the machine's memory.
    if let Ok(limit) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        if let (Ok(limit), Ok(used)) = (
            limit.trim().parse::<f64>(),
            std::fs::read_to_string("/sys/fs/cgroup/memory.current")
                .map(|u| u.trim().parse::<f64>().unwrap_or(0.0)),
        ) {
            let room = (limit - used).max(0.0);
            avail = Some(avail.map_or(room, |a| a.min(room)));
        }
    }
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib(&s, "VmRSS:"))
        .unwrap_or(0.0);
    avail.map(|a| a + rss)
}

fn parse_size(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.trim().parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        _ => return None,
    };
    Some(n * mult)
}

/// Fails before the first step, and before the `lora_params` LoRA scalars are allocated, when
/// the run's estimated peak exceeds the memory left on `device` (host memory for the CPU and
/// Metal, the GPU's own for CUDA).
/// `train` holds the sequences of every training unit, `per_unit` of them each: 1 for SFT, 2
/// for a DPO pair (its chosen and rejected sequences run in one batch).
pub fn check_run_fits(
    model: &LoadedModel,
    lora_params: usize,
    train: &[TokenizedExample],
    per_unit: usize,
    job: &JobConfig,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<()> {
    let shape = run_shape(lora_params, train, per_unit, job, dtype);
    let dims = ModelDims::of(&model.config);
    // The weights are loaded by now: on a GPU they are part of the estimate, not of the free memory.
    let loaded = estimate(&dims, &shape).weights;
    let Some(available) = available_on(device, loaded)? else {
        return Ok(());
    };
    let place = crate::device::device_name(device);
    let prefix = if device.is_cpu() {
        String::new()
    } else {
        format!("{place}: ")
    };
    let est = check_fits(&dims, &shape, available, &prefix)?;
    tracing::info!(
        "estimated peak memory {:.1} GiB of {:.1} GiB available ({place})",
        est.total() / (1u64 << 30) as f64,
        available / (1u64 << 30) as f64
    );
    Ok(())
}

/// The estimate [`check_run_fits`] checks, for a run of `model` on `train` (see there).
pub fn estimate_run(
    model: &LoadedModel,
    lora_params: usize,
    train: &[TokenizedExample],
    per_unit: usize,
    job: &JobConfig,
    dtype: candle_core::DType,
) -> MemoryEstimate {
    let shape = run_shape(lora_params, train, per_unit, job, dtype);
    estimate(&ModelDims::of(&model.config), &shape)
}

fn run_shape(
    lora_params: usize,
    train: &[TokenizedExample],
    per_unit: usize,
    job: &JobConfig,
    dtype: candle_core::DType,
) -> RunShape {
    RunShape {
        dtype_bytes: dtype.size_in_bytes(),
        quantize: job.model.quantize,
        checkpointing: job.train.gradient_checkpointing,
        recompute_attention: job.train.recompute_attention,
        micro_batch_size: (job.train.micro_batch_size * per_unit).min(train.len().max(1)),
        // Packed rows fill up to `max_seq_len`.
        seq_len: match job.data.packing {
            true => job.data.max_seq_len,
            false => train.iter().map(|e| e.input_ids.len()).max().unwrap_or(0),
        },
        lora_params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> ModelDims {
        ModelDims {
            hidden: 576,
            intermediate: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
            tied: true,
        }
    }

    fn run() -> RunShape {
        RunShape {
            dtype_bytes: 4,
            quantize: Quantize::None,
            checkpointing: false,
            recompute_attention: false,
            micro_batch_size: 4,
            seq_len: 1024,
            lora_params: 4_884_480,
        }
    }

    #[test]
    fn checkpointing_and_quantizing_shrink_the_estimate() {
        let d = smollm2();
        let plain = estimate(&d, &run()).total();
        let ckpt = estimate(
            &d,
            &RunShape {
                checkpointing: true,
                ..run()
            },
        )
        .total();
        let q = estimate(
            &d,
            &RunShape {
                checkpointing: true,
                quantize: Quantize::Nf4,
                ..run()
            },
        );
        assert!(ckpt < plain / 3.0, "{ckpt} vs {plain}");
        assert!(q.total() < ckpt);
        // SmolLM2's projections: 30 layers of 3.5 M parameters at 4.13 bits.
        assert!((q.weights - 49152.0 * 576.0 * 4.0) / MIB < 60.0);
    }

    #[test]
    fn a_run_that_does_not_fit_names_what_would() {
        let err = check_fits(&smollm2(), &run(), 3.0 * GIB, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs about"), "{err}");
        assert!(err.contains("gradient_checkpointing = true"), "{err}");
        assert!(err.contains("3.0 GiB is available"), "{err}");
        assert!(check_fits(&smollm2(), &run(), 64.0 * GIB, "").is_ok());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Some(512.0 * MIB));
        assert_eq!(parse_size("8 GiB"), Some(8.0 * GIB));
        assert_eq!(parse_size("1000"), Some(1000.0));
        assert_eq!(parse_size("lots"), None);
    }
}
