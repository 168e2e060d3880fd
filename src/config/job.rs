//! The job file (`job.toml`): `[model]`, `[lora]`, `[data]`, `[train]`, `[output]`, an optional
//! `[report]` (the before/after behaviour check of `train::report`) and an optional `[hosted]`
//! table that `providers` reads.
//!
//! Every key is documented in `configs/README.md`. [`JobConfig::load`] reads the file, applies
//! `--set section.key=value` overrides, checks every key against [`SCHEMA`] (unknown keys get
//! the nearest valid key suggested, as cargo and clap do for misspelt names), resolves relative
//! paths against the job file's folder and runs [`JobConfig::validate`]. Each error is one line
//! naming the file, the line and the key, or the `--set` override at fault. Loading only reads.
//! Defaults follow PEFT's `LoraConfig` and transformers' `TrainingArguments` where they agree
//! with small-model fine-tuning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::LossOn;
use crate::quant::Quantize;
use crate::train::report::ReportSection;
use crate::{Error, Result};

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
    /// `[report]`: held-out prompts and the behaviour their replies should show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportSection>,
    /// `[hosted]`: remote fine-tuning settings, parsed by `providers`, kept raw here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted: Option<toml::Value>,
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
    /// How the frozen projections are stored: dense, or quantized (QLoRA).
    #[serde(default)]
    pub quantize: Quantize,
    /// What exported adapters give as `base_model_name_or_path` (e.g. the hub id of a model
    /// loaded from a local GGUF); default: `source` as written.
    #[serde(default)]
    pub name: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    #[serde(default = "default_one")]
    pub micro_batch_size: usize,
    #[serde(default = "default_one")]
    pub grad_accum: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub scheduler: SchedulerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// Recompute each decoder layer in backward instead of keeping its activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With checkpointing, keep only each layer's input and run attention's forward again in
    /// backward, instead of also keeping the attention output and its log-sum-exp.
    #[serde(default)]
    pub recompute_attention: bool,
    /// Refuse to start a run whose estimated peak memory exceeds what the device has.
    #[serde(default = "default_true")]
    pub memory_check: bool,
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
            gradient_checkpointing: false,
            recompute_attention: false,
            memory_check: true,
        }
    }
}

/// The linear layers of a Llama / Gemma 3 decoder block that can carry an adapter,
/// in the order `"all-linear"` expands to.
pub use crate::lora::PROJECTIONS as LORA_TARGET_MODULES;

/// The `target_modules` value that selects every name in [`LORA_TARGET_MODULES`] (PEFT's spelling).
pub const ALL_LINEAR: &str = "all-linear";

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
    /// The factor on `B·A`: `alpha / r`, or `alpha / sqrt(r)` with `use_rslora` (as PEFT).
    pub fn scaling(&self) -> f64 {
        let r = self.r.max(1) as f64;
        if self.use_rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

/// What a key must hold, checked before serde sees the table so that errors name key and line.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    Str,
    Bool,
    /// A non-negative integer.
    Count,
    /// An integer or a float.
    Number,
    /// A string or a list of strings.
    Names,
    /// A string (a path) or a number (a fraction).
    PathOrFraction,
    /// One of these strings.
    Choice(&'static [&'static str]),
}

/// One `[section]` of the job file and the keys it accepts.
#[derive(Debug)]
pub struct SectionSchema {
    pub name: &'static str,
    /// Whether the section must be present.
    pub required: bool,
    pub keys: &'static [(&'static str, KeyKind)],
    /// Keys without a default.
    pub required_keys: &'static [&'static str],
}

