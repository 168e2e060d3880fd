//! The evaluation tables that the eval file (`lora-train eval --config`) and a job file's
//! `[eval]` section both declare: the prompts, generation settings, the judge with its traits,
//! offline checks and multiple-choice tasks. Only their shapes and value rules live here, below
//! training, so the job file can declare them; the harness (`src/harness/`) runs them. A judge's
//! `[[judge.providers]]` tables are kept raw: the providers module reads them.

use std::path::{Path, PathBuf};

use regex::Regex;

use crate::config::job::schema::job_section;

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
    /// `[[check]]`: a name and exactly one rule.
    pub struct CheckSection {
        pub name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub contains: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub not_contains: Option<String> = None,
        /// The reply, whitespace trimmed, starts with this.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub starts_with: Option<String> = None,
        /// The reply, whitespace trimmed, ends with this.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub ends_with: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub regex: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub json_valid: Option<bool> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub json_fields: Option<Vec<String>> = None,
        /// `exact` or `normalized`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub matches_reference: Option<String> = None,
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
    /// A job file's `[eval]`: after training, the base model (`base`, the baseline) and the base
    /// with the run's adapter (`adapter`) answer `data`'s prompts, and the harness judges,
    /// checks and scores them as an eval file would, writing to `<output.dir>/eval/`.
    pub struct JobEvalSection {
        pub data: EvalDataSection,
        pub generation: GenerationSection = GenerationSection::default(),
        #[serde(skip_serializing_if = "Option::is_none")]
        pub judge: Option<JudgeSection> = None,
        pub check: Vec<CheckSection> = Vec::new(),
        pub task: Vec<TaskSection> = Vec::new(),
    }
}

/// The names of a job's `[eval]` candidates: the base model, which is the baseline, and the
/// base with the run's adapter.
pub const JOB_EVAL_CANDIDATES: [&str; 2] = ["base", "adapter"];

/// What a check asks of a reply: the one rule its table gives, checked.
#[derive(Debug, Clone)]
pub enum CheckRule {
    Contains(String),
    NotContains(String),
    /// The trimmed reply starts with this.
    StartsWith(String),
    /// The trimmed reply ends with this.
    EndsWith(String),
    Regex(Regex),
    JsonValid,
    /// A JSON object with every one of these keys.
    JsonFields(Vec<String>),
    /// Equal to the data's reference reply: exactly, or normalized (case, spaces, end marks).
    MatchesReference {
        normalized: bool,
    },
}

