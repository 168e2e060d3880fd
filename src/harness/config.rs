//! The eval file (`eval.toml`): held-out prompts, the candidates that answer them, generation
//! settings, the judge with its provider chain and traits, offline checks, and where the report
//! goes. Its tables are declared as the job file's are, so unknown keys, `--set` and did-you-mean
//! behave the same; relative paths are resolved against the file's folder.

use std::path::{Path, PathBuf};

use crate::config::job::schema::job_section;
use crate::config::job::{DeviceName, DtypeName, SectionFile, WrittenKeys};
use crate::harness::checks::Check;
pub use crate::harness::checks::CheckSection;
use crate::quant::Quantize;
use crate::{Error, Result};
use serde::Deserialize;

job_section! {
    /// A whole eval file.
    pub struct EvalConfig {
        pub data: EvalDataSection,
        pub candidate: Vec<CandidateSection> = Vec::new(),
        pub generation: GenerationSection = GenerationSection::default(),
        #[serde(skip_serializing_if = "Option::is_none")]
        pub judge: Option<JudgeSection> = None,
        pub check: Vec<CheckSection> = Vec::new(),
        pub task: Vec<TaskSection> = Vec::new(),
        pub output: EvalOutputSection,
    }
}

job_section! {
    /// `[data]`: the prompts.
    pub struct EvalDataSection {
        /// OpenAI messages JSONL: the prompt is everything before the last assistant turn, and
        /// that turn, when present, is the reference.
        pub path: PathBuf,
        /// At most this many prompts, sampled with `seed` (0: all).
        pub limit: usize = 0,
        pub seed: u64 = 0,
    }
}

job_section! {
    /// `[[candidate]]`: a model that answers, given by exactly one of `model` (a local model, or
    /// with `provider` a remote one), `run` or `responses`.
    pub struct CandidateSection {
        pub name: String,
        /// A local model (HF folder, hub id in the cache, `.gguf`), or the provider's model name.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub model: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub adapter: Option<PathBuf> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub quantize: Option<Quantize> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub dtype: Option<DtypeName> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub device: Option<DeviceName> = None,
        /// A training run folder: its `job.toml`'s base model, and its `adapter/`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub run: Option<PathBuf> = None,
        /// A chat provider (`openai`, `together`, `openrouter`, `anthropic`, `vllm`,
        /// `llamacpp`, `openai-compatible`).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub provider: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub base_url: Option<String> = None,
        /// A generations file an earlier eval wrote (`generations/<name>.jsonl`).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub responses: Option<PathBuf> = None,
    }
}

job_section! {
    /// `[generation]`: how candidates answer.
    pub struct GenerationSection {
        pub max_new_tokens: usize = 256,
        /// 0 is greedy.
        pub temperature: f64 = 0.0,
        pub top_p: f64 = 1.0,
        pub seed: u64 = 0,
        /// Prompts per forward pass for local candidates.
        pub batch_size: usize = 16,
        /// Requests in flight at once for remote candidates.
        pub concurrency: usize = 8,
    }
}

job_section! {
    /// `[judge]`: pairwise comparisons, trait scores, and the statistics' settings.
    pub struct JudgeSection {
        pub pairwise: bool = true,
        /// Compare every candidate with this one; unset: every pair.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub baseline: Option<String> = None,
        /// Score every reply on the traits.
        pub rubric: bool = false,
        /// Bootstrap rounds for the confidence intervals.
        pub bootstrap: usize = 1000,
        pub seed: u64 = 0,
        /// How many games a strong verdict in both orders counts as.
        pub strong_weight: u64 = 1,
        /// Requests in flight at once.
        pub concurrency: usize = 8,
        /// A minijinja file replacing the pairwise prompt.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub pairwise_template: Option<PathBuf> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub rubric_template: Option<PathBuf> = None,
        /// The fallback chain, primary first, as in docs/providers.md.
        pub providers: Vec<toml::Table> = Vec::new(),
        /// The traits the rubric scores (default: five general ones).
        pub r#trait: Vec<TraitSection> = Vec::new(),
    }
}

