//! `bench --compare peft`: the same batches through PyTorch + transformers + PEFT in the same
//! run, by the existing Python twins rather than a copy of them: `scripts/bench_memory_peft.py`
//! for an f32 GGUF base on the CPU, `scripts/bench_gpu_peft.py train` for an HF folder in
//! bf16 (CPU or CUDA, dense or NF4). Both run one micro-batch per step, unpacked; the GPU twin
//! trains LoRA r=16, alpha=32 on all seven projections, the CPU one the job's adapter.
//! A DPO job's twin is `scripts/bench_dpo_trl.py`: TRL's `DPOTrainer` on the same pairs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::TrainBench;
use crate::data::{TokenizedExample, TokenizedPair};
use crate::model::ModelSource;
use crate::quant::Quantize;
use crate::train::Trainer;
use crate::{Error, Result};

/// How to get a Python the comparison can use.
const HOW_TO_GET_ONE: &str = "set PYTHON to an interpreter that has torch, transformers and peft, \
    e.g. `python3 -m venv .venv && .venv/bin/pip install torch transformers peft` (and \
    bitsandbytes for an NF4 job), then `PYTHON=.venv/bin/python lora-train bench ... --compare peft`";

const SEVEN: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The PEFT side's result and how ours compares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeftComparison {
    /// The twin that ran, relative to the repository.
    pub script: String,
    pub peft_tokens_per_second: f64,
    /// Ours over PEFT's: above 1 is faster.
    pub tokens_per_second_ratio: f64,
    /// PEFT's peak memory: the process's resident peak on the CPU, torch's
    /// `max_memory_reserved` on CUDA.
    pub peft_peak_mib: Option<f64>,
    /// Ours (the same measure) over PEFT's: below 1 is less.
    pub peak_memory_ratio: Option<f64>,
    /// The twin's JSON line as it printed it.
    pub peft: serde_json::Value,
}

/// The interpreter `PYTHON` names, once it imports torch, transformers and peft; else an
/// error saying how to get one.
pub fn python_from_env() -> Result<PathBuf> {
    let Some(python) = std::env::var_os("PYTHON").filter(|p| !p.is_empty()) else {
        return Err(Error::unsupported(
            "--compare peft",
            format!("PYTHON is not set; {HOW_TO_GET_ONE}"),
        ));
    };
    let python = PathBuf::from(python);
    let out = Command::new(&python)
        .args(["-c", "import torch, transformers, peft"])
        .output();
    let why = match out {
        Err(e) => format!("PYTHON={} cannot be run ({e})", python.display()),
        Ok(o) if !o.status.success() => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            format!(
                "PYTHON={} cannot import torch, transformers and peft ({})",
                python.display(),
                last.unwrap_or("no message").trim()
            )
        }
        Ok(_) => return Ok(python),
    };
    Err(Error::unsupported(
        "--compare peft",
        format!("{why}; {HOW_TO_GET_ONE}"),
    ))
}

/// The folder of the Python twins: `LORA_TRAIN_SCRIPTS`, else a `scripts/` holding
/// `bench_gpu_peft.py` beside or above this program or the working folder.
pub fn scripts_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LORA_TRAIN_SCRIPTS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let starts = [std::env::current_exe().ok(), std::env::current_dir().ok()];
    for start in starts.iter().flatten() {
        for dir in start.ancestors() {
            let scripts = dir.join("scripts");
            if scripts.join("bench_gpu_peft.py").is_file() {
                return Ok(scripts);
            }
        }
    }
    Err(Error::unsupported(
        "--compare peft",
        "cannot find the Python twins (scripts/bench_gpu_peft.py): run from the lora-train \
         repository, or set LORA_TRAIN_SCRIPTS to its scripts/ folder",
    ))
}

