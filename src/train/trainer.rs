//! The fine-tuning run behind `lora-train --config job.toml`: loads the model and the prepared
//! data, then runs the loop (resume, step, log, validate, carry out the checkpoint policy's
//! actions) and finishes with the adapter export. Each role lives in its own module:
//! [`super::plan`] for batches, [`super::checkpoint_policy`] for when to save and stop,
//! [`super::resume`] for what a checkpoint must pass, [`super::run_log`] for the run's files,
//! [`crate::data::prepare`] for the examples, [`super::dpo`] for the step and validation of a
//! DPO run (`train.method = "dpo"`) and [`super::reference_cache`] for its precomputed
//! reference.

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
use super::dpo::{
    all_reference_logps, dpo_step, score_pairs_until, ChosenWatch, DpoObjective, PairLogps,
};
use super::memory;
use super::metrics::{EvalMetrics, PreferenceMetrics, StepMetrics};
use super::optimizer::{AdamW, AdamWConfig};
use super::plan::StepPlan;
use super::reference_cache::{model_key, ReferenceCache};
use super::resume::{data_hash, newest_resumable, Resumable};
use super::run_log::{RunLog, TrainSummary};
use super::schedule::Schedule;
use super::step::{train_step, StepOutcome};
use crate::config::job::{DpoReference, JobConfig, ValidationSpec};
use crate::data::batch::{collate, collate_packed, collate_pairs, MicroBatch, PairBatch};
use crate::data::pack::first_fit_decreasing;
use crate::data::prepare::{
    prepare_dataset, prepare_pairs, FitReport, HeldOut, PrepareOptions, PreparedData, PreparedPairs,
};
use crate::data::{TokenizedExample, TokenizedPair};
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
    /// With `train.method = "dpo"`, the pairs and the objective; `data` is then empty.
    dpo: Option<DpoRun>,
    /// The random rows trained on instead of the job's data, if any.
    synthetic: Option<SyntheticData>,
}

/// What a DPO run adds to the trainer.
struct DpoRun {
    objective: DpoObjective,
    pairs: PreparedPairs,
    /// With `dpo.precompute_reference`, every train and validation pair's reference
    /// log-probabilities, once the run has computed (or read) them.
    reference: Option<(Vec<PairLogps>, Vec<PairLogps>)>,
    /// Warns once when the chosen replies fall while the margins grow.
    watch: ChosenWatch,
}

/// A DPO step's pair micro-batches and, with a precomputed reference, the reference
/// log-probabilities of each one's pairs.
pub type StepPairs = (Vec<PairBatch>, Option<Vec<Vec<PairLogps>>>);

/// A validation's result: the loss (SFT: per target token; DPO: per pair), the tokens scored,
/// and DPO's measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    pub loss: f64,
    pub tokens: usize,
    pub preference: Option<PreferenceMetrics>,
}

impl Trainer {
    /// Loads the model, attaches fresh (or `init_adapter`) LoRA weights, and prepares data.
    pub fn new(job: JobConfig) -> Result<Self> {
        Self::build(job, None)
    }

    /// As [`Self::new`], but trains on `synthetic` rows of random token ids instead of the
    /// job's data (an SFT job only): what `lora-train bench --synthetic` measures.
    pub fn with_synthetic_data(job: JobConfig, synthetic: SyntheticData) -> Result<Self> {
        if job.is_dpo() {
            return Err(Error::Config(
                "synthetic rows are single sequences; a DPO job (train.method = \"dpo\") is \
                 measured on its own pairs"
                    .into(),
            ));
        }
        Self::build(job, Some(synthetic))
    }

