//! The job file's shared sections as the hosted mapping sees them.
//!
//! Only keys the user wrote are `Some`: a value the provider cannot honour becomes a
//! warning or an error, and a default the user never chose must not trigger one.
//! [`HostedJobSpec::from_job_table`] reads them from the raw job-file table (after any
//! `--set` overrides), which is the one place where "written" can still be told apart
//! from "defaulted".

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::providers::error::{ProviderError, Result};

/// Which tokens the loss is computed on; the names of the job file's `data.loss_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossTarget {
    /// Only the last assistant turn.
    LastAssistant,
    /// Every assistant turn.
    AllAssistant,
    /// Every token, prompts included.
    All,
}

impl LossTarget {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "last_assistant" => Some(LossTarget::LastAssistant),
            "all_assistant" => Some(LossTarget::AllAssistant),
            "all" => Some(LossTarget::All),
            _ => None,
        }
    }
}

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
    pub loss_on: Option<LossTarget>,
    pub packing: Option<bool>,
    /// `[lora]`
    pub lora_r: Option<u64>,
    pub lora_alpha: Option<f64>,
    pub lora_dropout: Option<f64>,
    pub target_modules: Option<Vec<String>>,
    pub use_rslora: Option<bool>,
    pub init_adapter: Option<PathBuf>,
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
    /// A quantized base (QLoRA), e.g. `nf4`; providers train on their own copy of the base.
    pub base_quantization: Option<String>,
}

struct Reader<'a> {
    table: &'a toml::Table,
}

impl Reader<'_> {
    fn value(&self, section: &str, key: &str) -> Option<&toml::Value> {
        self.table.get(section)?.as_table()?.get(key)
    }

    fn wrong(section: &str, key: &str, expected: &str) -> ProviderError {
        ProviderError::Config(format!("job file: `{section}.{key}` must be {expected}"))
    }

    fn str(&self, section: &str, key: &str) -> Result<Option<String>> {
        match self.value(section, key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Self::wrong(section, key, "a string")),
        }
    }

    fn float(&self, section: &str, key: &str) -> Result<Option<f64>> {
        match self.value(section, key) {
            None => Ok(None),
            Some(toml::Value::Float(f)) => Ok(Some(*f)),
            Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(_) => Err(Self::wrong(section, key, "a number")),
        }
    }

    fn count(&self, section: &str, key: &str) -> Result<Option<u64>> {
        match self.value(section, key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(_) => Err(Self::wrong(section, key, "a non-negative integer")),
        }
    }

    fn bool(&self, section: &str, key: &str) -> Result<Option<bool>> {
        match self.value(section, key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::wrong(section, key, "true or false")),
        }
    }

    fn names(&self, section: &str, key: &str) -> Result<Option<Vec<String>>> {
        match self.value(section, key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| Self::wrong(section, key, "a list of names")),
            Some(_) => Err(Self::wrong(section, key, "a name or a list of names")),
        }
    }
}

/// Whether a model source names something on disk rather than a hub model.
fn is_local_source(source: &str, job_dir: &Path) -> bool {
    source.ends_with(".gguf")
        || source.starts_with(['/', '.', '~'])
        || source.contains('\\')
        || job_dir.join(source).exists()
}

impl HostedJobSpec {
    /// The written keys of a parsed job file; relative paths are resolved against `job_dir`.
    pub fn from_job_table(table: &toml::Table, job_dir: &Path) -> Result<Self> {
        let r = Reader { table };
        let path = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                job_dir.join(p)
            }
        };
        let train_file = r.str("data", "train")?.map(path).ok_or_else(|| {
            ProviderError::Config("job file: `data.train` is required".to_string())
        })?;
        let (validation_file, validation_fraction) = match r.value("data", "validation") {
            None => (None, None),
            Some(toml::Value::String(s)) => (Some(path(s.clone())), None),
            Some(toml::Value::Float(f)) => (None, Some(*f)),
            Some(toml::Value::Integer(i)) => (None, Some(*i as f64)),
            Some(_) => return Err(Reader::wrong("data", "validation", "a file or a fraction")),
        };
        let loss_on = match r.str("data", "loss_on")? {
            None => None,
            Some(name) => Some(LossTarget::parse(&name).ok_or_else(|| {
                Reader::wrong("data", "loss_on", "last_assistant, all_assistant or all")
            })?),
        };
        Ok(HostedJobSpec {
            model: r
                .str("model", "source")?
                .filter(|s| !is_local_source(s, job_dir)),
            dtype: r.str("model", "dtype")?,
            train_file,
            validation_file,
            validation_fraction,
            shuffle: r.bool("data", "shuffle")?,
            max_seq_len: r.count("data", "max_seq_len")?,
            loss_on,
            packing: r.bool("data", "packing")?,
            lora_r: r.count("lora", "r")?,
            lora_alpha: r.float("lora", "alpha")?,
            lora_dropout: r.float("lora", "dropout")?,
            target_modules: r.names("lora", "target_modules")?,
            use_rslora: r.bool("lora", "use_rslora")?,
            init_adapter: r.str("lora", "init_adapter")?.map(path),
            epochs: r.float("train", "epochs")?,
            max_steps: r.count("train", "max_steps")?,
            micro_batch_size: r.count("train", "micro_batch_size")?,
            grad_accum: r.count("train", "grad_accum")?,
            lr: r.float("train", "lr")?,
            scheduler: r.str("train", "scheduler")?,
            warmup_steps: r.count("train", "warmup_steps")?,
            warmup_ratio: r.float("train", "warmup_ratio")?,
            min_lr_ratio: r.float("train", "min_lr_ratio")?,
            weight_decay: r.float("train", "weight_decay")?,
            max_grad_norm: r.float("train", "max_grad_norm")?,
            seed: r.count("train", "seed")?,
            eval_every: r.count("train", "eval_every")?,
            save_every: r.count("train", "save_every")?,
            suffix: None,
            optimizer: None,
            base_quantization: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_written_keys() {
        let table: toml::Table = toml::from_str(
            r#"
[model]
source = "meta-llama/Llama-3.2-1B-Instruct"
[lora]
r = 8
target_modules = "all-linear"
[data]
train = "data/train.jsonl"
validation = "data/valid.jsonl"
loss_on = "all_assistant"
[train]
epochs = 2
lr = 1e-4
[output]
dir = "out"
"#,
        )
        .unwrap();
        let spec = HostedJobSpec::from_job_table(&table, Path::new("/jobs")).unwrap();
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
        assert_eq!(spec.loss_on, Some(LossTarget::AllAssistant));
        assert_eq!(spec.epochs, Some(2.0));
        assert_eq!(spec.lr, Some(1e-4));
        assert_eq!(
            (spec.lora_alpha, spec.weight_decay, spec.seed),
            (None, None, None)
        );
    }

    #[test]
    fn local_sources_and_bad_types() {
        let table: toml::Table = toml::from_str(
            "[model]\nsource = \"models/x.gguf\"\n[data]\ntrain = \"t.jsonl\"\nvalidation = 0.1\n",
        )
        .unwrap();
        let spec = HostedJobSpec::from_job_table(&table, Path::new(".")).unwrap();
        assert_eq!(spec.model, None);
        assert_eq!(spec.validation_fraction, Some(0.1));
        let table: toml::Table =
            toml::from_str("[data]\ntrain = \"t.jsonl\"\n[train]\nlr = \"fast\"\n").unwrap();
        let err = HostedJobSpec::from_job_table(&table, Path::new(".")).unwrap_err();
        assert_eq!(err.to_string(), "job file: `train.lr` must be a number");
    }
}
