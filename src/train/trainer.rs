//! The supervised fine-tuning run behind `lora-train --config job.toml`: data preparation,
//! the step loop with gradient accumulation, validation, checkpoints, resume, Ctrl-C, and the
//! final adapter export.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::checkpoint::{
    job_checkpoints_up_to, list_checkpoints, read_state, remove_checkpoint, save_checkpoint,
    TrainerState,
};
use super::checkpoint_policy::{CheckpointAction, CheckpointPolicy};
use super::memory;
use super::metrics::{EvalMetrics, StepMetrics};
use super::optimizer::{AdamW, AdamWConfig};
use super::run_log::{RunLog, TrainSummary};
use super::schedule::Schedule;
use super::step::train_step;
use crate::config::job::{JobConfig, TrainLength, ValidationSpec};
use crate::data::batch::{collate, MicroBatch};
use crate::data::prepare::{prepare_dataset, FitReport, HeldOut, PrepareOptions, PreparedData};
use crate::data::TokenizedExample;
use crate::device::{parse_device, parse_dtype};
use crate::eval::score_examples;
use crate::export::{write_adapter, AdapterExport};
use crate::lora::{LoraParams, LoraSpec};
use crate::model::{load, LoadOptions, LoadedModel};
use crate::{Error, Result};

/// The order of examples in `epoch`: a seeded shuffle, or file order.
pub fn epoch_order(n: usize, epoch: usize, seed: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64 * 7919));
        order.shuffle(&mut rng);
    }
    order
}

/// How examples map to optimizer steps.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    pub examples: usize,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

impl StepPlan {
    pub fn new(job: &JobConfig, examples: usize) -> Result<Self> {
        if examples == 0 {
            return Err(Error::Config(format!(
                "{}: no training example is left after fitting to data.max_seq_len = {}",
                job.data.train.display(),
                job.data.max_seq_len
            )));
        }
        let mbs = job.train.micro_batch_size;
        let ga = job.train.grad_accum;
        let micro = examples.div_ceil(mbs);
        let steps_per_epoch = micro.div_ceil(ga);
        let total_steps = match job.train.length() {
            TrainLength::Steps(s) => s,
            TrainLength::Epochs(e) => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
        };
        Ok(Self {
            examples,
            micro_batch_size: mbs,
            grad_accum: ga,
            steps_per_epoch,
            total_steps,
        })
    }

    /// Example indices of each micro-batch of 0-based optimizer step `step`.
    pub fn step_batches(&self, step: usize, seed: u64, shuffle: bool) -> Vec<Vec<usize>> {
        let epoch = step / self.steps_per_epoch;
        let k = step % self.steps_per_epoch;
        let order = epoch_order(self.examples, epoch, seed, shuffle);
        let micro: Vec<&[usize]> = order.chunks(self.micro_batch_size).collect();
        let from = k * self.grad_accum;
        let to = (from + self.grad_accum).min(micro.len());
        micro[from..to].iter().map(|c| c.to_vec()).collect()
    }

    pub fn epoch_of(&self, step: usize) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }
}

/// A stop flag set by Ctrl-C.
pub fn install_ctrlc() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second handler cannot be installed; the first one's flag keeps working in tests.
    let _ = ctrlc::set_handler(move || {
        f.store(true, Ordering::SeqCst);
    });
    flag
}

