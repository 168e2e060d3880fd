//! The job file (`job.toml`): `[model]`, `[lora]`, `[data]`, `[train]`, `[output]`.
//!
//! Every key is documented in `configs/README.md`. Unknown keys are rejected.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::LossOn;

/// A whole job file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    pub output: OutputSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// An HF folder, a hub id in the local cache, or a `.gguf` file.
    pub source: String,
    /// `f32`, `bf16` or `f16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `auto`, `cpu`, `cuda:N` or `metal`.
    #[serde(default = "default_device")]
    pub device: String,
}

/// `target_modules`: a list of names, or `"all-linear"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModulesSpec {
    List(Vec<String>),
    One(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_targets")]
    pub target_modules: TargetModulesSpec,
    #[serde(default)]
    pub use_rslora: bool,
    /// Start from an existing PEFT adapter folder.
    #[serde(default)]
    pub init_adapter: Option<PathBuf>,
}

/// `validation`: a file, or a fraction of `train` held out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ValidationSpec {
    Fraction(f64),
    File(PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub train: PathBuf,
    #[serde(default)]
    pub validation: Option<ValidationSpec>,
    #[serde(default = "default_true")]
    pub shuffle: bool,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    #[serde(default)]
    pub loss_on: LossOn,
    /// Packing several conversations into one row (without cross-attention between them).
    #[serde(default)]
    pub packing: bool,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default)]
    pub epochs: Option<f64>,
    #[serde(default)]
    pub max_steps: Option<usize>,
    #[serde(default = "default_one")]
    pub micro_batch_size: usize,
    #[serde(default = "default_one")]
    pub grad_accum: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub scheduler: SchedulerKind,
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    #[serde(default)]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Validate every N optimizer steps (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[serde(default)]
    pub save_every: usize,
    /// How many step checkpoints to keep (0 keeps all).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "auto".into()
}
fn default_r() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_targets() -> TargetModulesSpec {
    TargetModulesSpec::List(
        ["q_proj", "k_proj", "v_proj", "o_proj"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
}
fn default_true() -> bool {
    true
}
fn default_max_seq_len() -> usize {
    2048
}
fn default_one() -> usize {
    1
}
fn default_lr() -> f64 {
    2e-4
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_keep_last() -> usize {
    2
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
            use_rslora: false,
            init_adapter: None,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: None,
            max_steps: None,
            micro_batch_size: 1,
            grad_accum: 1,
            lr: default_lr(),
            scheduler: SchedulerKind::default(),
            warmup_steps: None,
            warmup_ratio: None,
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: default_max_grad_norm(),
            seed: default_seed(),
            eval_every: 0,
            save_every: 0,
            keep_last: default_keep_last(),
        }
    }
}
