//! The synth file (`data synth --config synth.toml`) and the process file (`data process
//! --config process.toml`). Their tables are declared as the job and eval files' are
//! (`job_section!`), so unknown keys get did-you-mean, `--set` reaches every key and errors name
//! the line; provider tables are the chat providers' own (docs/providers.md). Relative paths are
//! resolved against the file's folder. Prompt templates are compiled, and rendered once with
//! placeholder values, at load, so an unknown variable is an error naming its key before any call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use regex::Regex;
use serde::Deserialize;

use crate::config::job::schema::job_section;
use crate::config::job::SectionFile;
use crate::providers::chat::ChatProviderConfig;
use crate::{Error, Result};

job_section! {
    /// A whole synth file.
    pub struct SynthFile {
        pub synth: SynthSection,
        /// Values sampled per example: `name = ["a", "b", ...]`, one of each drawn per example.
        pub vars: toml::Table = toml::Table::new(),
        pub stage: Vec<StageSection> = Vec::new(),
        #[serde(skip_serializing_if = "Option::is_none")]
        pub example: Option<ExampleSection> = None,
    }
}

job_section! {
    /// `[synth]`: how many examples, where they go, and the run's limits.
    pub struct SynthSection {
        /// Example slots: each ends accepted, rejected, a duplicate, contaminated or failed.
        pub examples: usize = 50,
        pub seed: u64 = 0,
        /// The training JSONL; `<stem>_detailed.jsonl` and `<stem>_metadata.json` go beside it.
        pub output: PathBuf,
        /// Examples in flight at once, and requests in flight per provider.
        pub max_concurrency: usize = 8,
        /// Tries per stage when a reply fails a gate; then the example is rejected.
        pub max_attempts: usize = 3,
        /// MinHash Jaccard over word 5-grams at which an example is a near-duplicate (0: off).
        pub dedupe_threshold: f64 = 0.9,
        /// `{{ system_prompt }}` in the templates (`--system-prompt TEXT|@FILE` replaces it).
        pub system_prompt: String = String::new(),
        /// An evaluation set (any format) whose 13-grams an example must not share.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub against: Option<PathBuf> = None,
        /// The share of an example's 13-grams in `against` at which it is dropped.
        pub contamination_threshold: f64 = 0.5,
        /// The response cache of every stage's providers that set no `cache_dir` (default:
        /// `<stem>_cache` beside the output), so an interrupted example's finished calls are
        /// not paid twice.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub cache_dir: Option<PathBuf> = None,
    }
}

job_section! {
    /// `[[stage]]`: one generation step.
    pub struct StageSection {
        /// Later templates read this stage's output as `{{ name }}`.
        pub name: String,
        /// A system message template.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub system: Option<String> = None,
        /// The user message template: the vars, `system_prompt`, `index`, `id` and the earlier
        /// stages' outputs.
        pub prompt: String,
        pub min_words: usize = 0,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub max_words: Option<usize> = None,
        /// The reply must match this regular expression.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub regex: Option<String> = None,
        /// The fallback chain, primary first, as in docs/providers.md.
        pub providers: Vec<toml::Table> = Vec::new(),
    }
}

job_section! {
    /// `[example]`: how the stages become one conversation (default: the last stage's system
    /// and prompt as system and user, its output as the reply).
    pub struct ExampleSection {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub system: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub user: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub assistant: Option<String> = None,
    }
}

/// Names a template may use besides the vars and the stages.
pub const BUILTIN_NAMES: [&str; 3] = ["system_prompt", "index", "id"];

/// A loaded synth file.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub file: SynthFile,
    /// The vars, in file order, with their values.
    pub vars: Vec<(String, Vec<String>)>,
    /// Each stage's provider chain.
    pub chains: Vec<Vec<ChatProviderConfig>>,
}

