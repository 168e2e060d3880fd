//! The job file's tables as types: `[model]`, `[lora]`, `[data]`, `[train]`, `[output]` and the
//! optional `[report]`, `[eval]` (its tables declared in [`crate::config::eval`]) and `[hosted]`.
//!
//! Each field is a key, its doc and its default in one place ([`job_section!`]); every key is
//! documented for users in `configs/README.md`. Defaults follow PEFT's `LoraConfig` and
//! transformers' `TrainingArguments` where they agree with small-model fine-tuning.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::schema::{job_section, KeyKind, KeyType};
use super::values::{DeviceName, DtypeName};
use crate::config::eval::{CheckSection, JobEvalSection};
use crate::data::LossOn;
use crate::lora::TargetModules;
use crate::quant::Quantize;

job_section! {
    /// A whole job file.
    pub struct JobConfig {
        pub model: ModelSection,
        pub lora: LoraSection = LoraSection::default(),
        pub data: DataSection,
        pub train: TrainSection = TrainSection::default(),
        pub output: OutputSection,
        /// `[report]`: held-out prompts and the behaviour their replies should show.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub report: Option<ReportSection> = None,
        /// `[eval]`: the evaluation harness run after training, base model against adapter.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub eval: Option<JobEvalSection> = None,
        /// `[dpo]`: preference optimization, read when `train.method = "dpo"`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub dpo: Option<DpoSection> = None,
        /// `[hosted]`: remote fine-tuning settings, parsed by `providers`, kept raw here.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub hosted: Option<toml::Table> = None,
    }
}

job_section! {
    /// `[model]`: which base model, and how it is held.
    pub struct ModelSection {
        /// An HF folder, a Hub repo `org/name[@revision]` (downloaded into the Hub cache), or a
        /// `.gguf` file.
        pub source: String,
        pub dtype: DtypeName = DtypeName::F32,
        pub device: DeviceName = DeviceName::Auto,
        /// How the frozen projections are stored: dense, or quantized (QLoRA).
        pub quantize: Quantize = Quantize::None,
        /// What exported adapters give as `base_model_name_or_path` (e.g. the hub id of a model
        /// loaded from a local GGUF); default: `source` as written.
        pub name: Option<String> = None,
    }
}

job_section! {
    /// `[lora]`: the adapter's shape.
    pub struct LoraSection {
        pub r: usize = 16,
        pub alpha: f64 = 32.0,
        pub dropout: f64 = 0.0,
        /// A list of module names, or `"all-linear"`.
        pub target_modules: TargetModules = TargetModules::List(
            ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
        ),
        pub use_rslora: bool = false,
        /// Start from an existing PEFT adapter folder.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub init_adapter: Option<PathBuf> = None,
    }
}

job_section! {
    /// `[data]`: the conversations and how they become rows.
    pub struct DataSection {
        pub train: PathBuf,
        /// A file, or a fraction of `train` held out.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub validation: Option<ValidationSpec> = None,
        pub shuffle: bool = true,
        pub max_seq_len: usize = 2048,
        pub loss_on: LossOn = LossOn::LastAssistant,
        /// Packing several conversations into one row (without cross-attention between them).
        pub packing: bool = false,
    }
}

job_section! {
    /// `[train]`: method, length, batch, optimizer, schedule, checkpoints and memory.
    pub struct TrainSection {
        /// `sft` (supervised, on conversations) or `dpo` (preference pairs, with `[dpo]`).
        pub method: TrainMethod = TrainMethod::Sft,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub epochs: Option<f64> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_steps: Option<usize> = None,
        pub micro_batch_size: usize = 1,
        pub grad_accum: usize = 1,
        pub lr: f64 = 2e-4,
        pub scheduler: SchedulerKind = SchedulerKind::Linear,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub warmup_steps: Option<usize> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub warmup_ratio: Option<f64> = None,
        pub min_lr_ratio: f64 = 0.0,
        pub weight_decay: f64 = 0.0,
        pub max_grad_norm: f64 = 1.0,
        pub seed: u64 = 42,
        /// Validate every N optimizer steps (0: only at the end).
        pub eval_every: usize = 0,
        /// Checkpoint every N optimizer steps (0: only at the end).
        pub save_every: usize = 0,
        /// How many step checkpoints to keep (0 keeps all).
        pub keep_last: usize = 2,
        /// Recompute each decoder layer in backward instead of keeping its activations.
        pub gradient_checkpointing: bool = false,
        /// With checkpointing, keep only each layer's input and run attention's forward again in
        /// backward, instead of also keeping the attention output and its log-sum-exp.
        pub recompute_attention: bool = false,
        /// Refuse to start a run whose estimated peak memory exceeds what the device has.
        pub memory_check: bool = true,
    }
}