job_section! {
    /// `[[judge.trait]]`.
    pub struct TraitSection {
        pub name: String,
        pub description: String,
    }
}

job_section! {
    /// `[[task]]`: a multiple-choice file, `{"question", "choices": [...], "answer": i}` per line.
    pub struct TaskSection {
        pub name: String,
        pub path: PathBuf,
    }
}

job_section! {
    /// `[output]`.
    pub struct EvalOutputSection {
        pub dir: PathBuf,
    }
}

impl EvalConfig {
    /// Reads an eval file with `--set` overrides, resolves its paths and checks its values.
    pub fn load(path: &Path, overrides: &[String]) -> Result<(EvalConfig, WrittenKeys)> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str(&text, path, overrides)
    }

    pub fn load_str(
        text: &str,
        path: &Path,
        overrides: &[String],
    ) -> Result<(EvalConfig, WrittenKeys)> {
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            if table.contains_key("model") && !table.contains_key("candidate") {
                return Err(Error::JobFile {
                    file: path.to_path_buf(),
                    line: None,
                    msg: "this is a job file: train with `lora-train --config`".into(),
                });
            }
        }
        let file = SectionFile::<EvalConfig>::read(text, path, overrides)?;
        let mut cfg = file.value.clone();
        let base = path.parent().unwrap_or(Path::new(""));
        let join = |key: &str, p: &mut PathBuf| {
            if !file.is_overridden(key) && p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        join("data.path", &mut cfg.data.path);
        join("output.dir", &mut cfg.output.dir);
        for (i, t) in cfg.task.iter_mut().enumerate() {
            join(&format!("task.{i}.path"), &mut t.path);
        }
        for (i, c) in cfg.candidate.iter_mut().enumerate() {
            for (key, p) in [
                ("adapter", c.adapter.as_mut()),
                ("run", c.run.as_mut()),
                ("responses", c.responses.as_mut()),
            ] {
                if let Some(p) = p {
                    join(&format!("candidate.{i}.{key}"), p);
                }
            }
            if let (Some(m), None) = (&mut c.model, &c.provider) {
                // A hub id is also a relative path: only rewrite names that exist there.
                if Path::new(m).is_relative() && base.join(&*m).exists() {
                    *m = base.join(&*m).to_string_lossy().into_owned();
                }
            }
        }
        if let Some(judge) = &mut cfg.judge {
            for t in &mut judge.providers {
                if local_judge(t).is_some() {
                    if let Some(toml::Value::String(m)) = t.get_mut("model") {
                        if Path::new(m.as_str()).is_relative() && base.join(m.as_str()).exists() {
                            *m = base.join(m.as_str()).to_string_lossy().into_owned();
                        }
                    }
                }
            }
            for (key, p) in [
                ("judge.pairwise_template", judge.pairwise_template.as_mut()),
                ("judge.rubric_template", judge.rubric_template.as_mut()),
            ] {
                if let Some(p) = p {
                    join(key, p);
                }
            }
        }
        cfg.check_values()
            .map_err(|(key, msg)| file.error_at(&key, &msg))?;
        Ok((cfg, file.written()))
    }

    /// The value rules: (key, message) of the first broken one.
    fn check_values(&self) -> std::result::Result<(), (String, String)> {
        if self.candidate.is_empty() {
            return Err((
                "candidate".into(),
                "name at least one `[[candidate]]`".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.candidate.iter().enumerate() {
            let at = |k: &str| format!("candidate.{i}.{k}");
            if c.name.trim().is_empty() || c.name.contains(['/', '\\']) {
                return Err((at("name"), "`name` must be non-empty, without `/`".into()));
            }
            if !names.insert(c.name.as_str()) {
                return Err((at("name"), format!("two candidates are named `{}`", c.name)));
            }
            let sources = [c.model.is_some(), c.run.is_some(), c.responses.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err((
                    format!("candidate.{i}"),
                    format!(
                        "candidate `{}` needs exactly one of `model`, `run` or `responses`",
                        c.name
                    ),
                ));
            }
            if c.provider.is_some() && c.model.is_none() {
                return Err((
                    at("provider"),
                    "a `provider` candidate needs `model`".into(),
                ));
            }
            if c.provider.is_some()
                && (c.adapter.is_some() || c.quantize.is_some() || c.dtype.is_some())
            {
                return Err((
                    at("provider"),
                    "`adapter`, `quantize` and `dtype` are for local models".into(),
                ));
            }
        }
        let g = &self.generation;
        if g.concurrency == 0 || g.max_new_tokens == 0 || g.batch_size == 0 {
            return Err((
                "generation".into(),
                "`batch_size`, `concurrency` and `max_new_tokens` must be at least 1".into(),
            ));
        }
        if !g.temperature.is_finite() || g.temperature < 0.0 {
            return Err(("generation.temperature".into(), "must be >= 0".into()));
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return Err(("generation.top_p".into(), "must be in (0, 1]".into()));
        }
        if let Some(j) = &self.judge {
            if let Some(b) = &j.baseline {
                if !self.candidate.iter().any(|c| &c.name == b) {
                    let known: Vec<&str> = self.candidate.iter().map(|c| c.name.as_str()).collect();
                    return Err((
                        "judge.baseline".into(),
                        format!(
                            "`judge.baseline`: no candidate is named `{b}` (candidates: {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            if (j.pairwise || j.rubric) && j.providers.is_empty() {
                return Err((
                    "judge.providers".into(),
                    "a judge needs at least one `[[judge.providers]]`".into(),
                ));
            }
            for (i, t) in j.providers.iter().enumerate() {
                let key = format!("judge.providers.{i}");
                check_judge_provider(t).map_err(|msg| (key.clone(), format!("`{key}`: {msg}")))?;
            }
            if j.strong_weight == 0 || j.concurrency == 0 {
                return Err((
                    "judge".into(),
                    "`strong_weight` and `concurrency` must be at least 1".into(),
                ));
            }
        }
        for (i, c) in self.check.iter().enumerate() {
            Check::from_spec(c)
                .map_err(|msg| (format!("check.{i}"), format!("check `{}`: {msg}", c.name)))?;
        }
        Ok(())
    }
}

/// A `[[judge.providers]]` table with `provider = "local"`: its model and `max_tokens`.
pub fn local_judge(table: &toml::Table) -> Option<(String, Option<usize>)> {
    if table.get("provider")?.as_str()? != "local" {
        return None;
    }
    let model = table.get("model")?.as_str()?.to_string();
    let max_tokens = table
        .get("max_tokens")
        .and_then(|v| v.as_integer())
        .and_then(|n| usize::try_from(n).ok());
    Some((model, max_tokens))
}

/// Checks a judge provider table: a local model (`provider = "local"`, `model`, optional
/// `max_tokens`), or a chat provider as docs/providers.md describes.
fn check_judge_provider(table: &toml::Table) -> std::result::Result<(), String> {
    if table.get("provider").and_then(|v| v.as_str()) == Some("local") {
        if let Some(bad) = table
            .keys()
            .find(|k| !["provider", "model", "max_tokens"].contains(&k.as_str()))
        {
            return Err(format!(
                "`{bad}`: a local judge takes only `model` and `max_tokens`"
            ));
        }
        return match local_judge(table) {
            Some(_) => Ok(()),
            None => Err("a local judge needs `model` (a path) and a positive `max_tokens`".into()),
        };
    }
    crate::providers::chat::ChatProviderConfig::deserialize(toml::Value::Table(table.clone()))
        .map(|_| ())
        .map_err(|e| e.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[data]
path = "test.jsonl"
limit = 2

[[candidate]]
name = "base"
model = "m.gguf"

[[candidate]]
name = "gpt"
provider = "openai"
model = "gpt-4.1-mini"

[judge]
baseline = "base"

[[judge.providers]]
provider = "openai"
model = "gpt-4.1"

[[judge.trait]]
name = "helpfulness"
description = "Solves it?"

[[check]]
name = "signs-off"
contains = "Byte"

[output]
dir = "out"
"#;

    fn load(text: &str, set: &[&str]) -> Result<EvalConfig> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        EvalConfig::load_str(text, Path::new("/evals/eval.toml"), &set).map(|(c, _)| c)
    }

    #[test]
    fn a_full_file_loads_with_paths_beside_it() {
        let cfg = load(GOOD, &[]).unwrap();
        assert_eq!(cfg.data.path, Path::new("/evals/test.jsonl"));
        assert_eq!(cfg.output.dir, Path::new("/evals/out"));
        assert_eq!(cfg.candidate.len(), 2);
        let judge = cfg.judge.unwrap();
        assert_eq!(judge.r#trait[0].name, "helpfulness");
        assert_eq!(judge.providers[0]["model"].as_str(), Some("gpt-4.1"));
        assert_eq!(cfg.generation.max_new_tokens, 256);
    }

    #[test]
    fn unknown_keys_get_did_you_mean_and_set_reaches_nested_tables() {
        let err = load(&GOOD.replace("limit = 2", "limt = 2"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eval.toml:4") && err.contains("`data.limit`"),
            "{err}"
        );
        let cfg = load(
            GOOD,
            &["judge.providers.0.model=gpt-5", "candidate.1.name=other"],
        )
        .unwrap();
        assert_eq!(
            cfg.judge.unwrap().providers[0]["model"].as_str(),
            Some("gpt-5")
        );
        assert_eq!(cfg.candidate[1].name, "other");
    }

    #[test]
    fn value_rules_name_the_key() {
        let bad_base = load(GOOD, &["judge.baseline=nobody"])
            .unwrap_err()
            .to_string();
        assert!(
            bad_base.contains("`nobody`") && bad_base.contains("base, gpt"),
            "{bad_base}"
        );
        let two = GOOD.replace("model = \"m.gguf\"", "model = \"m.gguf\"\nrun = \"runs/x\"");
        let err = load(&two, &[]).unwrap_err().to_string();
        assert!(err.contains("exactly one of"), "{err}");
        let check = GOOD.replace("contains = \"Byte\"", "contains = \"Byte\"\nregex = \"x\"");
        let err = load(&check, &[]).unwrap_err().to_string();
        assert!(
            err.contains("check `signs-off`") && err.contains("exactly one rule"),
            "{err}"
        );
    }

    #[test]
    fn judge_providers_are_checked_where_they_are_written() {
        let bad = GOOD.replace(
            "provider = \"openai\"\nmodel = \"gpt-4.1\"",
            "provider = \"opneai\"\nmodel = \"gpt-4.1\"",
        );
        let err = load(&bad, &[]).unwrap_err().to_string();
        assert!(
            err.contains("eval.toml:18: `judge.providers.0`: unknown variant `opneai`"),
            "{err}"
        );
        let local = GOOD.replace(
            "provider = \"openai\"\nmodel = \"gpt-4.1\"",
            "provider = \"local\"\nmodel = \"judge.gguf\"\ntemperature = 0.5",
        );
        let err = load(&local, &[]).unwrap_err().to_string();
        assert!(
            err.contains("`temperature`: a local judge takes only"),
            "{err}"
        );
        let ok = GOOD.replace(
            "provider = \"openai\"\nmodel = \"gpt-4.1\"",
            "provider = \"local\"\nmodel = \"judge.gguf\"\nmax_tokens = 64",
        );
        let cfg = load(&ok, &[]).unwrap();
        let table = &cfg.judge.unwrap().providers[0];
        assert_eq!(
            local_judge(table),
            Some(("judge.gguf".to_string(), Some(64)))
        );
    }

    #[test]
    fn a_job_file_and_an_eval_file_point_at_each_other() {
        let job = "[model]\nsource = \"m\"\n[data]\ntrain = \"t\"\n[output]\ndir = \"o\"\n";
        let err = load(job, &[]).unwrap_err().to_string();
        assert!(err.contains("this is a job file"), "{err}");
        let err = crate::config::JobConfig::load_str(GOOD, Path::new("eval.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("this is an eval file: run `lora-train eval --config`"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
    }
}