/// What the command line sets on top of the file.
#[derive(Debug, Clone, Default)]
pub struct SynthOverrides {
    pub system_prompt: Option<String>,
    pub examples: Option<usize>,
    pub output: Option<PathBuf>,
    pub against: Option<PathBuf>,
    pub contamination_threshold: Option<f64>,
}

impl SynthConfig {
    /// Reads a synth file with `--set` overrides and the command line's flags, resolves paths
    /// and checks values and templates; an error names the file, the line and the key.
    pub fn load(path: &Path, set: &[String], flags: &SynthOverrides) -> Result<SynthConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str(&text, path, set, flags)
    }

    pub fn load_str(
        text: &str,
        path: &Path,
        set: &[String],
        flags: &SynthOverrides,
    ) -> Result<SynthConfig> {
        let file = SectionFile::<SynthFile>::read(text, path, set)?;
        let mut cfg = file.value.clone();
        let base = path.parent().unwrap_or(Path::new(""));
        let join = |key: &str, p: &mut PathBuf| {
            if !file.is_overridden(key) && p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        join("synth.output", &mut cfg.synth.output);
        if let Some(p) = cfg.synth.against.as_mut() {
            join("synth.against", p);
        }
        if let Some(p) = cfg.synth.cache_dir.as_mut() {
            join("synth.cache_dir", p);
        }
        // Command-line flags name paths relative to the working folder.
        if let Some(s) = &flags.system_prompt {
            cfg.synth.system_prompt = s.clone();
        }
        if let Some(n) = flags.examples {
            cfg.synth.examples = n;
        }
        if let Some(o) = &flags.output {
            cfg.synth.output = o.clone();
        }
        if let Some(a) = &flags.against {
            cfg.synth.against = Some(a.clone());
        }
        if let Some(t) = flags.contamination_threshold {
            cfg.synth.contamination_threshold = t;
        }
        let at = |(key, msg): (String, String)| file.error_at(&key, &msg);
        let vars = read_vars(&cfg.vars).map_err(at)?;
        check_synth(&cfg, &vars).map_err(at)?;
        let mut chains = Vec::new();
        for (i, stage) in cfg.stage.iter().enumerate() {
            let chain =
                provider_chain(&stage.providers, &format!("stage.{i}.providers")).map_err(at)?;
            chains.push(chain);
        }
        check_synth_templates(&cfg, &vars).map_err(at)?;
        Ok(SynthConfig {
            file: cfg,
            vars,
            chains,
        })
    }

    /// The training JSONL, the detailed file and the metadata file.
    pub fn output_paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        sibling_paths(&self.file.synth.output)
    }
}

/// `dir/name.jsonl` -> (`dir/name.jsonl`, `dir/name_detailed.jsonl`, `dir/name_metadata.json`).
pub fn sibling_paths(output: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "synth".into());
    (
        output.to_path_buf(),
        output.with_file_name(format!("{stem}_detailed.jsonl")),
        output.with_file_name(format!("{stem}_metadata.json")),
    )
}

type KeyError = (String, String);

fn read_vars(vars: &toml::Table) -> std::result::Result<Vec<(String, Vec<String>)>, KeyError> {
    let mut out = Vec::new();
    for (name, value) in vars {
        let key = format!("vars.{name}");
        check_name(name).map_err(|m| (key.clone(), m))?;
        let values = match value {
            toml::Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(n) => Ok(n.to_string()),
                    toml::Value::Float(x) => Ok(x.to_string()),
                    toml::Value::Boolean(b) => Ok(b.to_string()),
                    _ => Err((
                        key.clone(),
                        format!("`{key}`: values must be strings or numbers"),
                    )),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            _ => {
                return Err((
                    key.clone(),
                    format!("`{key}`: expected a non-empty list of values to sample from"),
                ))
            }
        };
        out.push((name.clone(), values));
    }
    Ok(out)
}

/// A template name: letters, digits and `_`, not starting with a digit.
fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a template name (letters, digits and _, not starting with a digit)"
        ))
    }
}