job_section! {
    /// `[dpo]`: Direct Preference Optimization (Rafailov et al. 2023) as TRL's `DPOTrainer` runs
    /// it; each key names the `DPOConfig` field it follows.
    pub struct DpoSection {
        /// The strength of the pull towards the reference (`DPOConfig.beta`).
        pub beta: f64 = 0.1,
        /// The loss on the reward margin (`DPOConfig.loss_type`).
        pub loss: DpoLoss = DpoLoss::Sigmoid,
        /// The assumed fraction of flipped labels, for the `robust` loss.
        pub label_smoothing: f64 = 0.0,
        /// RPO: this weight times the NLL of the chosen reply is added to the loss (TRL's
        /// `loss_type = ["sigmoid", "sft"]` weights, Together's `rpo_alpha`).
        pub sft_weight: f64 = 0.0,
        /// Which model the rewards are measured against.
        pub reference: DpoReference = DpoReference::Auto,
        /// Compute every pair's reference log-probabilities once before step 1, and cache them.
        pub precompute_reference: bool = false,
        /// Divide each reply's log-ratio by its length (TRL's `sigmoid_norm`).
        pub normalize_by_length: bool = false,
    }
}

job_section! {
    /// `[output]`: where the run writes.
    pub struct OutputSection {
        pub dir: PathBuf,
    }
}

job_section! {
    /// `[report]`: which held-out prompts to try after training and what the behaviour is.
    pub struct ReportSection {
        /// Conversations (JSONL); each is cut before its last assistant turn to make a prompt.
        pub prompts: PathBuf,
        /// The reply must start with this (after trimming whitespace).
        pub starts_with: Option<String> = None,
        /// The reply must end with this (after trimming whitespace).
        pub ends_with: Option<String> = None,
        /// The reply must contain this.
        pub contains: Option<String> = None,
        pub max_new_tokens: usize = 64,
        /// At most this many prompts (0: all).
        pub limit: usize = 0,
    }
}

/// `validation`: a file, or a fraction of `train` held out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ValidationSpec {
    Fraction(f64),
    File(PathBuf),
}

impl KeyType for ValidationSpec {
    const KIND: KeyKind = KeyKind::PathOrFraction;
}

/// Learning-rate schedule shape.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Constant,
    #[default]
    Linear,
    Cosine,
}

impl SchedulerKind {
    pub const NAMES: &'static [&'static str] = &["constant", "linear", "cosine"];

    /// The name used in job files.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Constant => "constant",
            SchedulerKind::Linear => "linear",
            SchedulerKind::Cosine => "cosine",
        }
    }
}

impl KeyType for SchedulerKind {
    const KIND: KeyKind = KeyKind::Choice(SchedulerKind::NAMES);
}

/// What a run trains on, and with which loss.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrainMethod {
    /// Supervised fine-tuning on conversations: the NLL of the trained replies.
    #[default]
    Sft,
    /// Direct Preference Optimization on preference pairs (`[dpo]`).
    Dpo,
}

impl TrainMethod {
    pub const NAMES: &'static [&'static str] = &["sft", "dpo"];

    /// The name used in job files.
    pub fn name(self) -> &'static str {
        match self {
            TrainMethod::Sft => "sft",
            TrainMethod::Dpo => "dpo",
        }
    }
}

impl KeyType for TrainMethod {
    const KIND: KeyKind = KeyKind::Choice(TrainMethod::NAMES);
}

/// The DPO loss on a pair's reward margin, as TRL's `loss_type` names it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `-log σ(β·Δ)`, the DPO paper's.
    #[default]
    Sigmoid,
    /// IPO (Azar et al. 2023): `(Δ/len − 1/(2β))²` on per-token averaged log-ratios.
    Ipo,
    /// SLiC's `max(0, 1 − β·Δ)`.
    Hinge,
    /// Robust DPO (Chowdhury et al. 2024), unbiased under `label_smoothing` flipped labels.
    Robust,
}

impl DpoLoss {
    pub const NAMES: &'static [&'static str] = &["sigmoid", "ipo", "hinge", "robust"];

    /// The name used in job files (and TRL's `loss_type`).
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Robust => "robust",
        }
    }
}

