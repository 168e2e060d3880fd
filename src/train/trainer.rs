//! The supervised fine-tuning run behind `lora-train --config job.toml`: loads the model and
//! the prepared data, then runs the loop (resume, step, log, validate, carry out the checkpoint
//! policy's actions) and finishes with the adapter export. Each role lives in its own module:
//! [`super::plan`] for batches, [`super::checkpoint_policy`] for when to save and stop,
//! [`super::resume`] for what a checkpoint must pass, [`super::run_log`] for the run's files,
//! [`crate::data::prepare`] for the examples.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{
    job_checkpoints, job_fingerprint, new_run_id, remove_checkpoint, save_checkpoint, TrainerState,
};
use super::checkpoint_policy::{CheckpointAction, CheckpointPolicy, SavedCheckpoint};
use super::memory;
use super::metrics::{EvalMetrics, StepMetrics};
use super::optimizer::{AdamW, AdamWConfig};
use super::plan::StepPlan;
use super::resume::{data_hash, newest_resumable, Resumable};
use super::run_log::{RunLog, TrainSummary};
use super::schedule::Schedule;
use super::step::{train_step, StepOutcome};
use crate::config::job::{JobConfig, ValidationSpec};
use crate::data::batch::{collate, collate_packed, MicroBatch};
use crate::data::pack::first_fit_decreasing;
use crate::data::prepare::{prepare_dataset, FitReport, HeldOut, PrepareOptions, PreparedData};
use crate::data::TokenizedExample;
use crate::eval::score_examples_until;
use crate::export::{write_adapter, AdapterExport};
use crate::lora::{LoraParams, LoraSpec};
use crate::model::{load, LoadOptions, LoadedModel};
use crate::{Error, Result};

/// Options of a run that are not part of the job file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub resume: bool,
    /// Remove an earlier run's files from the output folder and start afresh (`--overwrite`).
    pub overwrite: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop (with a checkpoint, as on Ctrl-C) after this many steps of this invocation.
    pub stop_after: Option<usize>,
    /// Resume although the training data changed since the checkpoint.
    pub allow_data_change: bool,
}

/// A loaded job: model, adapter parameters and prepared data.
pub struct Trainer {
    job: JobConfig,
    model: LoadedModel,
    params: LoraParams,
    data: PreparedData,
    /// With `data.packing`, the training examples of each packed row; the plan then counts
    /// rows.
    packed_rows: Option<Vec<Vec<usize>>>,
    plan: StepPlan,
    schedule: Schedule,
    device: Device,
    pad_id: u32,
    dtype: DType,
    /// The SHA-256 of the training data (and a validation file), recorded in checkpoints.
    data_hash: String,
}

impl Trainer {
    /// Loads the model, attaches fresh (or `init_adapter`) LoRA weights, and prepares data.
    pub fn new(job: JobConfig) -> Result<Self> {
        let device = crate::device::open(job.model.device)?;
        tracing::info!("device: {}", crate::device::device_name(&device));
        let dtype = job.model.dtype.dtype();
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
        let data = prepare_data(&job, &model)?;
        let spec = LoraSpec {
            r: job.lora.r,
            alpha: job.lora.alpha,
            dropout: job.lora.dropout,
            use_rslora: job.lora.use_rslora,
            targets: job.target_module_names(),
        };
        // Counted (and the rank bounded) before anything is allocated.
        let lora_params = spec.planned_parameters(model.model.as_mut())?;
        if job.train.memory_check {
            memory::check_run_fits(&model, lora_params, &data.train, &job, dtype, &device)?;
        }
        let mut params = match &job.lora.init_adapter {
            Some(dir) => LoraParams::from_init_adapter(model.model.as_mut(), dir, spec, &device)?,
            None => LoraParams::init(model.model.as_mut(), spec, job.train.seed, &device)?,
        };
        params.attach(model.model.as_mut(), dtype)?;
        params.set_gradient_checkpointing(
            model.model.as_mut(),
            job.train.gradient_checkpointing,
            job.train.recompute_attention,
        );
        let packed_rows = match job.data.packing {
            true => Some(pack_rows(&job, &data.train)?),
            false => None,
        };
        let units = packed_rows.as_ref().map_or(data.train.len(), Vec::len);
        let plan = StepPlan::new(&job, units)?;
        for warning in plan.warnings(&job) {
            tracing::warn!("{warning}");
        }
        let schedule = Schedule {
            kind: job.train.scheduler,
            lr: job.train.lr,
            warmup_steps: job.train.warmup_steps_for(plan.total_steps),
            total_steps: plan.total_steps,
            min_lr_ratio: job.train.min_lr_ratio,
        };
        let pad_id = model.tokenizer.eos_token_ids.first().copied().unwrap_or(0);
        let validation_file = match &job.data.validation {
            Some(ValidationSpec::File(path)) => Some(path.as_path()),
            _ => None,
        };
        let data_hash = data_hash(&job.data.train, validation_file)?;
        Ok(Self {
            job,
            model,
            params,
            data,
            packed_rows,
            plan,
            schedule,
            device,
            pad_id,
            dtype,
            data_hash,
        })
    }