impl CheckSection {
    /// The rule this table gives, or why it is not exactly one valid rule (the message names
    /// the key).
    pub fn rule(&self) -> Result<CheckRule, String> {
        let mut rules = Vec::new();
        if let Some(s) = &self.contains {
            rules.push(("contains", CheckRule::Contains(s.clone())));
        }
        if let Some(s) = &self.not_contains {
            rules.push(("not_contains", CheckRule::NotContains(s.clone())));
        }
        if let Some(s) = &self.starts_with {
            rules.push(("starts_with", CheckRule::StartsWith(s.clone())));
        }
        if let Some(s) = &self.ends_with {
            rules.push(("ends_with", CheckRule::EndsWith(s.clone())));
        }
        if let Some(s) = &self.regex {
            let re = Regex::new(s).map_err(|e| format!("regex: {e}"))?;
            rules.push(("regex", CheckRule::Regex(re)));
        }
        match self.json_valid {
            Some(true) => rules.push(("json_valid", CheckRule::JsonValid)),
            Some(false) => return Err("json_valid: only `true` makes a check".into()),
            None => {}
        }
        if let Some(fields) = &self.json_fields {
            if fields.is_empty() {
                return Err("json_fields: name at least one key".into());
            }
            rules.push(("json_fields", CheckRule::JsonFields(fields.clone())));
        }
        if let Some(mode) = &self.matches_reference {
            let normalized = match mode.as_str() {
                "exact" => false,
                "normalized" => true,
                other => {
                    return Err(format!(
                        "matches_reference: `{other}` is not `exact` or `normalized`"
                    ))
                }
            };
            rules.push((
                "matches_reference",
                CheckRule::MatchesReference { normalized },
            ));
        }
        match rules.len() {
            1 => Ok(rules.remove(0).1),
            0 => Err(
                "a check needs one rule: contains, not_contains, starts_with, ends_with, \
                      regex, json_valid, json_fields or matches_reference"
                    .into(),
            ),
            _ => Err(format!(
                "a check has exactly one rule, this one has {}",
                rules.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// A broken value rule: the dotted key at fault and a message that names it.
pub type Broken = (String, String);

/// The value rules the eval tables share, for tables written under `prefix` (`""` in an eval
/// file, `"eval."` in a job file); `candidates` are the names a `judge.baseline` may give. The
/// judge's provider tables are left to their reader.
pub fn check_sections(
    prefix: &str,
    generation: &GenerationSection,
    judge: Option<&JudgeSection>,
    checks: &[CheckSection],
    tasks: &[TaskSection],
    candidates: &[&str],
) -> Result<(), Broken> {
    let key = |k: &str| format!("{prefix}{k}");
    let g = generation;
    if g.concurrency == 0 || g.max_new_tokens == 0 || g.batch_size == 0 {
        return Err((
            key("generation"),
            format!(
                "`{}`, `{}` and `{}` must be at least 1",
                key("generation.batch_size"),
                key("generation.concurrency"),
                key("generation.max_new_tokens")
            ),
        ));
    }
    if !g.temperature.is_finite() || g.temperature < 0.0 {
        let k = key("generation.temperature");
        return Err((k.clone(), format!("`{k}` must be >= 0")));
    }
    if !(g.top_p > 0.0 && g.top_p <= 1.0) {
        let k = key("generation.top_p");
        return Err((k.clone(), format!("`{k}` must be in (0, 1]")));
    }
    if let Some(j) = judge {
        if let Some(b) = &j.baseline {
            if !candidates.contains(&b.as_str()) {
                let k = key("judge.baseline");
                return Err((
                    k.clone(),
                    format!(
                        "`{k}`: no candidate is named `{b}` (candidates: {})",
                        candidates.join(", ")
                    ),
                ));
            }
        }
        if (j.pairwise || j.rubric) && j.providers.is_empty() {
            let k = key("judge.providers");
            return Err((k.clone(), format!("a judge needs at least one `[[{k}]]`")));
        }
        if j.strong_weight == 0 || j.concurrency == 0 {
            return Err((
                key("judge"),
                format!(
                    "`{}` and `{}` must be at least 1",
                    key("judge.strong_weight"),
                    key("judge.concurrency")
                ),
            ));
        }
        for (i, t) in j.r#trait.iter().enumerate() {
            if t.name.trim().is_empty() {
                let k = key(&format!("judge.trait.{i}.name"));
                return Err((k.clone(), format!("`{k}` is empty")));
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in checks.iter().enumerate() {
        let k = key(&format!("check.{i}"));
        c.rule()
            .map_err(|msg| (k.clone(), format!("check `{}`: {msg}", c.name)))?;
        if !names.insert(c.name.as_str()) {
            return Err((
                format!("{k}.name"),
                format!("two checks are named `{}`", c.name),
            ));
        }
    }
    for (i, t) in tasks.iter().enumerate() {
        if t.path.as_os_str().is_empty() {
            let k = key(&format!("task.{i}.path"));
            return Err((k.clone(), format!("`{k}` is empty")));
        }
    }
    Ok(())
}

/// Every path the shared tables hold, with its dotted key: each task's file and the judge's
/// templates.
pub fn for_each_shared_path(
    tasks: &mut [TaskSection],
    judge: Option<&mut JudgeSection>,
    f: &mut impl FnMut(&str, &mut PathBuf),
) {
    for (i, t) in tasks.iter_mut().enumerate() {
        f(&format!("task.{i}.path"), &mut t.path);
    }
    if let Some(judge) = judge {
        for (key, p) in [
            ("judge.pairwise_template", judge.pairwise_template.as_mut()),
            ("judge.rubric_template", judge.rubric_template.as_mut()),
        ] {
            if let Some(p) = p {
                f(key, p);
            }
        }
    }
}

/// Makes a local judge's relative `model` path relative to `base`, the folder of the file that
/// wrote it, when it names something there (a hub id is also a relative path).
pub fn resolve_local_judges(judge: &mut JudgeSection, base: &Path) {
    for t in &mut judge.providers {
        if local_judge(t).is_some() {
            if let Some(toml::Value::String(m)) = t.get_mut("model") {
                if Path::new(m.as_str()).is_relative() && base.join(m.as_str()).exists() {
                    *m = base.join(m.as_str()).to_string_lossy().into_owned();
                }
            }
        }
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

impl JobEvalSection {
    /// Every path the section holds, with its key under `eval.`.
    pub fn for_each_path(&mut self, mut f: impl FnMut(&str, &mut PathBuf)) {
        f("data.path", &mut self.data.path);
        for_each_shared_path(&mut self.task, self.judge.as_mut(), &mut f);
    }

    /// The value rules of a job's `[eval]` (keys under `eval.`), but for the judge's provider
    /// tables.
    pub fn check(&self) -> Result<(), Broken> {
        if self.data.path.as_os_str().is_empty() {
            return Err(("eval.data.path".into(), "`eval.data.path` is empty".into()));
        }
        check_sections(
            "eval.",
            &self.generation,
            self.judge.as_ref(),
            &self.check,
            &self.task,
            &JOB_EVAL_CANDIDATES,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_has_exactly_one_valid_rule() {
        let err = |c: CheckSection| c.rule().unwrap_err();
        let none = err(CheckSection::default());
        assert!(none.contains("needs one rule"), "{none}");
        let two = err(CheckSection {
            contains: Some("a".into()),
            regex: Some("b".into()),
            ..CheckSection::default()
        });
        assert!(two.contains("contains, regex"), "{two}");
        let bad = err(CheckSection {
            regex: Some("(".into()),
            ..CheckSection::default()
        });
        assert!(bad.starts_with("regex:"), "{bad}");
        let mode = err(CheckSection {
            matches_reference: Some("fuzzy".into()),
            ..CheckSection::default()
        });
        assert!(mode.contains("`fuzzy`"), "{mode}");
        let starts = CheckSection {
            starts_with: Some("Ahoy".into()),
            ..CheckSection::default()
        };
        assert!(matches!(starts.rule(), Ok(CheckRule::StartsWith(s)) if s == "Ahoy"));
    }

    #[test]
    fn shared_rules_name_the_key_under_its_prefix() {
        let broken = |judge: JudgeSection| {
            let g = GenerationSection::default();
            check_sections("eval.", &g, Some(&judge), &[], &[], &JOB_EVAL_CANDIDATES).unwrap_err()
        };
        let (key, msg) = broken(JudgeSection::default());
        assert_eq!(key, "eval.judge.providers");
        assert!(msg.contains("`[[eval.judge.providers]]`"), "{msg}");
        let (key, msg) = broken(JudgeSection {
            baseline: Some("tuned".into()),
            pairwise: false,
            ..JudgeSection::default()
        });
        assert_eq!(key, "eval.judge.baseline");
        assert!(msg.contains("base, adapter"), "{msg}");
    }
}