/// Every section and key a job file may hold, in the order `configs/README.md` documents them.
/// `[hosted]` is accepted with any content; `providers` checks it.
pub const SCHEMA: &[SectionSchema] = &[
    SectionSchema {
        name: "model",
        required: true,
        keys: &[
            ("source", KeyKind::Str),
            ("dtype", KeyKind::Str),
            ("device", KeyKind::Str),
            ("quantize", KeyKind::Choice(Quantize::NAMES)),
            ("name", KeyKind::Str),
        ],
        required_keys: &["source"],
    },
    SectionSchema {
        name: "lora",
        required: false,
        keys: &[
            ("r", KeyKind::Count),
            ("alpha", KeyKind::Number),
            ("dropout", KeyKind::Number),
            ("target_modules", KeyKind::Names),
            ("use_rslora", KeyKind::Bool),
            ("init_adapter", KeyKind::Str),
        ],
        required_keys: &[],
    },
    SectionSchema {
        name: "data",
        required: true,
        keys: &[
            ("train", KeyKind::Str),
            ("validation", KeyKind::PathOrFraction),
            ("shuffle", KeyKind::Bool),
            ("max_seq_len", KeyKind::Count),
            (
                "loss_on",
                KeyKind::Choice(&["last_assistant", "all_assistant", "all"]),
            ),
            ("packing", KeyKind::Bool),
        ],
        required_keys: &["train"],
    },
    SectionSchema {
        name: "train",
        required: false,
        keys: &[
            ("epochs", KeyKind::Number),
            ("max_steps", KeyKind::Count),
            ("micro_batch_size", KeyKind::Count),
            ("grad_accum", KeyKind::Count),
            ("lr", KeyKind::Number),
            (
                "scheduler",
                KeyKind::Choice(&["constant", "linear", "cosine"]),
            ),
            ("warmup_steps", KeyKind::Count),
            ("warmup_ratio", KeyKind::Number),
            ("min_lr_ratio", KeyKind::Number),
            ("weight_decay", KeyKind::Number),
            ("max_grad_norm", KeyKind::Number),
            ("seed", KeyKind::Count),
            ("eval_every", KeyKind::Count),
            ("save_every", KeyKind::Count),
            ("keep_last", KeyKind::Count),
            ("gradient_checkpointing", KeyKind::Bool),
            ("recompute_attention", KeyKind::Bool),
            ("memory_check", KeyKind::Bool),
        ],
        required_keys: &[],
    },
    SectionSchema {
        name: "output",
        required: true,
        keys: &[("dir", KeyKind::Str)],
        required_keys: &["dir"],
    },
    SectionSchema {
        name: "report",
        required: false,
        keys: &[
            ("prompts", KeyKind::Str),
            ("starts_with", KeyKind::Str),
            ("ends_with", KeyKind::Str),
            ("contains", KeyKind::Str),
            ("max_new_tokens", KeyKind::Count),
            ("limit", KeyKind::Count),
        ],
        required_keys: &["prompts"],
    },
];

/// The section whose content this module does not check.
const HOSTED: &str = "hosted";

/// Names other tools use for our keys (transformers, PEFT, axolotl), so that a misspelling of
/// `learning_rate` still leads to `train.lr`.
const KEY_ALIASES: &[(&str, &str)] = &[
    ("model_name_or_path", "model.source"),
    ("model", "model.source"),
    ("model_id", "model.source"),
    ("path", "model.source"),
    ("torch_dtype", "model.dtype"),
    ("precision", "model.dtype"),
    ("rank", "lora.r"),
    ("lora_r", "lora.r"),
    ("lora_rank", "lora.r"),
    ("lora_alpha", "lora.alpha"),
    ("lora_dropout", "lora.dropout"),
    ("targets", "lora.target_modules"),
    ("lora_target_modules", "lora.target_modules"),
    ("rslora", "lora.use_rslora"),
    ("adapter", "lora.init_adapter"),
    ("train_file", "data.train"),
    ("train_path", "data.train"),
    ("valid", "data.validation"),
    ("val", "data.validation"),
    ("eval", "data.validation"),
    ("validation_file", "data.validation"),
    ("eval_file", "data.validation"),
    ("val_set_size", "data.validation"),
    ("max_length", "data.max_seq_len"),
    ("max_seq_length", "data.max_seq_len"),
    ("sequence_len", "data.max_seq_len"),
    ("seq_len", "data.max_seq_len"),
    ("cutoff_len", "data.max_seq_len"),
    ("num_train_epochs", "train.epochs"),
    ("num_epochs", "train.epochs"),
    ("steps", "train.max_steps"),
    ("num_steps", "train.max_steps"),
    ("total_steps", "train.max_steps"),
    ("batch_size", "train.micro_batch_size"),
    ("per_device_train_batch_size", "train.micro_batch_size"),
    ("gradient_accumulation_steps", "train.grad_accum"),
    ("gradient_accumulation", "train.grad_accum"),
    ("learning_rate", "train.lr"),
    ("lr_scheduler_type", "train.scheduler"),
    ("lr_scheduler", "train.scheduler"),
    ("warmup", "train.warmup_steps"),
    ("min_lr", "train.min_lr_ratio"),
    ("clip_grad_norm", "train.max_grad_norm"),
    ("eval_steps", "train.eval_every"),
    ("save_steps", "train.save_every"),
    ("save_total_limit", "train.keep_last"),
    ("output_dir", "output.dir"),
    ("out_dir", "output.dir"),
    ("path", "output.dir"),
];

