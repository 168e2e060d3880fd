//! The eval file (`eval.toml`): held-out prompts, the candidates that answer them, generation
//! settings, the judge with its provider chain and traits, offline checks, and where the report
//! goes. Its tables are declared as the job file's are, so unknown keys, `--set` and did-you-mean
//! behave the same; relative paths are resolved against the file's folder. The tables a job
//! file's `[eval]` shares with it (data, generation, judge, checks, tasks) are declared in
//! [`crate::config::eval`]; the candidates and the output folder are the eval file's own.

use std::path::{Path, PathBuf};

use crate::config::eval::{check_sections, for_each_shared_path, resolve_local_judges};
pub use crate::config::eval::{
    local_judge, CheckSection, EvalDataSection, GenerationSection, JudgeSection, TaskSection,
    TraitSection,
};
use crate::config::job::schema::job_section;
use crate::config::job::{DeviceName, DtypeName, SectionFile, WrittenKeys};
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
    /// `[[candidate]]`: a model that answers, given by exactly one of `model` (a local model, or
    /// with `provider` a remote one), `run` or `responses`.
    pub struct CandidateSection {
        pub name: String,
        /// A local model (HF folder, Hub repo, `.gguf`), or the provider's model name.
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
        for_each_shared_path(&mut cfg.task, cfg.judge.as_mut(), &mut |key, p| {
            join(key, p)
        });
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
            resolve_local_judges(judge, base);
        }
        cfg.check_values()
            .map_err(|(key, msg)| file.error_at(&key, &msg))?;
        Ok((cfg, file.written()))
    }

    /// The value rules, the judge's provider tables included: (key, message) of the first
    /// broken one.
    pub fn check_values(&self) -> std::result::Result<(), (String, String)> {
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
        let names: Vec<&str> = self.candidate.iter().map(|c| c.name.as_str()).collect();
        check_sections(
            "",
            &self.generation,
            self.judge.as_ref(),
            &self.check,
            &self.task,
            &names,
        )?;
        if let Some(j) = &self.judge {
            check_judge_providers("", j)?;
        }
        Ok(())
    }
}

/// Checks each of a judge's `[[judge.providers]]` (written under `prefix`, as `eval.` in a job
/// file): the error names its key.
pub fn check_judge_providers(
    prefix: &str,
    judge: &JudgeSection,
) -> std::result::Result<(), (String, String)> {
    for (i, t) in judge.providers.iter().enumerate() {
        let key = format!("{prefix}judge.providers.{i}");
        check_judge_provider(t).map_err(|msg| (key.clone(), format!("`{key}`: {msg}")))?;
    }
    Ok(())
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