fn fingerprint(job: &JobConfig) -> String {
    // Only what changes the trajectory; output paths and eval/save cadence do not.
    let mut key = serde_json::json!({
        "model": job.model.source, "dtype": job.model.dtype,
        "lora": job.lora, "data": {"train": job.data.train, "validation": job.data.validation,
        "shuffle": job.data.shuffle, "max_seq_len": job.data.max_seq_len, "loss_on": job.data.loss_on},
        "train": {"mbs": job.train.micro_batch_size, "ga": job.train.grad_accum, "lr": job.train.lr,
        "scheduler": job.train.scheduler, "warmup_steps": job.train.warmup_steps,
        "warmup_ratio": job.train.warmup_ratio, "min_lr_ratio": job.train.min_lr_ratio,
        "wd": job.train.weight_decay, "clip": job.train.max_grad_norm, "seed": job.train.seed,
        "epochs": job.train.epochs, "max_steps": job.train.max_steps}
    });
    if job.model.quantize.is_quantized() {
        // Added only when set, so fingerprints of dense runs did not change with the key.
        key["quantize"] = job.model.quantize.name().into();
    }
    let text = key.to_string();
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Fails before the first step when the run's estimated peak exceeds the memory left on
/// `device` (host memory for the CPU and Metal, the GPU's own for CUDA).
fn check_memory(
    model: &LoadedModel,
    params: &LoraParams,
    train: &[TokenizedExample],
    job: &JobConfig,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<()> {
    let shape = memory::RunShape {
        dtype_bytes: dtype.size_in_bytes(),
        quantize: job.model.quantize,
        checkpointing: job.train.gradient_checkpointing,
        recompute_attention: job.train.recompute_attention,
        micro_batch_size: job.train.micro_batch_size.min(train.len().max(1)),
        seq_len: train.iter().map(|e| e.input_ids.len()).max().unwrap_or(0),
        lora_params: params.num_parameters(),
    };
    let dims = memory::ModelDims::of(&model.config);
    // The weights are loaded by now: on a GPU they are part of the estimate, not of the free memory.
    let loaded = memory::estimate(&dims, &shape).weights;
    let Some(available) = memory::available_on(device, loaded)? else {
        return Ok(());
    };
    let place = crate::device::device_name(device);
    let est = memory::check_fits(&dims, &shape, available).map_err(|e| match e {
        Error::Config(m) if !device.is_cpu() => Error::Config(format!("{place}: {m}")),
        e => e,
    })?;
    tracing::info!(
        "estimated peak memory {:.1} GiB of {:.1} GiB available ({place})",
        est.total() / (1u64 << 30) as f64,
        available / (1u64 << 30) as f64
    );
    Ok(())
}

/// Options of a run that are not part of the job file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop (with a checkpoint, as on Ctrl-C) after this many steps of this invocation.
    pub stop_after: Option<usize>,
}

/// A loaded job: model, adapter parameters and prepared data.
pub struct Trainer {
    pub job: JobConfig,
    pub model: LoadedModel,
    pub params: LoraParams,
    pub train: Vec<TokenizedExample>,
    pub validation: Vec<TokenizedExample>,
    pub fit: FitReport,
    pub plan: StepPlan,
    pub schedule: Schedule,
    pub device: Device,
    /// `[report]` of the job, if any.
    pub report: Option<super::report::ReportSection>,
    pad_id: u32,
    dtype: candle_core::DType,
}

impl Trainer {
    /// Loads the model, attaches fresh (or `init_adapter`) LoRA weights, and prepares data.
    pub fn new(job: JobConfig) -> Result<Self> {
        if job.data.packing {
            return Err(Error::Config(
                "data.packing = true is not implemented yet; set it to false (each conversation is its own row)"
                    .into(),
            ));
        }
        let device = parse_device(&job.model.device)?;
        tracing::info!("device: {}", crate::device::device_name(&device));
        let dtype = parse_dtype(&job.model.dtype)?;
        let mut model = load(
            &job.model.source,
            &LoadOptions {
                dtype,
                device: device.clone(),
                quantize: job.model.quantize,
            },
        )?;
        if let Some(name) = &job.model.name {
            model.name_or_path = name.clone();
        }
        let held_out = match &job.data.validation {
            Some(ValidationSpec::File(path)) => HeldOut::File(path),
            Some(ValidationSpec::Fraction(fraction)) => HeldOut::Fraction(*fraction),
            None => HeldOut::None,
        };
        let prepare = PrepareOptions {
            loss_on: job.data.loss_on,
            max_seq_len: job.data.max_seq_len,
            split_seed: job.train.seed,
        };
        let PreparedData {
            train,
            validation,
            fit,
        } = prepare_dataset(
            &job.data.train,
            held_out,
            &model.template,
            &model.tokenizer,
            &prepare,
        )?;
        if fit.truncated + fit.dropped > 0 {
            tracing::warn!(
                "data.max_seq_len = {}: {} conversations truncated from the left, {} dropped (their last assistant turn does not fit)",
                job.data.max_seq_len,
                fit.truncated,
                fit.dropped
            );
        }
        let spec = LoraSpec {
            r: job.lora.r,
            alpha: job.lora.alpha,
            dropout: job.lora.dropout,
            use_rslora: job.lora.use_rslora,
            targets: job.target_module_names(),
        };
        let mut params = match &job.lora.init_adapter {
            Some(dir) => {
                LoraParams::from_peft(model.model.as_mut(), dir, job.lora.dropout, &device)?
            }
            None => LoraParams::init(model.model.as_mut(), spec, job.train.seed, &device)?,
        };
        params.attach(model.model.as_mut(), dtype)?;
        params.set_gradient_checkpointing(
            model.model.as_mut(),
            job.train.gradient_checkpointing,
            job.train.recompute_attention,
        );
        if job.train.memory_check {
            check_memory(&model, &params, &train, &job, dtype, &device)?;
        }
        let plan = StepPlan::new(&job, train.len())?;
        let schedule = Schedule {
            kind: job.train.scheduler,
            lr: job.train.lr,
            warmup_steps: job.train.warmup_steps_for(plan.total_steps),
            total_steps: plan.total_steps,
            min_lr_ratio: job.train.min_lr_ratio,
        };
        let pad_id = model.tokenizer.eos_token_ids.first().copied().unwrap_or(0);
        let job_report = job.report.clone();
        Ok(Self {
            job,
            model,
            params,
            train,
            validation,
            fit,
            plan,
            schedule,
            device,
            report: job_report,
            pad_id,
            dtype,
        })
    }

    /// The dtype the model computes in.
    pub fn compute_dtype(&self) -> candle_core::DType {
        self.dtype
    }

    fn export_info(&self) -> AdapterExport {
        AdapterExport {
            base_model_name_or_path: self.model.name_or_path.clone(),
            dtype: candle_core::DType::F32,
        }
    }

    /// The micro-batches of optimizer step `step`.
    pub fn step_micro_batches(&self, step: usize) -> Result<Vec<MicroBatch>> {
        self.plan
            .step_batches(step, self.job.train.seed, self.job.data.shuffle)
            .iter()
            .map(|idx| {
                let exs: Vec<&TokenizedExample> = idx.iter().map(|i| &self.train[*i]).collect();
                collate(&exs, self.pad_id, &self.device)
            })
            .collect()
    }

    /// Token-weighted validation loss (no dropout), or None without validation data.
    pub fn validation_loss(&self) -> Result<Option<(f64, usize)>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        self.params.set_dropout_seed(0);
        // In micro-batches of the training size, which the memory check has passed.
        let r = score_examples(
            self.model.model.as_ref(),
            &self.validation,
            self.job.train.micro_batch_size,
            false,
        )?;
        Ok(Some((r.mean_loss, r.target_tokens)))
    }

    /// Validates and logs the result; None without validation data.
    fn evaluate_and_log(&self, log: &RunLog, step: usize) -> Result<Option<f64>> {
        let Some((loss, n)) = self.validation_loss()? else {
            return Ok(None);
        };
        log.log_eval(EvalMetrics {
            step,
            epoch: self.plan.epoch_of(step),
            val_loss: loss,
            val_tokens: n,
        })?;
        Ok(Some(loss))
    }

    fn optimizer(&self) -> Result<AdamW> {
        AdamW::new(
            self.params.vars().into_iter().cloned().collect(),
            AdamWConfig {
                weight_decay: self.job.train.weight_decay,
                ..Default::default()
            },
        )
    }

    /// Runs (or resumes) training to the end, or until interrupted.
    pub fn run(&mut self, opts: &RunOptions, stop: Arc<AtomicBool>) -> Result<TrainSummary> {
        let out = self.job.output.dir.clone();
        let log = RunLog::create(&out)?;
        let fp = fingerprint(&self.job);
        let mut opt = self.optimizer()?;
        let mut start = 0usize;
        let mut elapsed_before = 0f64;
        let mut policy = CheckpointPolicy::new(
            self.job.train.save_every,
            self.job.train.keep_last,
            self.plan.total_steps,
        );
        if opts.resume {
            let Some((_, dir)) = list_checkpoints(&out)?.pop() else {
                return Err(Error::Config(format!(
                    "--resume: no checkpoint in {}",
                    out.join("checkpoints").display()
                )));
            };
            let state = read_state(&dir)?;
            if state.job_fingerprint != fp {
                return Err(Error::Config(format!(
                    "--resume: {} was written by a different job (model, data or hyper-parameters changed)",
                    dir.display()
                )));
            }
            let saved = LoraParams::from_peft(
                self.model.model.as_mut(),
                &dir,
                self.job.lora.dropout,
                &self.device,
            )?;
            for (p, s) in self.params.params.iter().zip(&saved.params) {
                p.a.set(s.a.as_tensor())?;
                p.b.set(s.b.as_tensor())?;
            }
            opt.load(&dir.join("optimizer.safetensors"))?;
            start = state.step;
            elapsed_before = state.elapsed_s;
            log.resume_at(start)?;
            policy = policy.resumed(start, job_checkpoints_up_to(&out, start, &fp)?);
            tracing::info!("resuming from {} (step {start})", dir.display());
        } else {
            log.start_fresh()?;
        }
        let val_before = if start == 0 {
            self.evaluate_and_log(&log, 0)?
        } else {
            log.val_loss_at(0)?
        };
        let total = self.plan.total_steps;
        let bar = if opts.progress {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_position(start as u64);
            b
        } else {
            ProgressBar::hidden()
        };
        let t0 = Instant::now();
        let mut tokens_total = 0usize;
        let mut policy = policy.stop_after(opts.stop_after);
        let mut interrupted = false;
        let state_at = |step: usize, elapsed: f64| TrainerState {
            step,
            total_steps: total,
            epoch: self.plan.epoch_of(step),
            seed: self.job.train.seed,
            job_fingerprint: fp.clone(),
            elapsed_s: elapsed,
        };
        let mut step = start;
        while step < total {
            let ts = Instant::now();

            let batches = self.step_micro_batches(step)?;
            let lr = self.schedule.lr_at(step);
            let seed = self
                .job
                .train
                .seed
                .wrapping_mul(1_000_000_007)
                .wrapping_add(step as u64 + 1);
            let outcome = match train_step(
                self.model.model.as_ref(),
                &self.params,
                &mut opt,
                &batches,
                lr,
                self.job.train.max_grad_norm,
                if self.job.lora.dropout > 0.0 { seed } else { 0 },
            ) {
                Ok(o) => o,
                Err(Error::NonFinite(what)) => {
                    bar.abandon();
                    return Err(Error::NonFinite(format!(
                        "{what} at step {}; stopped, the last good checkpoint (step {}) in {} is kept",
                        step + 1,
                        policy.last_saved(),
                        out.join("checkpoints").display()
                    )));
                }
                Err(e) => return Err(e),
            };
            step += 1;
            tokens_total += outcome.tokens;
            let elapsed = elapsed_before + t0.elapsed().as_secs_f64();
            let tps = outcome.tokens as f64 / ts.elapsed().as_secs_f64().max(1e-9);
            log.log_step(StepMetrics {
                step,
                epoch: self.plan.epoch_of(step),
                loss: outcome.loss,
                lr,
                grad_norm: outcome.grad_norm,
                tokens: outcome.tokens,
                tokens_per_second: tps,
                elapsed_s: elapsed,
            })?;
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                outcome.loss, lr, tps
            ));
            bar.set_position(step as u64);
            let ev = self.job.train.eval_every;
            if ev > 0 && step.is_multiple_of(ev) && step < total {
                if let Some(loss) = self.evaluate_and_log(&log, step)? {
                    bar.println(format!("step {step}: validation loss {loss:.4}"));
                }
            }
            for action in policy.after_step(step, stop.load(Ordering::SeqCst)) {
                match action {
                    CheckpointAction::Save(at) => {
                        save_checkpoint(
                            &out,
                            &state_at(at, elapsed),
                            &self.params,
                            &opt,
                            &self.export_info(),
                        )?;
                    }
                    CheckpointAction::Prune(at) => remove_checkpoint(&out, at)?,
                    CheckpointAction::Stop => interrupted = true,
                }
            }
            if interrupted {
                break;
            }
        }
        bar.finish_and_clear();
        let val_after = if interrupted {
            None
        } else {
            self.evaluate_and_log(&log, step)?
        };
        log.write_plot(&format!(
            "{} — LoRA r={}",
            Path::new(&self.model.name_or_path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.model.name_or_path.clone()),
            self.params.spec.r
        ))?;
        let adapter_dir = if interrupted {
            None
        } else {
            let dir = out.join("adapter");
            write_adapter(&self.params, &dir, &self.export_info())?;
            Some(dir)
        };
        let losses = log.step_losses()?;
        let summary = TrainSummary {
            steps: step,
            total_steps: total,
            interrupted,
            train_examples: self.train.len(),
            validation_examples: self.validation.len(),
            fit: self.fit.clone(),
            first_loss: losses.first().copied(),
            last_loss: losses.last().copied(),
            val_loss_before: val_before,
            val_loss_after: val_after,
            tokens: tokens_total,
            elapsed_s: elapsed_before + t0.elapsed().as_secs_f64(),
            peak_gpu_memory_mib: crate::device::peak_reserved_bytes(&self.device).map(|b| b >> 20),
            adapter_dir,
            output_dir: out.clone(),
        };
        log.write_summary(&summary)?;
        Ok(summary)
    }
}