const SECTION_ALIASES: &[(&str, &str)] = &[
    ("models", "model"),
    ("adapter", "lora"),
    ("peft", "lora"),
    ("dataset", "data"),
    ("datasets", "data"),
    ("training", "train"),
    ("trainer", "train"),
    ("optimizer", "train"),
    ("outputs", "output"),
    ("out", "output"),
];

/// A broken rule of [`JobConfig::validate`]: the key at fault and a message that names it.
struct Invalid {
    key: &'static str,
    msg: String,
}

fn invalid(key: &'static str, msg: impl Into<String>) -> Invalid {
    Invalid {
        key,
        msg: msg.into(),
    }
}

impl JobConfig {
    /// Reads a job file, applies `--set section.key=value` overrides, resolves relative paths
    /// against the file's folder and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<JobConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str(&text, path, overrides)
    }

    /// [`JobConfig::load`] on text already read; `path` names the file in errors and its folder
    /// anchors relative paths.
    pub fn load_str(text: &str, path: &Path, overrides: &[String]) -> Result<JobConfig> {
        let mut doc = Document::parse(text, path)?;
        for raw in overrides {
            doc.apply_override(raw)?;
        }
        doc.check_keys()?;
        let mut job = JobConfig::deserialize(toml::Value::Table(doc.table.clone()))
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?;
        let base = path.parent().unwrap_or(Path::new(""));
        job.resolve_paths(base, |key| doc.overridden.contains_key(key));
        job.check().map_err(|bad| doc.error_at(bad.key, &bad.msg))?;
        Ok(job)
    }

    /// The job file as a raw table after `--set` overrides, checked as [`JobConfig::load`] checks
    /// it, for readers that must tell written keys from defaults (the `[hosted]` mapping). Paths
    /// in the table stay relative to the job file's folder, except those set with `--set`, which
    /// are made absolute against the current directory as `load` reads them.
    pub fn load_table(path: &Path, overrides: &[String]) -> Result<toml::Table> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str(&text, path, overrides)?;
        let mut doc = Document::parse(&text, path)?;
        for raw in overrides {
            doc.apply_override(raw)?;
        }
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        let path_keys = [
            ("data", "train"),
            ("data", "validation"),
            ("lora", "init_adapter"),
            ("output", "dir"),
            ("report", "prompts"),
            ("model", "source"),
        ];
        for (section, name) in path_keys {
            if !doc.overridden.contains_key(&format!("{section}.{name}")) {
                continue;
            }
            let Some(toml::Value::Table(keys)) = doc.table.get_mut(section) else {
                continue;
            };
            if let Some(toml::Value::String(value)) = keys.get_mut(name) {
                let relative = Path::new(value.as_str());
                // A hub id such as `org/name` is also a relative path: only rewrite names that exist.
                let is_path = name != "source" || cwd.join(relative).exists();
                if relative.is_relative() && !value.is_empty() && is_path {
                    *value = cwd.join(relative).to_string_lossy().into_owned();
                }
            }
        }
        Ok(doc.table)
    }

    /// Checks every value rule; each error names its key. [`JobConfig::load`] already runs this.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|bad| Error::Config(bad.msg))
    }

    /// The module names adapters go on, `"all-linear"` expanded, without duplicates.
    pub fn target_module_names(&self) -> Vec<String> {
        let given: Vec<&str> = match &self.lora.target_modules {
            TargetModulesSpec::One(name) => vec![name.as_str()],
            TargetModulesSpec::List(names) => names.iter().map(String::as_str).collect(),
        };
        let mut names: Vec<String> = Vec::new();
        for name in given {
            let expanded: Vec<&str> = if name == ALL_LINEAR {
                LORA_TARGET_MODULES.to_vec()
            } else {
                vec![name]
            };
            for n in expanded {
                if !names.iter().any(|have| have == n) {
                    names.push(n.to_string());
                }
            }
        }
        names
    }

    /// Checks that the files the job reads exist: `data.train`, a `data.validation` file,
    /// `lora.init_adapter` and `report.prompts`. (`model.source` may be a hub id; the model loader checks it.)
    pub fn check_files(&self) -> Result<()> {
        let mut files: Vec<(&str, &Path)> = vec![("data.train", &self.data.train)];
        if let Some(ValidationSpec::File(file)) = &self.data.validation {
            files.push(("data.validation", file));
        }
        if let Some(dir) = &self.lora.init_adapter {
            files.push(("lora.init_adapter", dir));
        }
        if let Some(report) = &self.report {
            files.push(("report.prompts", &report.prompts));
        }
        for (key, file) in files {
            if !file.exists() {
                return Err(Error::Config(format!(
                    "`{key}`: {} does not exist",
                    file.display()
                )));
            }
        }
        Ok(())
    }

    /// The job as TOML, e.g. to record the resolved configuration beside a run's checkpoints.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("cannot write the job as TOML: {e}")))
    }

    fn resolve_paths(&mut self, base: &Path, overridden: impl Fn(&str) -> bool) {
        let join = |p: &Path| -> PathBuf {
            if p.is_relative() && !p.as_os_str().is_empty() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        if !overridden("data.train") {
            self.data.train = join(&self.data.train);
        }
        if !overridden("data.validation") {
            if let Some(ValidationSpec::File(file)) = &mut self.data.validation {
                *file = join(file);
            }
        }
        if !overridden("lora.init_adapter") {
            if let Some(dir) = &mut self.lora.init_adapter {
                *dir = join(dir);
            }
        }
        if !overridden("output.dir") {
            self.output.dir = join(&self.output.dir);
        }
        if !overridden("report.prompts") {
            if let Some(report) = &mut self.report {
                report.prompts = join(&report.prompts);
            }
        }
        if !overridden("model.source") {
            let source = Path::new(&self.model.source);
            // A hub id such as `org/name` is also a relative path: only rewrite names that exist.
            if source.is_relative() && !self.model.source.is_empty() && base.join(source).exists() {
                self.model.source = base.join(source).to_string_lossy().into_owned();
            }
        }
    }

    fn check(&self) -> std::result::Result<(), Invalid> {
        let (m, l, d, t) = (&self.model, &self.lora, &self.data, &self.train);
        not_empty("model.source", Path::new(&m.source))?;
        if !["f32", "bf16", "f16"].contains(&m.dtype.as_str()) {
            let msg = format!("`model.dtype` must be f32, bf16 or f16 (got {:?})", m.dtype);
            return Err(invalid("model.dtype", msg));
        }
        if !is_device_name(&m.device) {
            let msg = format!(
                "`model.device` must be auto, cpu, cuda:N or metal (got {:?})",
                m.device
            );
            return Err(invalid("model.device", msg));
        }

        at_least_one("lora.r", l.r)?;
        positive("lora.alpha", l.alpha)?;
        in_range(
            "lora.dropout",
            l.dropout,
            "[0, 1)",
            (0.0..1.0).contains(&l.dropout),
        )?;
        self.check_targets()?;
        if let Some(dir) = &l.init_adapter {
            not_empty("lora.init_adapter", dir)?;
        }

        not_empty("data.train", &d.train)?;
        match &d.validation {
            Some(ValidationSpec::Fraction(f)) if !(*f > 0.0 && *f < 1.0) => {
                let msg = format!(
                    "`data.validation` as a fraction of the training set must be in (0, 1) (got {f})"
                );
                return Err(invalid("data.validation", msg));
            }
            Some(ValidationSpec::File(file)) => not_empty("data.validation", file)?,
            _ => {}
        }
        if d.max_seq_len < 16 {
            let msg = format!(
                "`data.max_seq_len` must be at least 16 (got {})",
                d.max_seq_len
            );
            return Err(invalid("data.max_seq_len", msg));
        }

        if t.epochs.is_some() && t.max_steps.is_some() {
            return Err(invalid(
                "train.max_steps",
                "`train.epochs` and `train.max_steps` are both set: give one",
            ));
        }
        if let Some(epochs) = t.epochs {
            positive("train.epochs", epochs)?;
        }
        if let Some(steps) = t.max_steps {
            at_least_one("train.max_steps", steps)?;
        }
        at_least_one("train.micro_batch_size", t.micro_batch_size)?;
        at_least_one("train.grad_accum", t.grad_accum)?;
        positive("train.lr", t.lr)?;
        if t.warmup_steps.is_some() && t.warmup_ratio.is_some() {
            return Err(invalid(
                "train.warmup_ratio",
                "`train.warmup_steps` and `train.warmup_ratio` are both set: give one",
            ));
        }
        if let Some(ratio) = t.warmup_ratio {
            in_range(
                "train.warmup_ratio",
                ratio,
                "[0, 1)",
                (0.0..1.0).contains(&ratio),
            )?;
        }
        let min_lr = t.min_lr_ratio;
        in_range(
            "train.min_lr_ratio",
            min_lr,
            "[0, 1]",
            (0.0..=1.0).contains(&min_lr),
        )?;
        non_negative("train.weight_decay", t.weight_decay)?;
        non_negative("train.max_grad_norm", t.max_grad_norm)?;
        if t.eval_every > 0 && d.validation.is_none() {
            let msg = format!(
                "`train.eval_every` = {} needs `data.validation` (a file or a fraction)",
                t.eval_every
            );
            return Err(invalid("train.eval_every", msg));
        }

        not_empty("output.dir", &self.output.dir)?;

        if let Some(report) = &self.report {
            not_empty("report.prompts", &report.prompts)?;
            let rules = [&report.starts_with, &report.ends_with, &report.contains];
            if !rules
                .iter()
                .any(|r| r.as_deref().is_some_and(|s| !s.trim().is_empty()))
            {
                return Err(invalid(
                    "report",
                    "`report` needs a behaviour to look for: `report.starts_with`, `report.ends_with` or `report.contains`",
                ));
            }
            at_least_one("report.max_new_tokens", report.max_new_tokens)?;
        }
        Ok(())
    }

    fn check_targets(&self) -> std::result::Result<(), Invalid> {
        const KEY: &str = "lora.target_modules";
        let names: Vec<&String> = match &self.lora.target_modules {
            TargetModulesSpec::One(name) => vec![name],
            TargetModulesSpec::List(names) => names.iter().collect(),
        };
        if names.is_empty() {
            return Err(invalid(KEY, "`lora.target_modules` is an empty list"));
        }
        for name in names {
            if name == ALL_LINEAR || LORA_TARGET_MODULES.contains(&name.as_str()) {
                continue;
            }
            let valid = format!("{} or \"{ALL_LINEAR}\"", LORA_TARGET_MODULES.join(", "));
            let msg = if name == "lm_head" || name == "embed_tokens" {
                format!("`lora.target_modules`: `{name}` is not supported as a LoRA target (the embeddings and the output head stay frozen); use {valid}")
            } else {
                let mut candidates: Vec<&str> = LORA_TARGET_MODULES.to_vec();
                candidates.push(ALL_LINEAR);
                match nearest(name, candidates.iter().map(|c| (*c, *c))) {
                    Some(best) => format!(
                        "`lora.target_modules`: unknown module `{name}` (did you mean `{best}`?); valid: {valid}"
                    ),
                    None => {
                        format!("`lora.target_modules`: unknown module `{name}`; valid: {valid}")
                    }
                }
            };
            return Err(invalid(KEY, msg));
        }
        Ok(())
    }
}

