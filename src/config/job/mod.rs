//! The job file (`job.toml`): its tables as types, and how a file becomes a checked [`JobConfig`].
//!
//! [`JobConfig::load`] reads the file, applies `--set` overrides, checks every key against the
//! key list derived from the types (unknown keys get the nearest valid one), resolves relative
//! paths against the file's folder and checks the values; each error names the file and line, or
//! the `--set` argument. [`JobConfig::load_written`] also says which keys the user wrote.

mod checks;
mod document;
pub mod schema;
mod sections;
mod suggest;
pub mod values;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use schema::{Key, KeyKind, Section};
pub use sections::{
    DataSection, DpoLoss, DpoReference, DpoSection, JobConfig, LoraSection, ModelSection,
    OutputSection, ReportSection, SchedulerKind, TrainLength, TrainMethod, TrainSection,
    ValidationSpec,
};
pub use suggest::{KEY_ALIASES, SECTION_ALIASES};
pub use values::{DeviceName, DtypeName};

pub use crate::lora::ALL_LINEAR;
/// The linear layers of a Llama / Gemma 3 decoder block that can carry an adapter, in the order
/// `"all-linear"` expands to.
pub use crate::lora::PROJECTIONS as LORA_TARGET_MODULES;

use crate::{Error, Result};
use document::Document;

/// The dotted names of the keys a job file (with its `--set` overrides) wrote, as opposed to
/// those left to their defaults: `train.lr`, `hosted`, `eval.check` (a list of tables counts as
/// one key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenKeys(BTreeSet<String>);

impl WrittenKeys {
    /// Whether `key` was written.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    /// Every written key, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl<S: Into<String>> FromIterator<S> for WrittenKeys {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        WrittenKeys(iter.into_iter().map(Into::into).collect())
    }
}

/// A TOML file of [`job_section!`](schema) tables, read as the job file is: `--set` overrides
/// applied, every key checked against `T::KEYS` (unknown keys get the nearest valid one), then
/// deserialized; it keeps each key's line for later errors. The eval file is one too.
pub struct SectionFile<'a, T> {
    pub value: T,
    doc: Document<'a>,
}

impl<'a, T: Section + serde::de::DeserializeOwned> SectionFile<'a, T> {
    pub fn read(text: &str, path: &'a Path, overrides: &[String]) -> Result<Self> {
        let mut doc = Document::parse(text, path, T::KEYS)?;
        for raw in overrides {
            doc.apply_override(raw)?;
        }
        doc.check_keys()?;
        let value =
            T::deserialize(toml::Value::Table(doc.table.clone())).map_err(|e| Error::JobFile {
                file: path.to_path_buf(),
                line: None,
                msg: e.message().to_string(),
            })?;
        Ok(SectionFile { value, doc })
    }
}

impl<T> SectionFile<'_, T> {
    /// An error about `key` (dotted, array items by index), placed at its line or `--set`.
    pub fn error_at(&self, key: &str, msg: &str) -> Error {
        self.doc.error_at(key, msg)
    }

    /// Whether `key` was set with `--set` (its path is then relative to the working folder).
    pub fn is_overridden(&self, key: &str) -> bool {
        self.doc.is_overridden(key)
    }

    pub fn written(&self) -> WrittenKeys {
        WrittenKeys(self.doc.written())
    }
}