/// What keeps `trainer`'s job from matching a twin's setup, as `--set` advice: every twin
/// runs one micro-batch per step, unpacked; `bench_gpu_peft.py` also fixes the adapter (LoRA
/// r=16, alpha=32, dropout 0 on all seven projections), where `bench_memory_peft.py` takes the
/// job's.
fn mismatches(trainer: &Trainer, fixed_adapter: bool) -> Vec<String> {
    let job = trainer.job();
    let mut out = Vec::new();
    if fixed_adapter {
        if job.lora.r != 16 {
            out.push("lora.r=16".to_string());
        }
        if job.lora.alpha != 32.0 {
            out.push("lora.alpha=32".to_string());
        }
        if job.lora.dropout != 0.0 {
            out.push("lora.dropout=0".to_string());
        }
        let mut targets = job.target_module_names();
        targets.sort();
        let mut seven: Vec<String> = SEVEN.iter().map(|s| s.to_string()).collect();
        seven.sort();
        if targets != seven {
            out.push("lora.target_modules=all-linear".to_string());
        }
    }
    if job.train.grad_accum != 1 {
        out.push("train.grad_accum=1".to_string());
    }
    if job.data.packing {
        out.push("data.packing=false".to_string());
    }
    out
}

/// The twin's command for `trainer`'s job: its script and arguments, the token file it reads
/// written to `work`. Refuses a job the twins do not run the same way.
pub fn twin_command(
    trainer: &Trainer,
    warmup: usize,
    steps: usize,
    scripts: &Path,
    work: &Path,
) -> Result<(PathBuf, Vec<OsString>)> {
    let job = trainer.job();
    if job.is_dpo() {
        return dpo_twin_command(trainer, warmup, steps, scripts, work);
    }
    let cuda = trainer.device().is_cuda();
    let dtype = job.model.dtype.as_str();
    let memory_twin = match (&trainer.model().source, cuda, dtype, job.model.quantize) {
        (ModelSource::Gguf(_), false, "f32", Quantize::None | Quantize::Gguf) => true,
        (ModelSource::HfDir(_), _, "bf16", Quantize::None | Quantize::Nf4) => false,
        _ => {
            return Err(Error::unsupported(
                "--compare peft",
                "the twins run an f32 GGUF base on the CPU (bench_memory_peft.py) or an HF \
                 folder in bf16, dense or NF4 (bench_gpu_peft.py); set model.dtype and \
                 model.source to one of those",
            ))
        }
    };
    let fix = mismatches(trainer, !memory_twin);
    if !fix.is_empty() {
        let what = match memory_twin {
            true => "bench_memory_peft.py trains",
            false => {
                "bench_gpu_peft.py trains LoRA r=16, alpha=32, dropout 0 on all seven \
                      projections,"
            }
        };
        return Err(Error::unsupported(
            "--compare peft",
            format!(
                "{what} one micro-batch per step, unpacked; run with --set {}",
                fix.join(" --set ")
            ),
        ));
    }
    let tokens = work.join("peft-tokens.jsonl");
    let mut lines = String::new();
    for step in 0..warmup + steps {
        for e in trainer.step_examples(step % trainer.plan().total_steps.max(1)) {
            lines += &token_line(e)?;
        }
    }
    crate::fsutil::write_atomic(&tokens, lines.as_bytes())?;
    let num = |n: usize| OsString::from(n.to_string());
    let mut args: Vec<OsString> = Vec::new();
    let script = match (&trainer.model().source, job.model.quantize) {
        (ModelSource::Gguf(path), _) => {
            args.extend([
                OsString::from("--model"),
                path.clone().into_os_string(),
                "--r".into(),
                num(job.lora.r),
                "--alpha".into(),
                job.lora.alpha.to_string().into(),
                "--dropout".into(),
                job.lora.dropout.to_string().into(),
                "--targets".into(),
                job.target_module_names().join(",").into(),
            ]);
            if job.train.gradient_checkpointing {
                args.push("--checkpointing".into());
            }
            scripts.join("bench_memory_peft.py")
        }
        (ModelSource::HfDir(path), q) => {
            args.extend([
                OsString::from("train"),
                "--model".into(),
                path.clone().into_os_string(),
                "--warmup".into(),
                num(warmup),
                "--quantize".into(),
                q.name().into(),
                "--device".into(),
                (if cuda { "cuda:0" } else { "cpu" }).into(),
            ]);
            if job.train.gradient_checkpointing {
                args.push("--checkpointing".into());
            }
            scripts.join("bench_gpu_peft.py")
        }
    };
    args.extend([
        OsString::from("--tokens"),
        tokens.into_os_string(),
        "--steps".into(),
        num(warmup + steps),
        "--batch-size".into(),
        num(job.train.micro_batch_size),
        "--seq-len".into(),
        num(job.data.max_seq_len),
    ]);
    Ok((script, args))
}

