//! The job file's shared sections as the hosted mapping sees them.
//!
//! Built from the typed job and the set of keys the user wrote: only written keys are `Some`,
//! so a value the provider cannot honour becomes a warning or an error while a default the user
//! never chose triggers nothing. A written key this module does not read is listed in
//! [`HostedJobSpec::unmapped`], so a new job key is reported as not honoured without an edit here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::validate::DatasetKind;
use crate::config::job::{DpoLoss, DpoReference, TrainMethod, ValidationSpec};
use crate::config::{JobConfig, WrittenKeys};
use crate::data::LossOn;

/// The keys of `[model]`, `[lora]`, `[data]` and `[train]` that a hosted job maps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostedJobSpec {
    /// `model.source` when it names a hub model (a local path is no use to a provider).
    pub model: Option<String>,
    /// `model.dtype`: providers pick their own precision.
    pub dtype: Option<String>,
    /// `data.train`
    pub train_file: PathBuf,
    /// `data.validation` as a file.
    pub validation_file: Option<PathBuf>,
    /// `data.validation` as a fraction to hold out (not possible remotely).
    pub validation_fraction: Option<f64>,
    pub shuffle: Option<bool>,
    pub max_seq_len: Option<u64>,
    pub loss_on: Option<LossOn>,
    pub packing: Option<bool>,
    /// `[lora]`
    pub lora_r: Option<u64>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub target_modules: Option<Vec<String>>,
    pub use_rslora: Option<bool>,
    pub init_adapter: Option<PathBuf>,
    /// `train.method`: `dpo` trains on preference pairs with the `[dpo]` settings.
    #[serde(default)]
    pub method: Option<TrainMethod>,
    /// `[dpo]`: its written keys, with `train.method = "dpo"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<HostedDpo>,
    /// `[train]`
    pub epochs: Option<f64>,
    pub max_steps: Option<u64>,
    pub micro_batch_size: Option<u64>,
    pub grad_accum: Option<u64>,
    pub lr: Option<f64>,
    /// `constant`, `linear` or `cosine`.
    pub scheduler: Option<String>,
    pub warmup_steps: Option<u64>,
    pub warmup_ratio: Option<f64>,
    pub min_lr_ratio: Option<f64>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub seed: Option<u64>,
    pub eval_every: Option<u64>,
    pub save_every: Option<u64>,
    /// Added to the fine-tuned model's name (`[hosted] suffix` wins).
    pub suffix: Option<String>,
    /// `adamw` is what both providers use.
    pub optimizer: Option<String>,
    /// `model.quantize` when quantized (QLoRA); providers train on their own copy of the base.
    pub base_quantization: Option<String>,
    /// Written keys that no field above reads: each is a "not honoured" warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmapped: Vec<String>,
}

/// The written keys of `[dpo]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostedDpo {
    pub beta: Option<f64>,
    pub loss: Option<DpoLoss>,
    pub label_smoothing: Option<f64>,
    pub sft_weight: Option<f64>,
    pub reference: Option<DpoReference>,
    pub precompute_reference: Option<bool>,
    pub normalize_by_length: Option<bool>,
}

impl HostedJobSpec {
    /// Whether the job trains on preference pairs (`train.method = "dpo"`).
    pub fn is_dpo(&self) -> bool {
        self.method == Some(TrainMethod::Dpo)
    }

    /// What the job's files must hold.
    pub fn dataset_kind(&self) -> DatasetKind {
        match self.is_dpo() {
            true => DatasetKind::Pairs,
            false => DatasetKind::Conversations,
        }
    }
}

/// Hands out a job value only when its key was written, and remembers every key asked for.
struct Picker<'a> {
    written: &'a WrittenKeys,
    asked: BTreeSet<&'static str>,
}

impl Picker<'_> {
    fn get<T>(&mut self, key: &'static str, value: T) -> Option<T> {
        self.asked.insert(key);
        self.written.contains(key).then_some(value)
    }
}

/// Whether a (resolved) model source names something on disk rather than a hub model.
fn is_local_source(source: &str) -> bool {
    source.ends_with(".gguf")
        || source.starts_with(['/', '.', '~'])
        || source.contains('\\')
        || Path::new(source).exists()
}

/// `path` against the current directory when relative (a `--set` path, or a job file's folder
/// given relative), so that records and messages name the file wherever they are read.
fn absolute(path: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    }
}