    /// The job as loaded.
    pub fn job(&self) -> &JobConfig {
        &self.job
    }

    /// The model, with the adapter attached.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// The trainable adapter weights.
    pub fn params(&self) -> &LoraParams {
        &self.params
    }

    /// The training examples, tokenized and fitted to `data.max_seq_len`.
    pub fn train(&self) -> &[TokenizedExample] {
        &self.data.train
    }

    /// The validation examples (empty without `data.validation`).
    pub fn validation(&self) -> &[TokenizedExample] {
        &self.data.validation
    }

    /// How the training examples fitted `data.max_seq_len`.
    pub fn fit(&self) -> &FitReport {
        &self.data.fit
    }

    pub fn plan(&self) -> &StepPlan {
        &self.plan
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the model computes in.
    pub fn compute_dtype(&self) -> DType {
        self.dtype
    }

    /// Runs `f` on the base model alone (the adapter detached), then attaches the adapter again.
    pub fn without_adapter<T>(&mut self, f: impl FnOnce(&Self) -> T) -> Result<T> {
        self.params.detach(self.model.model.as_mut());
        let out = f(self);
        self.params.attach(self.model.model.as_mut(), self.dtype)?;
        Ok(out)
    }

    fn export_info(&self) -> AdapterExport {
        AdapterExport {
            base_model_name_or_path: self.model.name_or_path.clone(),
            dtype: DType::F32,
        }
    }

    /// With `data.packing`, the training examples of each packed row.
    pub fn packed_rows(&self) -> Option<&[Vec<usize>]> {
        self.packed_rows.as_deref()
    }

    /// The micro-batches of optimizer step `step` (of packed rows with `data.packing`).
    pub fn step_micro_batches(&self, step: usize) -> Result<Vec<MicroBatch>> {
        let example = |i: &usize| &self.data.train[*i];
        self.plan
            .step_batches(step, self.job.train.seed, self.job.data.shuffle)
            .iter()
            .map(|idx| match &self.packed_rows {
                Some(rows) => {
                    let rows: Vec<Vec<&TokenizedExample>> = idx
                        .iter()
                        .map(|r| rows[*r].iter().map(example).collect())
                        .collect();
                    collate_packed(&rows, self.pad_id, &self.device)
                }
                None => {
                    let exs: Vec<&TokenizedExample> = idx.iter().map(example).collect();
                    collate(&exs, self.pad_id, &self.device)
                }
            })
            .collect()
    }

    /// Token-weighted validation loss (no dropout), or None without validation data.
    pub fn validation_loss(&self) -> Result<Option<(f64, usize)>> {
        self.validation_loss_until(&AtomicBool::new(false))
    }

    /// [`Self::validation_loss`] that gives up with [`Error::Interrupted`] once `stop` is set.
    pub fn validation_loss_until(&self, stop: &AtomicBool) -> Result<Option<(f64, usize)>> {
        if self.data.validation.is_empty() {
            return Ok(None);
        }
        self.params.set_dropout_seed(0);
        // In micro-batches of the training size, which the memory check has passed: with
        // packing, as many padded conversations as fit the tokens of `micro_batch_size` rows.
        let mbs = self.job.train.micro_batch_size;
        let batch = match self.job.data.packing {
            true => {
                let longest = self.data.validation.iter().map(|e| e.input_ids.len()).max();
                mbs * (self.job.data.max_seq_len / longest.unwrap_or(1).max(1)).max(1)
            }
            false => mbs,
        };
        let r = score_examples_until(
            self.model.model.as_ref(),
            &self.data.validation,
            batch,
            false,
            stop,
        )?;
        Ok(Some((r.mean_loss, r.target_tokens)))
    }

    /// Validates and logs the result; None without validation data, or when `stop` cut the
    /// validation short (then `stopped` is set and nothing is logged).
    fn evaluate_and_log(
        &self,
        log: &RunLog,
        step: usize,
        stop: &AtomicBool,
        stopped: &mut bool,
    ) -> Result<Option<f64>> {
        let (loss, n) = match self.validation_loss_until(stop) {
            Err(Error::Interrupted(_)) => {
                *stopped = true;
                return Ok(None);
            }
            result => match result? {
                Some(scored) => scored,
                None => return Ok(None),
            },
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

    /// Runs (or resumes) training to the end, or until a stop request (SIGINT or SIGTERM, which
    /// also cuts a validation short, or `stop_after`).
    pub fn run(&mut self, opts: &RunOptions, stop: Arc<AtomicBool>) -> Result<TrainSummary> {
        let how = super::output_dir::Start::from_flags(opts.resume, opts.overwrite)?;
        super::output_dir::prepare(&self.job.output.dir, how)?;
        let log = RunLog::create(&self.job.output.dir)?;
        let fingerprint = job_fingerprint(&self.job);
        let mut opt = self.optimizer()?;
        let total = self.plan.total_steps;
        let train = &self.job.train;
        let mut policy = CheckpointPolicy::new(train.save_every, train.keep_last, total)
            .stop_after(opts.stop_after);
        let (start, elapsed_before, run_id) = if opts.resume {
            let (state, saved) = self.resume(&mut opt, &fingerprint, opts)?;
            log.resume_at(state.step)?;
            policy = policy.resumed(state.step, state.run_id.as_deref(), &saved);
            (state.step, state.elapsed_s, state.run_id)
        } else {
            log.start_fresh()?;
            (0, 0.0, Some(new_run_id()))
        };
        // Where the eval harness and the server find the run's base model and data.
        log.write_job(&self.job)?;
        let mut interrupted = false;
        let val_before = match start {
            0 => self.evaluate_and_log(&log, 0, &stop, &mut interrupted)?,
            _ => log.val_loss_at(0)?,
        };
        // A validation that a stop cut short before this checkpoint is done now.
        if start > 0 && self.eval_due(start) && log.val_loss_at(start)?.is_none() {
            self.evaluate_and_log(&log, start, &stop, &mut interrupted)?;
        }
        let bar = progress_bar(opts.progress, total, start);
        let clock = Instant::now();
        let (mut step, mut tokens) = (start, 0);
        while step < total && !interrupted {
            let step_clock = Instant::now();
            let lr = self.schedule.lr_at(step);
            let outcome = match self.optimizer_step(step, lr, &mut opt) {
                Err(Error::NonFinite(what)) => {
                    bar.abandon();
                    let first = step == start;
                    return Err(self.non_finite(&what, step + 1, first, policy.last_saved()));
                }
                outcome => outcome?,
            };
            step += 1;
            tokens += outcome.tokens;
            let elapsed = elapsed_before + clock.elapsed().as_secs_f64();
            let tps = outcome.tokens as f64 / step_clock.elapsed().as_secs_f64().max(1e-9);
            log.log_step(StepMetrics {
                step,
                epoch: self.plan.epoch_of(step),
                loss: outcome.loss,
                lr,
                grad_norm: outcome.grad_norm,
                tokens: outcome.tokens,
                tokens_per_second: tps,
                elapsed_s: elapsed,
                conversations: outcome.conversations,
            })?;
            bar.set_message(format!(
                "loss {:.4}  lr {lr:.2e}  {tps:.0} tok/s  {} conv",
                outcome.loss, outcome.conversations
            ));
            bar.set_position(step as u64);
            if self.eval_due(step) {
                // A stop during it leaves the flag set: the policy saves and stops below.
                if let Some(loss) = self.evaluate_and_log(&log, step, &stop, &mut false)? {
                    bar.println(format!("step {step}: validation loss {loss:.4}"));
                }
            }
            for action in policy.after_step(step, stop.load(Ordering::SeqCst)) {
                match action {
                    CheckpointAction::Save(at) => {
                        let state = self.state_at(at, elapsed, &fingerprint, run_id.clone());
                        self.save(log.dir(), &state, &opt)?
                    }
                    CheckpointAction::Prune(at) => remove_checkpoint(log.dir(), at)?,
                    CheckpointAction::Stop => interrupted = true,
                }
            }
        }
        bar.finish_and_clear();
        let end = RunEnd {
            step,
            interrupted,
            tokens,
            val_before,
            elapsed_before,
            clock,
        };
        self.finish(&log, end, &stop)
    }

    /// Checks, before anything is written, that `--resume` can continue from the newest
    /// checkpoint: the same job, a consistent state, and the same data unless allowed.
    pub fn check_resume(&self, opts: &RunOptions) -> Result<()> {
        self.resumable_checkpoint(&job_fingerprint(&self.job), opts)
            .map(|_| ())
    }

    /// The newest checkpoint and its state, once the checks of [`Self::check_resume`] pass.
    fn resumable_checkpoint(
        &self,
        fingerprint: &str,
        opts: &RunOptions,
    ) -> Result<(TrainerState, PathBuf)> {
        let validation = match &self.job.data.validation {
            Some(ValidationSpec::File(path)) => Some(path.as_path()),
            _ => None,
        };
        newest_resumable(&Resumable {
            out: &self.job.output.dir,
            fingerprint,
            data_hash: &self.data_hash,
            data: (&self.job.data.train, validation),
            allow_data_change: opts.allow_data_change,
            plan: &self.plan,
            seed: self.job.train.seed,
        })
    }

    /// Loads the newest checkpoint of the output folder into the adapter and `opt`. Returns its
    /// state and the checkpoints this job wrote, of which the policy prunes its run's.
    fn resume(
        &mut self,
        opt: &mut AdamW,
        fingerprint: &str,
        opts: &RunOptions,
    ) -> Result<(TrainerState, Vec<SavedCheckpoint>)> {
        let (state, dir) = self.resumable_checkpoint(fingerprint, opts)?;
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
        tracing::info!("resuming from {} (step {})", dir.display(), state.step);
        let saved = job_checkpoints(&self.job.output.dir, fingerprint)?;
        Ok((state, saved))
    }

    /// One optimizer step over the micro-batches of 0-based step `step`.
    fn optimizer_step(&self, step: usize, lr: f64, opt: &mut AdamW) -> Result<StepOutcome> {
        let batches = self.step_micro_batches(step)?;
        let seed = self
            .job
            .train
            .seed
            .wrapping_mul(1_000_000_007)
            .wrapping_add(step as u64 + 1);
        train_step(
            self.model.model.as_ref(),
            &self.params,
            opt,
            &batches,
            lr,
            self.job.train.max_grad_norm,
            if self.job.lora.dropout > 0.0 { seed } else { 0 },
        )
    }

    /// Whether to validate after `step` steps (the final validation comes after the loop).
    fn eval_due(&self, step: usize) -> bool {
        let every = self.job.train.eval_every;
        every > 0 && step.is_multiple_of(every) && step < self.plan.total_steps
    }

    fn save(&self, out: &Path, state: &TrainerState, opt: &AdamW) -> Result<()> {
        save_checkpoint(out, state, &self.params, opt, &self.export_info()).map(|_| ())
    }

    fn state_at(
        &self,
        step: usize,
        elapsed_s: f64,
        fingerprint: &str,
        run_id: Option<String>,
    ) -> TrainerState {
        TrainerState {
            step,
            total_steps: self.plan.total_steps,
            epoch: self.plan.epoch_of(step),
            seed: self.job.train.seed,
            job_fingerprint: fingerprint.to_string(),
            elapsed_s,
            data_hash: Some(self.data_hash.clone()),
            run_id,
        }
    }

    /// The error for a non-finite loss or gradient at 1-based `step` (`first`: the first step
    /// of this invocation); with no checkpoint yet, it names the likely cause instead.
    fn non_finite(&self, what: &str, step: usize, first: bool, last_saved: usize) -> Error {
        if first && last_saved == 0 {
            return Error::NonFinite(format!(
                "{what} at step {step}, the first forward pass: {}",
                crate::model::NON_FINITE_CAUSE
            ));
        }
        Error::NonFinite(format!(
            "{what} at step {step}; stopped, the last good checkpoint (step {last_saved}) in {} is kept",
            self.job.output.dir.join("checkpoints").display()
        ))
    }

    /// After the loop: the final validation, the plot, the adapter and the summary. A stop
    /// after the last step, or during the final validation, skips the adapter: `--resume`
    /// does the rest from the last checkpoint.
    fn finish(&self, log: &RunLog, end: RunEnd, stop: &AtomicBool) -> Result<TrainSummary> {
        let mut interrupted = end.interrupted || stop.load(Ordering::SeqCst);
        let val_after = if interrupted {
            None
        } else {
            self.evaluate_and_log(log, end.step, stop, &mut interrupted)?
        };
        log.write_plot(&self.plot_title())?;
        let adapter_dir = if interrupted {
            None
        } else {
            let dir = log.dir().join("adapter");
            write_adapter(&self.params, &dir, &self.export_info())?;
            Some(dir)
        };
        let losses = log.step_losses()?;
        let summary = TrainSummary {
            steps: end.step,
            total_steps: self.plan.total_steps,
            interrupted,
            train_examples: self.data.train.len(),
            validation_examples: self.data.validation.len(),
            fit: self.data.fit.clone(),
            first_loss: losses.first().copied(),
            last_loss: losses.last().copied(),
            val_loss_before: end.val_before,
            val_loss_after: val_after,
            tokens: end.tokens,
            elapsed_s: end.elapsed_before + end.clock.elapsed().as_secs_f64(),
            peak_gpu_memory_mib: crate::device::peak_reserved_bytes(&self.device).map(|b| b >> 20),
            adapter_dir,
            output_dir: log.dir().to_path_buf(),
        };
        log.write_summary(&summary)?;
        Ok(summary)
    }

    /// The loss plot's title: the model's name and the LoRA rank.
    fn plot_title(&self) -> String {
        let name = Path::new(&self.model.name_or_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.model.name_or_path.clone());
        format!("{name} — LoRA r={}", self.params.spec.r)
    }
}

/// Reads, splits, tokenizes and fits the job's data with the model's template and tokenizer.
fn prepare_data(job: &JobConfig, model: &LoadedModel) -> Result<PreparedData> {
    let held_out = match &job.data.validation {
        Some(ValidationSpec::File(path)) => HeldOut::File(path),
        Some(ValidationSpec::Fraction(fraction)) => HeldOut::Fraction(*fraction),
        None => HeldOut::None,
    };
    let opts = PrepareOptions {
        loss_on: job.data.loss_on,
        max_seq_len: job.data.max_seq_len,
        split_seed: job.train.seed,
    };
    let data = prepare_dataset(
        &job.data.train,
        held_out,
        &model.template,
        &model.tokenizer,
        &opts,
    )?;
    let fit = &data.fit;
    if fit.truncated + fit.dropped > 0 {
        tracing::warn!(
            "data.max_seq_len = {}: {} conversations truncated from the left, {} dropped (their last assistant turn does not fit)",
            job.data.max_seq_len,
            fit.truncated,
            fit.dropped
        );
    }
    let val_fit = &data.validation_fit;
    let (val_path, which) = match held_out {
        HeldOut::File(path) => (path, "validation"),
        _ => (job.data.train.as_path(), "held-out validation"),
    };
    if data.validation.is_empty() && val_fit.dropped > 0 {
        return Err(Error::NoUsableData {
            path: val_path.to_path_buf(),
            msg: format!(
                "all {} {which} conversations are dropped by data.max_seq_len = {} (their last \
                 assistant turn does not fit); raise it, or shorten them",
                val_fit.dropped, job.data.max_seq_len
            ),
        });
    }
    if val_fit.dropped > 0 {
        tracing::warn!(
            "data.max_seq_len = {}: {} of the {which} conversations dropped (their last assistant turn does not fit)",
            job.data.max_seq_len,
            val_fit.dropped
        );
    }
    Ok(data)
}

/// The training examples packed into rows of up to `data.max_seq_len` tokens (seeded by
/// `train.seed`), logged with how full the rows are.
fn pack_rows(job: &JobConfig, train: &[TokenizedExample]) -> Result<Vec<Vec<usize>>> {
    let lengths: Vec<usize> = train.iter().map(|e| e.input_ids.len()).collect();
    let rows = first_fit_decreasing(&lengths, job.data.max_seq_len, job.train.seed)?;
    let tokens: usize = lengths.iter().sum();
    tracing::info!(
        "data.packing: {} conversations in {} rows of up to {} tokens ({:.1} per row, {:.0}% full)",
        train.len(),
        rows.len(),
        job.data.max_seq_len,
        train.len() as f64 / rows.len().max(1) as f64,
        100.0 * tokens as f64 / (rows.len().max(1) * job.data.max_seq_len) as f64
    );
    Ok(rows)
}

/// Where the step loop ended, for [`Trainer::finish`].
struct RunEnd {
    step: usize,
    interrupted: bool,
    /// Tokens trained on in this invocation.
    tokens: usize,
    val_before: Option<f64>,
    /// Training time of the invocations before a resume.
    elapsed_before: f64,
    clock: Instant,
}

fn progress_bar(show: bool, total: usize, start: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(start as u64);
    bar
}