fn at_least_one(key: &'static str, value: usize) -> std::result::Result<(), Invalid> {
    if value < 1 {
        return Err(invalid(key, format!("`{key}` must be at least 1 (got 0)")));
    }
    Ok(())
}

fn positive(key: &'static str, value: f64) -> std::result::Result<(), Invalid> {
    if !(value > 0.0 && value.is_finite()) {
        return Err(invalid(key, format!("`{key}` must be > 0 (got {value})")));
    }
    Ok(())
}

/// `max_grad_norm` = 0 turns clipping off, so the message says so.
fn non_negative(key: &'static str, value: f64) -> std::result::Result<(), Invalid> {
    if !(value >= 0.0 && value.is_finite()) {
        let off = if key == "train.max_grad_norm" {
            ", 0 turning clipping off"
        } else {
            ""
        };
        return Err(invalid(
            key,
            format!("`{key}` must be >= 0{off} (got {value})"),
        ));
    }
    Ok(())
}

fn in_range(
    key: &'static str,
    value: f64,
    range: &str,
    inside: bool,
) -> std::result::Result<(), Invalid> {
    if !inside {
        return Err(invalid(
            key,
            format!("`{key}` must be in {range} (got {value})"),
        ));
    }
    Ok(())
}

fn not_empty(key: &'static str, path: &Path) -> std::result::Result<(), Invalid> {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, format!("`{key}` is empty")));
    }
    Ok(())
}