/// The DPO twin, `scripts/bench_dpo_trl.py` (TRL's `DPOTrainer` with a fresh PEFT adapter),
/// for an f32 GGUF base on the CPU. It reads the training pairs as tokenized here, those of the
/// bench's steps first and in their order, then the rest (which a precomputed reference also
/// covers), and takes the job's adapter shape and loss.
fn dpo_twin_command(
    trainer: &Trainer,
    warmup: usize,
    steps: usize,
    scripts: &Path,
    work: &Path,
) -> Result<(PathBuf, Vec<OsString>)> {
    let job = trainer.job();
    let dpo = job.dpo();
    let refuse = |why: &str| Err(Error::unsupported("--compare peft", why.to_string()));
    let model = match (&trainer.model().source, trainer.device().is_cuda()) {
        (ModelSource::Gguf(path), false)
            if job.model.dtype.as_str() == "f32"
                && matches!(job.model.quantize, Quantize::None | Quantize::Gguf) =>
        {
            path.clone()
        }
        _ => {
            return refuse(
                "the DPO twin (bench_dpo_trl.py) runs an f32 GGUF base on the CPU; set \
                 model.dtype, model.device and model.source to those",
            )
        }
    };
    if job.lora.init_adapter.is_some() {
        return refuse(
            "the DPO twin starts from a fresh adapter with the base model as reference; \
             unset lora.init_adapter",
        );
    }
    if job.train.grad_accum != 1 {
        return refuse(
            "the DPO twin runs one micro-batch per step; run with --set train.grad_accum=1",
        );
    }
    // The job's checks allow `normalize_by_length` with the sigmoid loss only.
    let loss = match dpo.normalize_by_length {
        true => "sigmoid_norm",
        false => dpo.loss.name(),
    };
    let total = trainer.plan().total_steps.max(1);
    let mut lines = String::new();
    let pairs = trainer
        .pairs()
        .ok_or_else(|| Error::Msg("a DPO job without pairs".into()))?;
    // The pairs in step order, then the ones no step takes (TRL's loader may read them).
    let mut used = vec![false; pairs.train.len()];
    for step in 0..warmup + steps {
        for i in trainer.step_pair_indices(step % total) {
            used[i] = true;
            lines += &pair_line(&pairs.train[i])?;
        }
    }
    for (p, _) in pairs.train.iter().zip(&used).filter(|(_, u)| !**u) {
        lines += &pair_line(p)?;
    }
    let tokens = work.join("trl-pairs.jsonl");
    crate::fsutil::write_atomic(&tokens, lines.as_bytes())?;
    let num = |n: f64| OsString::from(n.to_string());
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        model.into_os_string(),
        "--pairs".into(),
        tokens.into_os_string(),
        "--steps".into(),
        num((warmup + steps) as f64),
        "--warmup".into(),
        num(warmup as f64),
        "--batch-size".into(),
        num(job.train.micro_batch_size as f64),
        "--r".into(),
        num(job.lora.r as f64),
        "--alpha".into(),
        num(job.lora.alpha),
        "--targets".into(),
        job.target_module_names().join(",").into(),
        "--lr".into(),
        num(job.train.lr),
        "--beta".into(),
        num(dpo.beta),
        "--loss".into(),
        loss.into(),
        "--label-smoothing".into(),
        num(dpo.label_smoothing),
        "--sft-weight".into(),
        num(dpo.sft_weight),
    ];
    if dpo.precompute_reference {
        args.push("--precompute-reference".into());
    }
    Ok((scripts.join("bench_dpo_trl.py"), args))
}