    fn build(job: JobConfig, synthetic: Option<SyntheticData>) -> Result<Self> {
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
        let (data, pairs) = match (job.is_dpo(), &synthetic) {
            (true, _) => (
                PreparedData::default(),
                Some(prepare_pair_data(&job, &model)?),
            ),
            (false, Some(s)) => (s.prepare(model.config.vocab_size())?, None),
            (false, None) => (prepare_data(&job, &model)?, None),
        };
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
            let (sequences, per_unit) = match &pairs {
                Some(p) => (pair_sequences(&p.train), 2),
                None => (data.train.clone(), 1),
            };
            memory::check_run_fits(
                &model,
                lora_params,
                &sequences,
                per_unit,
                &job,
                dtype,
                &device,
            )?;
        }
        let mut params = match &job.lora.init_adapter {
            Some(dir) => LoraParams::from_init_adapter(model.model.as_mut(), dir, spec, &device)?,
            None => LoraParams::init(model.model.as_mut(), spec, job.train.seed, &device)?,
        };
        if job.is_dpo() {
            dpo_reference(&job, &mut params)?;
        }
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
        let units = match (&pairs, &packed_rows) {
            (Some(p), _) => p.train.len(),
            (None, Some(rows)) => rows.len(),
            (None, None) => data.train.len(),
        };
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
        let data_hash = match &synthetic {
            Some(s) => format!("synthetic:{}x{}:{}", s.rows, s.seq, s.seed),
            None => data_hash(&job.data.train, validation_file)?,
        };
        let dpo = pairs.map(|pairs| DpoRun {
            objective: DpoObjective::from(&job.dpo()),
            pairs,
            reference: None,
            watch: ChosenWatch::default(),
        });
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
            dpo,
            synthetic,
        })
    }

    /// Whether the run trains on [`SyntheticData`] rather than the job's data.
    pub fn data_is_synthetic(&self) -> bool {
        self.synthetic.is_some()
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

    /// The preference pairs of a DPO run (`train.method = "dpo"`), tokenized and fitted.
    pub fn pairs(&self) -> Option<&PreparedPairs> {
        self.dpo.as_ref().map(|d| &d.pairs)
    }

    /// What the run trains on and holds out: conversations, or DPO's pairs.
    pub fn units(&self) -> (usize, usize) {
        match &self.dpo {
            Some(d) => (d.pairs.train.len(), d.pairs.validation.len()),
            None => (self.data.train.len(), self.data.validation.len()),
        }
    }

    /// How the training examples (or pairs) fitted `data.max_seq_len`.
    pub fn fit(&self) -> &FitReport {
        match &self.dpo {
            Some(d) => &d.pairs.fit,
            None => &self.data.fit,
        }
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

    /// The units (examples, packed rows or pairs) of each micro-batch of optimizer step `step`,
    /// as indices into the training set.
    fn step_plan(&self, step: usize) -> Vec<Vec<usize>> {
        self.plan
            .step_batches(step, self.job.train.seed, self.job.data.shuffle)
    }

    /// The micro-batches of optimizer step `step` (of packed rows with `data.packing`).
    pub fn step_micro_batches(&self, step: usize) -> Result<Vec<MicroBatch>> {
        let example = |i: &usize| &self.data.train[*i];
        self.step_plan(step)
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

    /// The pair micro-batches of DPO step `step` and, with a precomputed reference, their
    /// pairs' reference log-probabilities.
    pub fn step_pair_batches(&self, step: usize) -> Result<StepPairs> {
        let dpo = self
            .dpo
            .as_ref()
            .ok_or_else(|| Error::Msg("not a DPO run".into()))?;
        let plan = self.step_plan(step);
        let batches = plan
            .iter()
            .map(|idx| {
                let pairs: Vec<&TokenizedPair> = idx.iter().map(|i| &dpo.pairs.train[*i]).collect();
                collate_pairs(&pairs, self.pad_id, &self.device)
            })
            .collect::<Result<_>>()?;
        let reference = dpo.reference.as_ref().map(|(train, _)| {
            plan.iter()
                .map(|idx| idx.iter().map(|i| train[*i]).collect())
                .collect()
        });
        Ok((batches, reference))
    }

    /// Whether a DPO run's reference log-probabilities are precomputed (no reference forward
    /// in its steps).
    pub fn reference_precomputed(&self) -> bool {
        self.dpo.as_ref().is_some_and(|d| d.reference.is_some())
    }

    /// The training pairs of DPO step `step`, as indices into [`Trainer::pairs`]' training
    /// pairs, in the order its micro-batches take them; empty for an SFT run.
    pub fn step_pair_indices(&self, step: usize) -> Vec<usize> {
        match &self.dpo {
            Some(_) => self.step_plan(step).into_iter().flatten().collect(),
            None => Vec::new(),
        }
    }

    /// Token-weighted validation loss (no dropout), or None without validation data; a DPO
    /// run's is the mean DPO loss of its pairs, and its tokens their replies'.
    pub fn validation_loss(&self) -> Result<Option<(f64, usize)>> {
        Ok(self
            .validate_until(&AtomicBool::new(false))?
            .map(|v| (v.loss, v.tokens)))
    }

    /// The validation (no dropout), or None without validation data; gives up with
    /// [`Error::Interrupted`] once `stop` is set.
    pub fn validate_until(&self, stop: &AtomicBool) -> Result<Option<Validation>> {
        if let Some(dpo) = &self.dpo {
            if dpo.pairs.validation.is_empty() {
                return Ok(None);
            }
            let score = score_pairs_until(
                self.model.model.as_ref(),
                &self.params,
                &dpo.objective,
                &dpo.pairs.validation,
                dpo.reference.as_ref().map(|(_, v)| v.as_slice()),
                self.job.train.micro_batch_size,
                self.pad_id,
                stop,
            )?;
            return Ok(Some(Validation {
                loss: score.loss,
                tokens: score.reply_tokens,
                preference: Some(score.metrics),
            }));
        }
        Ok(self
            .validation_loss_until(stop)?
            .map(|(loss, tokens)| Validation {
                loss,
                tokens,
                preference: None,
            }))
    }

    /// [`Self::validation_loss`] of an SFT run that gives up with [`Error::Interrupted`] once
    /// `stop` is set.
    fn validation_loss_until(&self, stop: &AtomicBool) -> Result<Option<(f64, usize)>> {
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
        let v = match self.validate_until(stop) {
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
            val_loss: v.loss,
            val_tokens: v.tokens,
            preference: v.preference,
        })?;
        Ok(Some(v.loss))
    }

    /// The memory check's estimate of this run's peak (whether or not `train.memory_check`
    /// is on): the figure a benchmark puts beside the measured peak.
    pub fn memory_estimate(&self) -> memory::MemoryEstimate {
        let per_unit = if self.dpo.is_some() { 2 } else { 1 };
        let sequences = match &self.dpo {
            Some(d) => pair_sequences(&d.pairs.train),
            None => self.data.train.clone(),
        };
        memory::estimate_run(
            &self.model,
            self.params.num_parameters(),
            &sequences,
            per_unit,
            &self.job,
            self.dtype,
        )
    }

    /// The lengths of the sequences optimizer step `step` trains on: each conversation (also
    /// inside a packed row), or a DPO pair's chosen and rejected sequences.
    pub fn step_sequence_lengths(&self, step: usize) -> Vec<usize> {
        let plan = self.step_plan(step);
        let units = plan.iter().flatten();
        match (&self.dpo, &self.packed_rows) {
            (Some(d), _) => units
                .flat_map(|i| {
                    let p = &d.pairs.train[*i];
                    [p.chosen.input_ids.len(), p.rejected.input_ids.len()]
                })
                .collect(),
            (None, Some(rows)) => units
                .flat_map(|r| rows[*r].iter().map(|i| self.data.train[*i].input_ids.len()))
                .collect(),
            (None, None) => units.map(|i| self.data.train[*i].input_ids.len()).collect(),
        }
    }

    /// The training examples of SFT step `step`, in the order its micro-batches take them
    /// (each packed row's conversations in turn); empty for a DPO run.
    pub fn step_examples(&self, step: usize) -> Vec<&TokenizedExample> {
        if self.dpo.is_some() {
            return Vec::new();
        }
        let plan = self.step_plan(step);
        let units = plan.into_iter().flatten();
        match &self.packed_rows {
            Some(rows) => units
                .flat_map(|r| rows[r].iter().map(|i| &self.data.train[*i]))
                .collect(),
            None => units.map(|i| &self.data.train[i]).collect(),
        }
    }

    /// A fresh AdamW over the adapter's parameters, with the job's weight decay.
    pub fn optimizer(&self) -> Result<AdamW> {
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
        if let Err(e) = self.precompute_reference(&log, &stop) {
            match e {
                Error::Interrupted(_) => interrupted = true,
                e => return Err(e),
            }
        }
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
                preference: outcome.preference,
            })?;
            let message = match &outcome.preference {
                Some(p) => {
                    self.watch_logps(p);
                    format!(
                        "loss {:.4}  margin {:.3}  acc {:.2}  lr {lr:.2e}  {tps:.0} tok/s",
                        outcome.loss, p.rewards_margins, p.rewards_accuracies
                    )
                }
                None => format!(
                    "loss {:.4}  lr {lr:.2e}  {tps:.0} tok/s  {} conv",
                    outcome.loss, outcome.conversations
                ),
            };
            bar.set_message(message);
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

    /// One optimizer step over the micro-batches of 0-based step `step` (forward, loss,
    /// backward and AdamW, as the run's loop takes it).
    pub fn optimizer_step(&self, step: usize, lr: f64, opt: &mut AdamW) -> Result<StepOutcome> {
        if let Some(dpo) = &self.dpo {
            let (batches, reference) = self.step_pair_batches(step)?;
            return dpo_step(
                self.model.model.as_ref(),
                &self.params,
                opt,
                &dpo.objective,
                &batches,
                reference.as_deref(),
                lr,
                self.job.train.max_grad_norm,
            );
        }
        let batches = self.step_micro_batches(step)?;
        train_step(
            self.model.model.as_ref(),
            &self.params,
            opt,
            &batches,
            lr,
            self.job.train.max_grad_norm,
            self.dropout_seed(step),
        )
    }

    /// The LoRA dropout seed of SFT step `step` (0 when the job has no dropout).
    pub fn dropout_seed(&self, step: usize) -> u64 {
        match self.job.lora.dropout > 0.0 {
            true => self
                .job
                .train
                .seed
                .wrapping_mul(1_000_000_007)
                .wrapping_add(step as u64 + 1),
            false => 0,
        }
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
        let (train_examples, validation_examples) = self.units();
        let summary = TrainSummary {
            steps: end.step,
            total_steps: self.plan.total_steps,
            interrupted,
            train_examples,
            validation_examples,
            fit: self.fit().clone(),
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

    /// With `dpo.precompute_reference`, every pair's reference log-probabilities, read from the
    /// output folder's cache where it has them and computed (then cached) where not; before
    /// step 1, so no reference forward runs during training.
    fn precompute_reference(&mut self, log: &RunLog, stop: &AtomicBool) -> Result<()> {
        self.precompute_reference_in(Some(log.dir()), stop)
            .map(|_| ())
    }

    /// With `dpo.precompute_reference`, every pair's reference log-probabilities before step 1,
    /// from and into the cache in `dir` (a run's output folder), or with none (every pair
    /// computed afresh, nothing written: what `bench` times). Returns the seconds spent on the
    /// training pairs, or None when the job precomputes nothing.
    pub fn precompute_reference_in(
        &mut self,
        dir: Option<&Path>,
        stop: &AtomicBool,
    ) -> Result<Option<f64>> {
        let Some(dpo) = &self.dpo else {
            return Ok(None);
        };
        if !self.job.dpo().precompute_reference || dpo.reference.is_some() {
            return Ok(None);
        }
        let settings = format!(
            "dtype={} quantize={}",
            self.job.model.dtype.as_str(),
            self.job.model.quantize.name()
        );
        let adapter = match self.job.dpo_reference_is_init_adapter() {
            true => self.job.lora.init_adapter.as_deref(),
            false => None,
        };
        let key = model_key(&self.model.source, &settings, adapter)?;
        let mut cache = dir.map(|d| ReferenceCache::open(d, &key));
        let mut lookup = |pairs: &[TokenizedPair]| -> Result<(Vec<PairLogps>, usize)> {
            let missing: Vec<TokenizedPair> = pairs
                .iter()
                .filter(|p| cache.as_ref().and_then(|c| c.get(p)).is_none())
                .cloned()
                .collect();
            let computed = all_reference_logps(
                self.model.model.as_ref(),
                &self.params,
                &missing,
                self.job.train.micro_batch_size,
                self.pad_id,
                stop,
            )?;
            let Some(cache) = cache.as_mut() else {
                return Ok((computed, missing.len()));
            };
            for (p, v) in missing.iter().zip(&computed) {
                cache.insert(p, *v);
            }
            let values = pairs
                .iter()
                .map(|p| {
                    cache
                        .get(p)
                        .ok_or_else(|| Error::Msg("a reference value went missing".into()))
                })
                .collect::<Result<_>>()?;
            Ok((values, missing.len()))
        };
        let clock = Instant::now();
        let (train, computed_train) = lookup(&dpo.pairs.train)?;
        let train_seconds = clock.elapsed().as_secs_f64();
        let (validation, computed_val) = lookup(&dpo.pairs.validation)?;
        let computed = computed_train + computed_val;
        if let Some(cache) = cache.as_mut().filter(|_| computed > 0) {
            cache.save()?;
        }
        let from = match dir {
            Some(d) => format!(
                "the rest from {}",
                d.join(super::reference_cache::REFERENCE_CACHE).display()
            ),
            None => "none cached".into(),
        };
        tracing::info!(
            "dpo.precompute_reference: {} pairs' reference log-probabilities, {computed} computed \
             ({:.1}s), {from}",
            train.len() + validation.len(),
            clock.elapsed().as_secs_f64(),
        );
        if let Some(dpo) = &mut self.dpo {
            dpo.reference = Some((train, validation));
        }
        Ok(Some(train_seconds))
    }

    /// Gives [`ChosenWatch`]'s warning, once: the chosen replies fall while the margins grow.
    fn watch_logps(&mut self, now: &PreferenceMetrics) {
        if let Some(dpo) = &mut self.dpo {
            if let Some(warning) = dpo.watch.observe(now, &dpo.objective) {
                tracing::warn!("{warning}");
            }
        }
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

/// Where the job's held-out data comes from, and how its data is prepared.
fn data_options(job: &JobConfig) -> (HeldOut<'_>, PrepareOptions) {
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
    (held_out, opts)
}

/// Reads, splits, tokenizes and fits the job's data with the model's template and tokenizer.
fn prepare_data(job: &JobConfig, model: &LoadedModel) -> Result<PreparedData> {
    let (held_out, opts) = data_options(job);
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

/// Reads, splits, tokenizes and fits a DPO job's preference pairs.
fn prepare_pair_data(job: &JobConfig, model: &LoadedModel) -> Result<PreparedPairs> {
    let (held_out, opts) = data_options(job);
    let pairs = prepare_pairs(
        &job.data.train,
        held_out,
        &model.template,
        &model.tokenizer,
        &opts,
    )?;
    tracing::info!(
        "data.train: {} preference pairs ({}), {} held out",
        pairs.train.len(),
        pairs.format.name(),
        pairs.validation.len()
    );
    let max = job.data.max_seq_len;
    for (fit, path, which) in [
        (&pairs.fit, job.data.train.as_path(), "training"),
        (
            &pairs.validation_fit,
            job.data.train.as_path(),
            "validation",
        ),
    ] {
        if fit.truncated + fit.dropped > 0 {
            tracing::warn!(
                "data.max_seq_len = {max}: {} {which} pairs lost prompt tokens from the start, {} \
                 left out (their longer reply does not fit)",
                fit.truncated,
                fit.dropped
            );
        }
        if which == "training" && pairs.train.is_empty() && fit.dropped > 0 {
            return Err(Error::NoUsableData {
                path: path.to_path_buf(),
                msg: format!(
                    "all {} pairs are left out by data.max_seq_len = {max} (their longer reply \
                     does not fit); raise it, or shorten them",
                    fit.dropped
                ),
            });
        }
    }
    if pairs.validation.is_empty() && pairs.validation_fit.dropped > 0 {
        let path = match &job.data.validation {
            Some(ValidationSpec::File(path)) => path.as_path(),
            _ => job.data.train.as_path(),
        };
        return Err(Error::NoUsableData {
            path: path.to_path_buf(),
            msg: format!(
                "all {} validation pairs are left out by data.max_seq_len = {max}; raise it, or \
                 shorten them",
                pairs.validation_fit.dropped
            ),
        });
    }
    Ok(pairs)
}

/// Every pair's two sequences, for the memory estimate.
fn pair_sequences(pairs: &[TokenizedPair]) -> Vec<TokenizedExample> {
    pairs
        .iter()
        .flat_map(|p| [p.chosen.clone(), p.rejected.clone()])
        .collect()
}

/// Sets up DPO's reference on `params` (before they are attached): the frozen init adapter
/// when the job's reference resolves to it, else the base model. Warns where the job asks for
/// what it may not mean: the base model with an init adapter, or LoRA dropout (off in DPO).
fn dpo_reference(job: &JobConfig, params: &mut LoraParams) -> Result<()> {
    let dpo = job.dpo();
    if job.dpo_reference_is_init_adapter() {
        params.freeze_reference()?;
        tracing::info!(
            "dpo.reference: the init adapter, frozen (the trained copy starts equal to it)"
        );
    } else if let Some(dir) = &job.lora.init_adapter {
        if dpo.reference == DpoReference::Base {
            tracing::warn!(
                "dpo.reference = \"base\" with lora.init_adapter {}: the rewards measure the \
                 trained adapter against the base model without any adapter, not against that \
                 starting adapter, so they start away from 0; remove dpo.reference (\"auto\") to \
                 measure against the init adapter",
                dir.display()
            );
        }
    }
    if job.lora.dropout > 0.0 {
        tracing::warn!(
            "lora.dropout = {}: DPO runs without dropout (as TRL's disable_dropout), so that the \
             policy and its reference see the same network",
            job.lora.dropout
        );
    }
    Ok(())
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

/// Rows of random token ids, every one exactly `seq` tokens and every token after the first a
/// loss target, so that benchmark runs of any model are comparable (`bench --synthetic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticData {
    pub seq: usize,
    pub rows: usize,
    pub seed: u64,
}

impl SyntheticData {
    /// The rows as prepared training data (no validation), ids drawn from `0..vocab`.
    fn prepare(&self, vocab: usize) -> Result<PreparedData> {
        use rand::{Rng, SeedableRng};
        if self.seq < 2 || self.rows == 0 || vocab == 0 {
            return Err(Error::Config(format!(
                "synthetic rows need at least 2 tokens each and at least one row (got {} rows of \
                 {} tokens)",
                self.rows, self.seq
            )));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let train = (0..self.rows)
            .map(|_| TokenizedExample {
                input_ids: (0..self.seq)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect(),
                targets: (0..self.seq).map(|t| t > 0).collect(),
            })
            .collect();
        Ok(PreparedData {
            train,
            ..Default::default()
        })
    }
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