impl KeyType for DpoLoss {
    const KIND: KeyKind = KeyKind::Choice(DpoLoss::NAMES);
}

/// Which model DPO's rewards are measured against.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DpoReference {
    /// `init_adapter` when the job has one, else `base`.
    #[default]
    Auto,
    /// The base model: the projections with the adapter switched off.
    Base,
    /// `lora.init_adapter` as loaded, kept frozen beside the trained copy.
    InitAdapter,
}

impl DpoReference {
    pub const NAMES: &'static [&'static str] = &["auto", "base", "init_adapter"];

    /// The name used in job files.
    pub fn name(self) -> &'static str {
        match self {
            DpoReference::Auto => "auto",
            DpoReference::Base => "base",
            DpoReference::InitAdapter => "init_adapter",
        }
    }
}

impl KeyType for DpoReference {
    const KIND: KeyKind = KeyKind::Choice(DpoReference::NAMES);
}

impl JobConfig {
    /// The `[dpo]` settings (their defaults when the table is absent).
    pub fn dpo(&self) -> DpoSection {
        self.dpo.clone().unwrap_or_default()
    }

    /// Whether the run trains on preference pairs.
    pub fn is_dpo(&self) -> bool {
        self.train.method == TrainMethod::Dpo
    }

    /// The reference DPO measures against, `auto` resolved: whether it is the frozen
    /// `init_adapter` (else the base model).
    pub fn dpo_reference_is_init_adapter(&self) -> bool {
        match self.dpo().reference {
            DpoReference::Auto => self.lora.init_adapter.is_some(),
            DpoReference::Base => false,
            DpoReference::InitAdapter => true,
        }
    }
}

/// How long training runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainLength {
    /// Passes over the training set; a fraction stops part-way through the last one.
    Epochs(f64),
    /// Optimizer steps (each `micro_batch_size * grad_accum` conversations).
    Steps(usize),
}

impl TrainSection {
    /// `max_steps` when given, else `epochs`, else one epoch.
    pub fn length(&self) -> TrainLength {
        match (self.max_steps, self.epochs) {
            (Some(steps), _) => TrainLength::Steps(steps),
            (None, Some(epochs)) => TrainLength::Epochs(epochs),
            (None, None) => TrainLength::Epochs(1.0),
        }
    }

    /// Warmup length for a run of `total_steps` optimizer steps: `warmup_steps`, or
    /// `ceil(warmup_ratio * total_steps)` as transformers' `TrainingArguments.get_warmup_steps`.
    pub fn warmup_steps_for(&self, total_steps: usize) -> usize {
        match (self.warmup_steps, self.warmup_ratio) {
            (Some(steps), _) => steps.min(total_steps),
            (None, Some(ratio)) => ((ratio * total_steps as f64).ceil() as usize).min(total_steps),
            (None, None) => 0,
        }
    }
}

impl LoraSection {
    /// The factor on `B·A` (see [`crate::lora::lora_scale`]); a rank of 0, which the checks
    /// refuse, counts as 1 here.
    pub fn scaling(&self) -> f64 {
        crate::lora::lora_scale(self.alpha, self.r.max(1), self.use_rslora)
    }
}

impl ReportSection {
    /// The shorthand as eval checks, one per rule given, named after its key (`starts_with`,
    /// `ends_with`, `contains`); a reply shows the behaviour when it passes them all.
    pub fn checks(&self) -> Vec<CheckSection> {
        let mut checks = Vec::new();
        if let Some(s) = &self.starts_with {
            checks.push(CheckSection {
                name: "starts_with".into(),
                starts_with: Some(s.clone()),
                ..CheckSection::default()
            });
        }
        if let Some(s) = &self.ends_with {
            checks.push(CheckSection {
                name: "ends_with".into(),
                ends_with: Some(s.clone()),
                ..CheckSection::default()
            });
        }
        if let Some(s) = &self.contains {
            checks.push(CheckSection {
                name: "contains".into(),
                contains: Some(s.clone()),
                ..CheckSection::default()
            });
        }
        checks
    }

    /// The behaviour in words: `starts with "Ahoy!" and ends with "🦀"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.starts_with {
            parts.push(format!("starts with {s:?}"));
        }
        if let Some(s) = &self.ends_with {
            parts.push(format!("ends with {s:?}"));
        }
        if let Some(s) = &self.contains {
            parts.push(format!("contains {s:?}"));
        }
        parts.join(" and ")
    }
}