fn check_synth(
    cfg: &SynthFile,
    vars: &[(String, Vec<String>)],
) -> std::result::Result<(), KeyError> {
    let s = &cfg.synth;
    let err = |key: &str, msg: &str| Err((key.to_string(), format!("`{key}` {msg}")));
    if s.examples == 0 {
        return err("synth.examples", "must be at least 1");
    }
    if s.max_concurrency == 0 {
        return err("synth.max_concurrency", "must be at least 1");
    }
    if s.max_attempts == 0 {
        return err("synth.max_attempts", "must be at least 1");
    }
    if !(0.0..=1.0).contains(&s.dedupe_threshold) {
        return err("synth.dedupe_threshold", "must be from 0 (off) to 1");
    }
    if !(s.contamination_threshold > 0.0 && s.contamination_threshold <= 1.0) {
        return err(
            "synth.contamination_threshold",
            "must be above 0 and at most 1",
        );
    }
    if s.output.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        return err("synth.output", "must be a .jsonl file");
    }
    if cfg.stage.is_empty() {
        return Err(("stage".into(), "give at least one `[[stage]]`".into()));
    }
    let mut names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    for b in BUILTIN_NAMES {
        if let Some((n, _)) = vars.iter().find(|(n, _)| n == b) {
            return Err((
                format!("vars.{n}"),
                format!("`vars.{n}`: `{b}` is a built-in name"),
            ));
        }
    }
    for (i, st) in cfg.stage.iter().enumerate() {
        let key = |k: &str| format!("stage.{i}.{k}");
        check_name(&st.name).map_err(|m| (key("name"), m))?;
        if names.contains(&st.name.as_str()) || BUILTIN_NAMES.contains(&st.name.as_str()) {
            return Err((
                key("name"),
                format!("`{}` is already a var, a stage or a built-in name", st.name),
            ));
        }
        names.push(&st.name);
        if let Some(max) = st.max_words {
            if max < st.min_words.max(1) {
                return Err((
                    key("max_words"),
                    format!(
                        "`{}` must be at least min_words ({})",
                        key("max_words"),
                        st.min_words
                    ),
                ));
            }
        }
        if let Some(re) = &st.regex {
            Regex::new(re).map_err(|e| (key("regex"), format!("`{}`: {e}", key("regex"))))?;
        }
    }
    Ok(())
}

/// The provider tables of a chain, checked: the error names the table.
pub fn provider_chain(
    tables: &[toml::Table],
    key: &str,
) -> std::result::Result<Vec<ChatProviderConfig>, KeyError> {
    if tables.is_empty() {
        return Err((
            key.to_string(),
            format!("`{key}`: give at least one provider (`[[{key}]]`)"),
        ));
    }
    tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            ChatProviderConfig::deserialize(toml::Value::Table(t.clone())).map_err(|e| {
                let k = format!("{key}.{i}");
                (k.clone(), format!("`{k}`: {}", e.message()))
            })
        })
        .collect()
}

/// A template environment that refuses undefined names.
pub fn strict_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env
}

/// Compiles `source` and renders it once with every name in `known` set to a placeholder.
pub fn check_template(
    key: &str,
    source: &str,
    known: &[&str],
) -> std::result::Result<(), KeyError> {
    let env = strict_env();
    let ctx: BTreeMap<&str, minijinja::Value> = known
        .iter()
        .map(|n| (*n, minijinja::Value::from("x")))
        .collect();
    env.render_str(source, &ctx)
        .map(|_| ())
        .map_err(|e| (key.to_string(), format!("`{key}`: {}", template_error(&e))))
}

/// A minijinja error with its detail, on one line.
pub fn template_error(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg = format!("{msg}: {detail}");
        }
    }
    msg.replace('\n', " ")
}