/// A pair as TRL's tokenized columns: the prompt, then each reply without it.
fn pair_line(p: &TokenizedPair) -> Result<String> {
    let n = p.prompt_len();
    let line = serde_json::json!({
        "prompt_ids": &p.chosen.input_ids[..n],
        "chosen_ids": &p.chosen.input_ids[n..],
        "rejected_ids": &p.rejected.input_ids[n..],
    });
    Ok(format!("{line}\n"))
}

fn token_line(e: &TokenizedExample) -> Result<String> {
    let line = serde_json::json!({"input_ids": e.input_ids, "targets": e.targets});
    Ok(format!("{line}\n"))
}

/// Runs the twin with `python` and compares its result with `ours`.
pub fn compare(
    python: &Path,
    script: &Path,
    args: &[OsString],
    ours: &TrainBench,
) -> Result<PeftComparison> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| Error::io(script, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    let peft: serde_json::Value = match line.map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            return Err(Error::Msg(format!(
                "{} printed no result ({}): {}",
                script.display(),
                exit_reason(&out.status),
                last.unwrap_or("no message").trim()
            )));
        }
    };
    if let Some(e) = peft.get("error").and_then(|e| e.as_str()) {
        return Err(Error::Msg(format!("{}: {e}", script.display())));
    }
    let theirs = peft
        .get("tokens_per_second")
        .and_then(|v| v.as_f64())
        .filter(|v| *v > 0.0)
        .ok_or_else(|| {
            Error::Msg(format!(
                "{}: no tokens_per_second in {peft}",
                script.display()
            ))
        })?;
    let (peft_peak, our_peak) = match ours.peak_gpu_mib {
        Some(ours) => (peft.get("max_memory_reserved_mib"), Some(ours as f64)),
        None => (
            peft.get("peak_rss_mib"),
            ours.peak_rss_mib.map(|m| m as f64),
        ),
    };
    let peft_peak = peft_peak.and_then(|v| v.as_f64());
    Ok(PeftComparison {
        script: format!(
            "scripts/{}",
            script.file_name().unwrap_or_default().to_string_lossy()
        ),
        peft_tokens_per_second: theirs,
        tokens_per_second_ratio: ours.tokens_per_second / theirs,
        peft_peak_mib: peft_peak,
        peak_memory_ratio: match (our_peak, peft_peak) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        },
        peft,
    })
}

/// How a twin ended, in words: its exit code, or the signal that killed it.
fn exit_reason(status: &std::process::ExitStatus) -> String {
    if let Some(signal) = super::killed_by_signal(status) {
        let oom = if signal == 9 {
            ", as the kernel's out-of-memory killer does"
        } else {
            ""
        };
        return format!("killed by signal {signal}{oom}");
    }
    match status.code() {
        Some(code) => format!("exit {code}"),
        None => "no exit code".to_string(),
    }
}

/// The rows of a comparison in `bench.md`.
pub fn markdown_rows(c: &PeftComparison) -> Vec<(&'static str, String)> {
    let mut rows = vec![(
        "PEFT tokens/s (ours / PEFT)",
        format!(
            "{:.1} ({:.2}×, {})",
            c.peft_tokens_per_second, c.tokens_per_second_ratio, c.script
        ),
    )];
    if let (Some(m), Some(r)) = (c.peft_peak_mib, c.peak_memory_ratio) {
        rows.push((
            "PEFT peak memory (ours / PEFT)",
            format!("{m:.0} MiB ({r:.2}×)"),
        ));
    }
    rows
}