impl HostedJobSpec {
    /// The written keys of a loaded job (its paths already resolved).
    pub fn from_job(job: &JobConfig, written: &WrittenKeys) -> Self {
        let mut p = Picker {
            written,
            asked: BTreeSet::new(),
        };
        let (m, l, d, t) = (&job.model, &job.lora, &job.data, &job.train);
        let count = |n: usize| n as u64;
        let validation = p.get("data.validation", d.validation.clone()).flatten();
        let (validation_file, validation_fraction) = match validation {
            Some(ValidationSpec::File(f)) => (Some(absolute(&f)), None),
            Some(ValidationSpec::Fraction(f)) => (None, Some(f)),
            None => (None, None),
        };
        let mut spec = HostedJobSpec {
            model: p
                .get("model.source", m.source.clone())
                .filter(|s| !is_local_source(s)),
            dtype: p.get("model.dtype", m.dtype.to_string()),
            base_quantization: p
                .get("model.quantize", m.quantize)
                .filter(|q| q.is_quantized())
                .map(|q| q.name().to_string()),
            train_file: absolute(&d.train),
            validation_file,
            validation_fraction,
            shuffle: p.get("data.shuffle", d.shuffle),
            max_seq_len: p.get("data.max_seq_len", count(d.max_seq_len)),
            loss_on: p.get("data.loss_on", d.loss_on),
            packing: p.get("data.packing", d.packing),
            lora_r: p.get("lora.r", count(l.r)),
            lora_alpha: p.get("lora.alpha", l.alpha),
            lora_dropout: p.get("lora.dropout", l.dropout),
            target_modules: p
                .get("lora.target_modules", &l.target_modules)
                .map(|t| t.written().into_iter().map(str::to_string).collect()),
            use_rslora: p.get("lora.use_rslora", l.use_rslora),
            init_adapter: p
                .get("lora.init_adapter", l.init_adapter.as_deref().map(absolute))
                .flatten(),
            method: p.get("train.method", t.method),
            dpo: None,
            epochs: p.get("train.epochs", t.epochs).flatten(),
            max_steps: p.get("train.max_steps", t.max_steps.map(count)).flatten(),
            micro_batch_size: p.get("train.micro_batch_size", count(t.micro_batch_size)),
            grad_accum: p.get("train.grad_accum", count(t.grad_accum)),
            lr: p.get("train.lr", t.lr),
            scheduler: p.get("train.scheduler", t.scheduler.name().to_string()),
            warmup_steps: p
                .get("train.warmup_steps", t.warmup_steps.map(count))
                .flatten(),
            warmup_ratio: p.get("train.warmup_ratio", t.warmup_ratio).flatten(),
            min_lr_ratio: p.get("train.min_lr_ratio", t.min_lr_ratio),
            weight_decay: p.get("train.weight_decay", t.weight_decay),
            max_grad_norm: p.get("train.max_grad_norm", t.max_grad_norm),
            seed: p.get("train.seed", t.seed),
            eval_every: p.get("train.eval_every", count(t.eval_every)),
            save_every: p.get("train.save_every", count(t.save_every)),
            suffix: None,
            optimizer: None,
            unmapped: Vec::new(),
        };
        let dpo = job.dpo();
        let hosted_dpo = HostedDpo {
            beta: p.get("dpo.beta", dpo.beta),
            loss: p.get("dpo.loss", dpo.loss),
            label_smoothing: p.get("dpo.label_smoothing", dpo.label_smoothing),
            sft_weight: p.get("dpo.sft_weight", dpo.sft_weight),
            reference: p.get("dpo.reference", dpo.reference),
            precompute_reference: p.get("dpo.precompute_reference", dpo.precompute_reference),
            normalize_by_length: p.get("dpo.normalize_by_length", dpo.normalize_by_length),
        };
        spec.dpo = job.is_dpo().then_some(hosted_dpo);
        // Read elsewhere: `data.train` is required, the output folder holds the local records,
        // and `[hosted]` is the provider's own section.
        for key in ["data.train", "output.dir", "hosted"] {
            p.asked.insert(key);
        }
        spec.unmapped = written
            .iter()
            .filter(|key| !p.asked.contains(key))
            .map(str::to_string)
            .collect();
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, overrides: &[&str]) -> HostedJobSpec {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let (job, written) = JobConfig::load_written(&path, &overrides).unwrap();
        HostedJobSpec::from_job(&job, &written)
    }

    #[test]
    fn reads_only_written_keys() {
        let spec = load(
            r#"
[model]
source = "meta-llama/Llama-3.2-1B-Instruct"
[lora]
r = 8
target_modules = "all-linear"
[data]
train = "/jobs/data/train.jsonl"
validation = "/jobs/data/valid.jsonl"
loss_on = "all_assistant"
[train]
epochs = 2
lr = 1e-4
[output]
dir = "out"
"#,
            &[],
        );
        assert_eq!(
            spec.model.as_deref(),
            Some("meta-llama/Llama-3.2-1B-Instruct")
        );
        assert_eq!(spec.train_file, PathBuf::from("/jobs/data/train.jsonl"));
        assert_eq!(
            spec.validation_file,
            Some(PathBuf::from("/jobs/data/valid.jsonl"))
        );
        assert_eq!(spec.lora_r, Some(8));
        assert_eq!(spec.target_modules, Some(vec!["all-linear".to_string()]));
        assert_eq!(spec.loss_on, Some(LossOn::AllAssistant));
        assert_eq!(spec.epochs, Some(2.0));
        assert_eq!(spec.lr, Some(1e-4));
        assert_eq!(
            (spec.lora_alpha, spec.weight_decay, spec.seed),
            (None, None, None)
        );
        assert!(spec.unmapped.is_empty(), "{:?}", spec.unmapped);
    }

    #[test]
    fn local_sources_fractions_and_keys_it_does_not_map() {
        let spec = load(
            "[model]\nsource = \"models/x.gguf\"\nquantize = \"nf4\"\n[data]\ntrain = \"t.jsonl\"\nvalidation = 0.1\n[train]\nkeep_last = 3\n[output]\ndir = \"o\"\n",
            &["train.gradient_checkpointing=true"],
        );
        assert_eq!(spec.model, None);
        assert_eq!(spec.validation_fraction, Some(0.1));
        assert_eq!(spec.base_quantization.as_deref(), Some("nf4"));
        assert_eq!(
            spec.unmapped,
            ["train.gradient_checkpointing", "train.keep_last"]
        );
    }
}