fn check_synth_templates(
    cfg: &SynthFile,
    vars: &[(String, Vec<String>)],
) -> std::result::Result<(), KeyError> {
    let mut known: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    known.extend(BUILTIN_NAMES);
    for (i, st) in cfg.stage.iter().enumerate() {
        if let Some(sys) = &st.system {
            check_template(&format!("stage.{i}.system"), sys, &known)?;
        }
        check_template(&format!("stage.{i}.prompt"), &st.prompt, &known)?;
        known.push(&st.name);
    }
    if let Some(ex) = &cfg.example {
        for (k, t) in [
            ("system", &ex.system),
            ("user", &ex.user),
            ("assistant", &ex.assistant),
        ] {
            if let Some(t) = t {
                check_template(&format!("example.{k}"), t, &known)?;
            }
        }
        if ex.user.is_none() || ex.assistant.is_none() {
            return Err((
                "example".into(),
                "`[example]` needs both `user` and `assistant`".into(),
            ));
        }
    }
    Ok(())
}

job_section! {
    /// A whole process file.
    pub struct ProcessFile {
        pub process: ProcessSection = ProcessSection::default(),
        pub critic: CriticSection,
        pub writer: WriterSection,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub judge: Option<ProcessJudgeSection> = None,
    }
}

job_section! {
    /// `[process]`: the run's limits.
    pub struct ProcessSection {
        /// Conversations in flight at once, and requests in flight per provider.
        pub max_concurrency: usize = 4,
        /// Seconds each worker waits between its requests (`--delay`).
        pub delay_secs: f64 = 0.0,
        /// Response cache of providers that set no `cache_dir` (default `<stem>_cache` beside
        /// the output).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub cache_dir: Option<PathBuf> = None,
    }
}

job_section! {
    /// `[critic]`: critiques the last reply (method `feedback`).
    pub struct CriticSection {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub system: Option<String> = None,
        /// Reads `conversation` (the messages before the reply), `transcript` (them as text) and
        /// `response` (the reply).
        pub prompt: String,
        pub providers: Vec<toml::Table> = Vec::new(),
    }
}

job_section! {
    /// `[writer]`: writes the improved reply.
    pub struct WriterSection {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub system: Option<String> = None,
        /// Method `feedback`: as the critic's, plus `critique`.
        pub feedback_prompt: String,
        /// Method `alternative`: as the critic's.
        pub alternative_prompt: String,
        pub providers: Vec<toml::Table> = Vec::new(),
    }
}

job_section! {
    /// `[judge]`: keep a pair only when this judge prefers the improved reply in both orders.
    pub struct ProcessJudgeSection {
        /// A minijinja file replacing the harness's pairwise prompt.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub template: Option<PathBuf> = None,
        pub providers: Vec<toml::Table> = Vec::new(),
    }
}

/// A loaded process file.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub file: ProcessFile,
    pub critic: Vec<ChatProviderConfig>,
    pub writer: Vec<ChatProviderConfig>,
    pub judge: Option<Vec<ChatProviderConfig>>,
}

/// Names the process templates read.
pub const PROCESS_NAMES: [&str; 4] = ["conversation", "transcript", "response", "critique"];