/// `auto`, `cpu`, `metal`, `cuda` or `cuda:N`; whether the device exists is checked when it is opened.
fn is_device_name(name: &str) -> bool {
    match name {
        "auto" | "cpu" | "metal" | "cuda" => true,
        _ => name
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    }
}

/// The parsed job file before serde: the table, where each key was written, and the overrides.
struct Document<'a> {
    path: &'a Path,
    table: toml::Table,
    /// `section` and `section.key` → 1-based line in the file.
    lines: HashMap<String, usize>,
    /// `section.key` → the `--set` argument that last set it.
    overridden: HashMap<String, String>,
}

impl<'a> Document<'a> {
    fn parse(text: &str, path: &'a Path) -> Result<Self> {
        let syntax = |e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| format!(":{}", line_of(text, s.start)))
                .unwrap_or_default();
            Error::Config(format!(
                "{}{line}: {}",
                path.display(),
                e.message().trim_end()
            ))
        };
        let spanned = toml::de::DeTable::parse(text).map_err(syntax)?;
        let mut lines = HashMap::new();
        for (section, value) in spanned.get_ref().iter() {
            lines.insert(
                section.get_ref().to_string(),
                line_of(text, section.span().start),
            );
            if let toml::de::DeValue::Table(keys) = value.get_ref() {
                for (key, _) in keys.iter() {
                    lines.insert(
                        format!("{}.{}", section.get_ref(), key.get_ref()),
                        line_of(text, key.span().start),
                    );
                }
            }
        }
        let table = toml::from_str::<toml::Table>(text).map_err(syntax)?;
        Ok(Document {
            path,
            table,
            lines,
            overridden: HashMap::new(),
        })
    }

    /// An error about `key`, located at its `--set` override, its line, or its section's line.
    fn error_at(&self, key: &str, msg: &str) -> Error {
        let file = self.path.display();
        if let Some(arg) = self.overridden.get(key) {
            return Error::Config(format!("{file}: --set {arg}: {msg}"));
        }
        let section = key.split('.').next().unwrap_or(key);
        match self.lines.get(key).or_else(|| self.lines.get(section)) {
            Some(line) => Error::Config(format!("{file}:{line}: {msg}")),
            None => Error::Config(format!("{file}: {msg}")),
        }
    }

    fn apply_override(&mut self, raw: &str) -> Result<()> {
        let file = self.path.display();
        let fail = |msg: String| Error::Config(format!("{file}: --set {raw}: {msg}"));
        let Some((key, value)) = raw.split_once('=') else {
            return Err(fail("expected section.key=value".into()));
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').collect();
        let value = parse_override_value(value.trim());
        if parts.first() == Some(&HOSTED) && parts.len() >= 2 && parts.iter().all(|p| !p.is_empty())
        {
            let mut table = &mut self.table;
            for part in &parts[..parts.len() - 1] {
                let entry = table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = match entry {
                    toml::Value::Table(t) => t,
                    _ => return Err(fail(format!("`{part}` in `{key}` is not a table"))),
                };
            }
            table.insert(parts[parts.len() - 1].to_string(), value);
            return Ok(());
        }
        let (section, name) = match parts.as_slice() {
            [section, name] if !section.is_empty() && !name.is_empty() => (*section, *name),
            _ => {
                let hint = nearest_key(None, key)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(fail(format!(
                    "expected section.key=value, got key `{key}`{hint}"
                )));
            }
        };
        let Some(schema) = SCHEMA.iter().find(|s| s.name == section) else {
            return Err(fail(unknown_section_msg(section)));
        };
        if !schema.keys.iter().any(|(k, _)| *k == name) {
            return Err(fail(unknown_key_msg(schema, name)));
        }
        let entry = self
            .table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(table) = entry else {
            return Err(fail(format!("`{section}` in the file is not a table")));
        };
        table.insert(name.to_string(), value);
        self.overridden
            .insert(format!("{section}.{name}"), raw.to_string());
        Ok(())
    }

    /// Rejects unknown sections and keys, values of the wrong type and missing required keys.
    fn check_keys(&self) -> Result<()> {
        let mut sections: Vec<(&String, &toml::Value)> = self.table.iter().collect();
        sections.sort_by_key(|(name, _)| self.line(name));
        for (name, value) in sections {
            if name == HOSTED {
                if !value.is_table() {
                    return Err(self.error_at(
                        HOSTED,
                        &format!(
                            "`{HOSTED}` must be a table ([{HOSTED}]), found {}",
                            describe(value)
                        ),
                    ));
                }
                continue;
            }
            let Some(schema) = SCHEMA.iter().find(|s| s.name == name.as_str()) else {
                let msg = if value.is_table() {
                    unknown_section_msg(name)
                } else {
                    let hint = nearest_key(None, name)
                        .map(|k| format!(" (did you mean `{k}`?)"))
                        .unwrap_or_default();
                    format!("unknown key `{name}`{hint}")
                };
                return Err(self.error_at(name, &msg));
            };
            let toml::Value::Table(keys) = value else {
                return Err(self.error_at(
                    name,
                    &format!(
                        "`{name}` must be a table ([{name}]), found {}",
                        describe(value)
                    ),
                ));
            };
            let mut keys: Vec<(&String, &toml::Value)> = keys.iter().collect();
            keys.sort_by_key(|(key, _)| self.line(&format!("{name}.{key}")));
            for (key, value) in keys {
                let full = format!("{name}.{key}");
                let Some((_, kind)) = schema.keys.iter().find(|(k, _)| k == key) else {
                    return Err(self.error_at(&full, &unknown_key_msg(schema, key)));
                };
                if let Err(msg) = check_kind(*kind, value) {
                    return Err(self.error_at(&full, &format!("`{full}`: {msg}")));
                }
            }
        }
        for schema in SCHEMA {
            match self.table.get(schema.name) {
                None if schema.required => {
                    return Err(
                        self.error_at(schema.name, &format!("missing section `[{}]`", schema.name))
                    )
                }
                Some(toml::Value::Table(keys)) => {
                    if let Some(key) = schema
                        .required_keys
                        .iter()
                        .find(|k| !keys.contains_key(**k))
                    {
                        return Err(self.error_at(
                            schema.name,
                            &format!("missing key `{}.{key}`", schema.name),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn line(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(usize::MAX)
    }
}

/// `--set` values: a TOML value when the text parses as one (`3`, `1e-4`, `true`, `"x"`,
/// `["q_proj"]`), otherwise the text itself as a string (`cosine`, `../data/train.jsonl`).
fn parse_override_value(text: &str) -> toml::Value {
    if let Ok(mut table) = toml::from_str::<toml::Table>(&format!("v = {text}")) {
        if table.len() == 1 {
            match table.remove("v") {
                Some(toml::Value::Datetime(_)) | None => {}
                Some(value) => return value,
            }
        }
    }
    toml::Value::String(text.to_string())
}

fn check_kind(kind: KeyKind, value: &toml::Value) -> std::result::Result<(), String> {
    use toml::Value as V;
    let ok = match (kind, value) {
        (KeyKind::Str, V::String(_)) => true,
        (KeyKind::Bool, V::Boolean(_)) => true,
        (KeyKind::Count, V::Integer(n)) => {
            if *n < 0 {
                return Err(format!("expected a non-negative integer, found {n}"));
            }
            true
        }
        (KeyKind::Number, V::Integer(_) | V::Float(_)) => true,
        (KeyKind::Names, V::String(_)) => true,
        (KeyKind::Names, V::Array(items)) => {
            if let Some(bad) = items.iter().find(|v| !v.is_str()) {
                return Err(format!(
                    "expected a list of strings, found an item {}",
                    describe(bad)
                ));
            }
            true
        }
        (KeyKind::PathOrFraction, V::String(_) | V::Integer(_) | V::Float(_)) => true,
        (KeyKind::Choice(choices), V::String(s)) => {
            if choices.contains(&s.as_str()) {
                return Ok(());
            }
            let hint = nearest(s, choices.iter().map(|c| (*c, *c)))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(format!(
                "unknown value {s:?} (expected {}{hint})",
                choices.join(", ")
            ));
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        KeyKind::Str => "a string".to_string(),
        KeyKind::Bool => "true or false".to_string(),
        KeyKind::Count => "a non-negative integer".to_string(),
        KeyKind::Number => "a number".to_string(),
        KeyKind::Names => "a string or a list of strings".to_string(),
        KeyKind::PathOrFraction => "a file path or a fraction".to_string(),
        KeyKind::Choice(choices) => format!("one of {}", choices.join(", ")),
    };
    Err(format!("expected {expected}, found {}", describe(value)))
}

/// A value's type and, for scalars, the value itself: `string "abc"`, `float 0.5`.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(n) => format!("integer {n}"),
        toml::Value::Float(x) => format!("float {x}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

fn unknown_section_msg(name: &str) -> String {
    let names = SCHEMA.iter().map(|s| (s.name, s.name));
    let aliases = SECTION_ALIASES.iter().copied();
    let mut known: Vec<&str> = SCHEMA.iter().map(|s| s.name).collect();
    known.push(HOSTED);
    match nearest(name, names.chain(aliases).chain([(HOSTED, HOSTED)])) {
        Some(best) => format!("unknown section `{name}` (did you mean `{best}`?)"),
        None => format!(
            "unknown section `{name}` (valid sections: {})",
            known.join(", ")
        ),
    }
}

fn unknown_key_msg(schema: &SectionSchema, key: &str) -> String {
    match nearest_key(Some(schema.name), key) {
        Some(best) => format!(
            "unknown key `{}.{key}` (did you mean `{best}`?)",
            schema.name
        ),
        None => {
            let valid: Vec<&str> = schema.keys.iter().map(|(k, _)| *k).collect();
            format!(
                "unknown key `{}.{key}` (valid keys in [{}]: {})",
                schema.name,
                schema.name,
                valid.join(", ")
            )
        }
    }
}

/// The full name (`section.key`) nearest to `key`: keys and aliases of `section` first, then an
/// exact or close name from another section (a key written in the wrong table).
fn nearest_key(section: Option<&str>, key: &str) -> Option<String> {
    let key = normalize(key);
    let mut best: Option<(usize, String)> = None;
    let mut consider = |name: &str, full: String, same_section: bool| {
        let dist = edit_distance(&key, name);
        if dist > max_typos(&key) {
            return;
        }
        let score = 2 * dist + usize::from(!same_section);
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            best = Some((score, full));
        }
    };
    for schema in SCHEMA {
        let same = section == Some(schema.name);
        for (name, _) in schema.keys {
            consider(name, format!("{}.{name}", schema.name), same);
        }
    }
    for (alias, full) in KEY_ALIASES {
        let same = section.is_some_and(|s| full.split('.').next() == Some(s));
        consider(alias, full.to_string(), same);
    }
    best.map(|(_, full)| full)
}

/// The candidate (compared by its first element, reported by its second) nearest to `word`.
fn nearest<'c>(
    word: &str,
    candidates: impl Iterator<Item = (&'c str, &'c str)>,
) -> Option<&'c str> {
    let word = normalize(word);
    candidates
        .map(|(name, report)| (edit_distance(&word, name), report))
        .filter(|(dist, _)| *dist <= max_typos(&word))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, report)| report)
}

fn normalize(word: &str) -> String {
    word.trim().to_lowercase().replace('-', "_")
}

/// How many edits still count as a misspelling rather than another word.
fn max_typos(word: &str) -> usize {
    (word.chars().count() / 3).max(2)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[model]\nsource = \"m.gguf\"\n[data]\ntrain = \"t.jsonl\"\n[output]\ndir = \"out\"\n";

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("lerning_rate", "learning_rate"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// MINIMAL and a `[report]` with its required key, with `section.key = value` added.
    fn with_key(section: &str, key: &str, value: toml::Value) -> toml::Value {
        let text = format!("{MINIMAL}[report]\nprompts = \"p.jsonl\"\n");
        let mut table: toml::Table = toml::from_str(&text).unwrap();
        let section = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        section
            .as_table_mut()
            .unwrap()
            .insert(key.to_string(), value);
        toml::Value::Table(table)
    }

    #[test]
    fn every_schema_key_deserializes_into_the_structs() {
        for schema in SCHEMA {
            for (key, kind) in schema.keys {
                let values: Vec<toml::Value> = match kind {
                    KeyKind::Str => vec!["x".into()],
                    KeyKind::Bool => vec![true.into()],
                    KeyKind::Count => vec![3.into()],
                    KeyKind::Number => vec![0.5.into(), 1.into()],
                    KeyKind::Names => vec![
                        "all-linear".into(),
                        toml::Value::Array(vec!["q_proj".into()]),
                    ],
                    KeyKind::PathOrFraction => vec![0.25.into(), "v.jsonl".into()],
                    KeyKind::Choice(choices) => choices.iter().map(|c| (*c).into()).collect(),
                };
                for value in values {
                    assert!(check_kind(*kind, &value).is_ok());
                    let shown = value.to_string();
                    if let Err(e) = JobConfig::deserialize(with_key(schema.name, key, value)) {
                        panic!("{}.{key} = {shown}: {e}", schema.name);
                    }
                }
            }
        }
    }

    #[test]
    fn serialized_defaults_use_only_schema_keys() {
        let job = JobConfig::load_str(MINIMAL, Path::new("job.toml"), &[]).unwrap();
        let text = job.to_toml_string().unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        for (section, keys) in &table {
            let schema = SCHEMA.iter().find(|s| s.name == section.as_str()).unwrap();
            for key in keys.as_table().unwrap().keys() {
                assert!(schema.keys.iter().any(|(k, _)| k == key), "{section}.{key}");
            }
        }
        let again = JobConfig::load_str(&text, Path::new("job.toml"), &[]).unwrap();
        assert_eq!(again.to_toml_string().unwrap(), text);
    }
}