impl JobConfig {
    /// Reads a job file, applies `--set section.key=value` overrides, resolves relative paths
    /// against the file's folder and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<JobConfig> {
        Ok(Self::load_written(path, overrides)?.0)
    }

    /// [`JobConfig::load`], with the keys the file and the overrides wrote.
    pub fn load_written(path: &Path, overrides: &[String]) -> Result<(JobConfig, WrittenKeys)> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str_written(&text, path, overrides)
    }

    /// [`JobConfig::load`] on text already read; `path` names the file in errors and its folder
    /// anchors relative paths.
    pub fn load_str(text: &str, path: &Path, overrides: &[String]) -> Result<JobConfig> {
        Ok(Self::load_str_written(text, path, overrides)?.0)
    }

    /// [`JobConfig::load`] with one more value rule, `extra`, which returns the (dotted key,
    /// message) of what it finds wrong; its error names the file and line as the job's own
    /// rules do. A layer above `config` checks what only it can read this way (the `[eval]`
    /// judge's provider tables).
    pub fn load_checked(
        path: &Path,
        overrides: &[String],
        extra: impl Fn(&JobConfig) -> std::result::Result<(), (String, String)>,
    ) -> Result<JobConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str_checked(&text, path, overrides, extra)
    }

    /// [`JobConfig::load_checked`] on text already read (a job posted to the server).
    pub fn load_str_checked(
        text: &str,
        path: &Path,
        overrides: &[String],
        extra: impl Fn(&JobConfig) -> std::result::Result<(), (String, String)>,
    ) -> Result<JobConfig> {
        Ok(Self::load_written_checked(text, path, overrides, extra)?.0)
    }

    fn load_str_written(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<(JobConfig, WrittenKeys)> {
        Self::load_written_checked(text, path, overrides, |_| Ok(()))
    }

    fn load_written_checked(
        text: &str,
        path: &Path,
        overrides: &[String],
        extra: impl Fn(&JobConfig) -> std::result::Result<(), (String, String)>,
    ) -> Result<(JobConfig, WrittenKeys)> {
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            if table.contains_key("candidate") && !table.contains_key("model") {
                return Err(Error::JobFile {
                    file: path.to_path_buf(),
                    line: None,
                    msg: "this is an eval file: run `lora-train eval --config` with it".into(),
                });
            }
        }
        let file = SectionFile::<JobConfig>::read(text, path, overrides)?;
        let mut job = file.value.clone();
        let base = path.parent().unwrap_or(Path::new(""));
        job.resolve_paths(base, |key| file.is_overridden(key));
        checks::check(&job).map_err(|bad| file.error_at(&bad.key, &bad.msg))?;
        extra(&job).map_err(|(key, msg)| file.error_at(&key, &msg))?;
        Ok((job, file.written()))
    }

    /// Checks every value rule; each error names its key. [`JobConfig::load`] already runs this.
    pub fn validate(&self) -> Result<()> {
        checks::check(self).map_err(|bad| Error::job_key(bad.key, bad.msg))
    }

    /// The module names adapters go on, `"all-linear"` expanded, without duplicates.
    pub fn target_module_names(&self) -> Vec<String> {
        crate::lora::target_names(&self.lora.target_modules)
    }

    /// Checks that the files the job reads exist: `data.train`, a `data.validation` file,
    /// `lora.init_adapter`, `report.prompts` and the `[eval]` prompts, tasks and templates. (`model.source` may be a hub id; the model
    /// loader checks it.)
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
        let mut task_keys = Vec::new();
        if let Some(eval) = &self.eval {
            files.push(("eval.data.path", &eval.data.path));
            for (i, t) in eval.task.iter().enumerate() {
                task_keys.push((format!("eval.task.{i}.path"), t.path.as_path()));
            }
            let judge = eval.judge.as_ref();
            for (key, file) in [
                (
                    "eval.judge.pairwise_template",
                    judge.and_then(|j| j.pairwise_template.as_ref()),
                ),
                (
                    "eval.judge.rubric_template",
                    judge.and_then(|j| j.rubric_template.as_ref()),
                ),
            ] {
                if let Some(file) = file {
                    files.push((key, file));
                }
            }
        }
        let files = files
            .into_iter()
            .map(|(k, f)| (k.to_string(), f))
            .chain(task_keys);
        for (key, file) in files {
            if !file.exists() {
                let msg = format!("`{key}`: {} does not exist", file.display());
                return Err(Error::job_key(key, msg));
            }
        }
        Ok(())
    }

    /// The job as TOML, every default written out, e.g. to record the resolved configuration
    /// beside a run's checkpoints.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Msg(format!("cannot write the job as TOML: {e}")))
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
        if let Some(eval) = &mut self.eval {
            eval.for_each_path(|key, p| {
                if !overridden(&format!("eval.{key}")) {
                    *p = join(p);
                }
            });
            if let Some(judge) = &mut eval.judge {
                crate::config::eval::resolve_local_judges(judge, base);
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
}

#[cfg(test)]
mod tests {
    use super::schema::{all_names, check_kind, find};
    use super::*;
    use serde::Deserialize;

    const MINIMAL: &str =
        "[model]\nsource = \"m.gguf\"\n[data]\ntrain = \"t.jsonl\"\n[output]\ndir = \"out\"\n";

    /// A value of `kind` for every kind a leaf key can have.
    fn sample(kind: KeyKind) -> Vec<toml::Value> {
        match kind {
            KeyKind::Str => vec!["x".into()],
            KeyKind::Bool => vec![true.into()],
            KeyKind::Count => vec![3.into()],
            KeyKind::Number => vec![0.5.into(), 1.into()],
            KeyKind::Strings => vec![toml::Value::Array(vec!["name".into()])],
            KeyKind::Names => vec![
                "all-linear".into(),
                toml::Value::Array(vec!["q_proj".into()]),
            ],
            KeyKind::PathOrFraction => vec![0.25.into(), "v.jsonl".into()],
            KeyKind::Choice(choices) => choices.iter().map(|c| (*c).into()).collect(),
            KeyKind::Parsed(check) => ["bfloat16", "f16", "cpu", "cuda:1"]
                .into_iter()
                .filter(|name| check(name).is_ok())
                .map(toml::Value::from)
                .collect(),
            KeyKind::Table(_) | KeyKind::FreeTable => vec![toml::Value::Table(Default::default())],
            KeyKind::Tables(_) | KeyKind::FreeTables => vec![toml::Value::Array(vec![])],
        }
    }

    #[test]
    fn every_schema_key_deserializes_into_the_structs() {
        let mut names = Vec::new();
        all_names(JobConfig::KEYS, "", &mut names);
        let base: toml::Table =
            toml::from_str(&format!("{MINIMAL}[report]\nprompts = \"p.jsonl\"\n")).unwrap();
        for (full, _) in names.iter().filter(|(full, _)| full.contains('.')) {
            let path: Vec<&str> = full.split('.').collect();
            for value in sample(leaf(&path).kind) {
                assert!(check_kind(leaf(&path).kind, &value).is_ok(), "{full}");
                let mut table = base.clone();
                insert_at(&mut table, JobConfig::KEYS, &path, value.clone());
                if let Err(e) = JobConfig::deserialize(toml::Value::Table(table)) {
                    panic!("{full} = {value}: {e}");
                }
            }
        }
    }

    /// The key at a dotted path written without array indices (`eval.check.name`).
    fn leaf(path: &[&str]) -> &'static Key {
        let mut keys = JobConfig::KEYS;
        let mut found = None;
        for part in path {
            let key = keys.iter().find(|k| k.name == *part).unwrap();
            if let KeyKind::Table(sub) | KeyKind::Tables(sub) = key.kind {
                keys = sub;
            }
            found = Some(key);
        }
        found.unwrap()
    }

    /// Sets `value` at `path` in `table`, making the tables (and one-item arrays of tables) the
    /// schema gives on the way.
    fn insert_at(table: &mut toml::Table, keys: &'static [Key], path: &[&str], value: toml::Value) {
        let (first, rest) = path.split_first().unwrap();
        if rest.is_empty() {
            table.insert(first.to_string(), value);
            return;
        }
        let key = keys.iter().find(|k| k.name == *first).unwrap();
        match key.kind {
            KeyKind::Table(sub) => {
                let inner = table
                    .entry(first.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                insert_at(inner.as_table_mut().unwrap(), sub, rest, value);
            }
            KeyKind::Tables(sub) => {
                let items = table.entry(first.to_string()).or_insert_with(|| {
                    toml::Value::Array(vec![toml::Value::Table(Default::default())])
                });
                let item = &mut items.as_array_mut().unwrap()[0];
                insert_at(item.as_table_mut().unwrap(), sub, rest, value);
            }
            _ => panic!("{first} is not a table"),
        }
    }

    #[test]
    fn serialized_defaults_use_only_schema_keys() {
        let job = JobConfig::load_str(MINIMAL, Path::new("job.toml"), &[]).unwrap();
        let text = job.to_toml_string().unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        for (section, keys) in &table {
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    find(JobConfig::KEYS, &[section, key]).is_some(),
                    "{section}.{key}"
                );
            }
        }
        let again = JobConfig::load_str(&text, Path::new("job.toml"), &[]).unwrap();
        assert_eq!(again.to_toml_string().unwrap(), text);
    }

    #[test]
    fn written_keys_are_the_file_and_the_overrides_not_the_defaults() {
        let text = format!("{MINIMAL}[hosted]\nprovider = \"together\"\n");
        let (_, written) =
            JobConfig::load_str_written(&text, Path::new("job.toml"), &["train.lr=1e-4".into()])
                .unwrap();
        let keys: Vec<&str> = written.iter().collect();
        assert_eq!(
            keys,
            [
                "data.train",
                "hosted",
                "model.source",
                "output.dir",
                "train.lr"
            ]
        );
    }
}