impl ProcessConfig {
    pub fn load(path: &Path, set: &[String]) -> Result<ProcessConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::load_str(&text, path, set)
    }

    pub fn load_str(text: &str, path: &Path, set: &[String]) -> Result<ProcessConfig> {
        let file = SectionFile::<ProcessFile>::read(text, path, set)?;
        let mut cfg = file.value.clone();
        let base = path.parent().unwrap_or(Path::new(""));
        let join = |key: &str, p: &mut PathBuf| {
            if !file.is_overridden(key) && p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = cfg.process.cache_dir.as_mut() {
            join("process.cache_dir", p);
        }
        if let Some(p) = cfg.judge.as_mut().and_then(|j| j.template.as_mut()) {
            join("judge.template", p);
        }
        let at = |(key, msg): (String, String)| file.error_at(&key, &msg);
        if cfg.process.max_concurrency == 0 {
            return Err(at((
                "process.max_concurrency".into(),
                "`process.max_concurrency` must be at least 1".into(),
            )));
        }
        if !(cfg.process.delay_secs.is_finite() && cfg.process.delay_secs >= 0.0) {
            return Err(at((
                "process.delay_secs".into(),
                "`process.delay_secs` must be a non-negative number of seconds".into(),
            )));
        }
        let without_critique = &PROCESS_NAMES[..3];
        let templates = [
            (
                "critic.system",
                cfg.critic.system.as_deref(),
                without_critique,
            ),
            (
                "critic.prompt",
                Some(cfg.critic.prompt.as_str()),
                without_critique,
            ),
            (
                "writer.system",
                cfg.writer.system.as_deref(),
                without_critique,
            ),
            (
                "writer.feedback_prompt",
                Some(cfg.writer.feedback_prompt.as_str()),
                &PROCESS_NAMES[..],
            ),
            (
                "writer.alternative_prompt",
                Some(cfg.writer.alternative_prompt.as_str()),
                without_critique,
            ),
        ];
        for (key, source, known) in templates {
            if let Some(source) = source {
                check_template(key, source, known).map_err(at)?;
            }
        }
        let critic = provider_chain(&cfg.critic.providers, "critic.providers").map_err(at)?;
        let writer = provider_chain(&cfg.writer.providers, "writer.providers").map_err(at)?;
        let judge = match &cfg.judge {
            None => None,
            Some(j) => Some(provider_chain(&j.providers, "judge.providers").map_err(at)?),
        };
        Ok(ProcessConfig {
            file: cfg,
            critic,
            writer,
            judge,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[synth]
examples = 4
output = "out/synth.jsonl"
system_prompt = "Be kind."

[vars]
doc_type = ["memo", "email"]
domain = ["logistics"]

[[stage]]
name = "document"
prompt = "Write a {{ doc_type }} for a {{ domain }} company."
min_words = 10
[[stage.providers]]
provider = "openai"
model = "m1"
[[stage.providers]]
provider = "openrouter"
model = "m2"

[[stage]]
name = "reply"
system = "{{ system_prompt }}"
prompt = "{{ document }}"
[[stage.providers]]
provider = "anthropic"
model = "c"
"#;

    fn load(text: &str, set: &[&str]) -> Result<SynthConfig> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        SynthConfig::load_str(
            text,
            Path::new("/cfg/synth.toml"),
            &set,
            &SynthOverrides::default(),
        )
    }

    #[test]
    fn a_synth_file_loads_with_its_chains_and_paths() {
        let cfg = load(GOOD, &[]).unwrap();
        assert_eq!(cfg.file.synth.output, Path::new("/cfg/out/synth.jsonl"));
        assert_eq!(cfg.chains[0].len(), 2);
        assert_eq!(
            cfg.vars[0],
            ("doc_type".into(), vec!["memo".into(), "email".into()])
        );
        let (_, detailed, meta) = cfg.output_paths();
        assert_eq!(detailed, Path::new("/cfg/out/synth_detailed.jsonl"));
        assert_eq!(meta, Path::new("/cfg/out/synth_metadata.json"));
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = load(&GOOD.replace("min_words = 10", "min_wrods = 10"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "synth.toml:14: unknown key `stage.0.min_wrods` (did you mean `stage.min_words`?)"
            ),
            "{e}"
        );
        let e = load(&GOOD.replace("{{ document }}", "{{ documnet }}"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`stage.1.prompt`") && e.contains("undefined"),
            "{e}"
        );
        let e = load(
            &GOOD.replace("model = \"m2\"", "model = \"m2\"\nmodle = 1"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`stage.0.providers.1`: unknown field `modle`"),
            "{e}"
        );
        let e = load(GOOD, &["synth.max_attempts=0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set synth.max_attempts=0"), "{e}");
        let e = load(
            &GOOD.replace("domain = [\"logistics\"]", "domain = []"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`vars.domain`: expected a non-empty list"),
            "{e}"
        );
        let e = load(
            &GOOD.replace("name = \"reply\"", "name = \"document\""),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already a var, a stage"), "{e}");
    }
}
