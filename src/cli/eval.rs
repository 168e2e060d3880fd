//! `lora-train eval`: run an eval file, or compare two models on a prompts file in one line.
//! The quick form builds the same eval file in memory: each model is a path, `run:DIR` or
//! `PROVIDER:MODEL`, and the judge is `PROVIDER:MODEL` or a local model. The report is
//! recorded in the registry as an evaluation with its comparisons.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use lora_train::harness::config::{
    CandidateSection, EvalConfig, EvalDataSection, EvalOutputSection, GenerationSection,
    JudgeSection,
};
use lora_train::harness::run::{run_eval, Outcome};
use lora_train::providers::chat::ChatProviderKind;
use lora_train::providers::Env;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// An eval file (see configs/eval-quickstart.toml).
    #[arg(long, value_name = "eval.toml", conflicts_with_all = ["model1", "model2", "judge", "data"])]
    pub config: Option<PathBuf>,

    /// Override one eval key, e.g. --set judge.bootstrap=200 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    pub set: Vec<String>,

    /// The first model: a model path, run:DIR (a training run) or PROVIDER:MODEL.
    #[arg(long, value_name = "A", requires_all = ["model2", "data"])]
    pub model1: Option<String>,

    /// The second model, the baseline the first is compared with.
    #[arg(long, value_name = "B")]
    pub model2: Option<String>,

    /// The judge: PROVIDER:MODEL (e.g. openai:gpt-4.1) or a local model path; without it only
    /// the answers, checks and losses are written.
    #[arg(long, value_name = "PROVIDER:MODEL")]
    pub judge: Option<String>,

    /// Prompts: OpenAI messages JSONL (a final assistant turn is the reference).
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: Option<PathBuf>,

    /// At most this many prompts, sampled with a fixed seed.
    #[arg(long, value_name = "N")]
    pub test_size: Option<usize>,

    /// Output folder [default: runs/eval-<UTC timestamp>].
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Write into an output folder that holds files an eval does not write.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: &EvalArgs) -> anyhow::Result<()> {
    // A run the server's worker started reports into the job row it was given.
    let job = super::record::EvalJob::begin();
    let done = evaluate(a);
    match (job, &done) {
        (Some(job), Ok((cfg, outcome))) => job.finish(Ok((&outcome.report, &cfg.output.dir))),
        (Some(job), Err(e)) => job.finish(Err(e)),
        (None, Ok((cfg, outcome))) => {
            if let Some(reg) = super::record::open() {
                let dir = &cfg.output.dir;
                super::record::record_eval(&reg, &outcome.report, dir, None, Default::default());
            }
        }
        (None, Err(_)) => {}
    }
    let (cfg, outcome) = done?;
    print!("{}", lora_train::harness::report::render(&outcome.report));
    println!("\nwrote {}", cfg.output.dir.display());
    Ok(())
}

fn evaluate(a: &EvalArgs) -> anyhow::Result<(EvalConfig, Outcome)> {
    let cfg = match (&a.config, &a.model1) {
        (Some(file), _) => EvalConfig::load(file, &a.set)?.0,
        (None, Some(m1)) => quick(a, m1)?,
        (None, None) => bail!("give --config eval.toml, or --model1 A --model2 B --data FILE"),
    };
    let outcome = run_eval(&cfg, &Env::from_process(), a.force)?;
    Ok((cfg, outcome))
}

fn quick(a: &EvalArgs, m1: &str) -> anyhow::Result<EvalConfig> {
    let (Some(m2), Some(data)) = (&a.model2, &a.data) else {
        bail!("the quick form needs --model1, --model2 and --data");
    };
    let out = a.out.clone().unwrap_or_else(default_out);
    let judge = match &a.judge {
        None => None,
        Some(spec) => {
            // PROVIDER:MODEL, else a local model path.
            let (provider, model) = remote(spec).unwrap_or_else(|| ("local".into(), spec.clone()));
            let mut table = toml::Table::new();
            table.insert("provider".into(), provider.into());
            table.insert("model".into(), model.into());
            Some(JudgeSection {
                baseline: Some("model2".into()),
                providers: vec![table],
                ..JudgeSection::default()
            })
        }
    };
    Ok(EvalConfig {
        data: EvalDataSection {
            path: data.clone(),
            limit: a.test_size.unwrap_or(0),
            seed: 0,
        },
        candidate: vec![candidate("model1", m1), candidate("model2", m2)],
        generation: GenerationSection::default(),
        judge,
        check: Vec::new(),
        task: Vec::new(),
        output: EvalOutputSection { dir: out },
    })
}

/// `PROVIDER:MODEL` when the prefix names a chat provider.
fn remote(spec: &str) -> Option<(String, String)> {
    let (provider, model) = spec.split_once(':')?;
    let kinds = [
        ChatProviderKind::OpenAi,
        ChatProviderKind::Together,
        ChatProviderKind::OpenRouter,
        ChatProviderKind::Vllm,
        ChatProviderKind::LlamaCpp,
        ChatProviderKind::Anthropic,
    ];
    kinds
        .iter()
        .any(|k| k.as_str() == provider)
        .then(|| (provider.to_string(), model.to_string()))
}

fn candidate(name: &str, spec: &str) -> CandidateSection {
    let mut c = CandidateSection {
        name: name.into(),
        ..CandidateSection::default()
    };
    if let Some(dir) = spec.strip_prefix("run:") {
        c.run = Some(PathBuf::from(dir));
    } else if let Some((provider, model)) = remote(spec) {
        c.provider = Some(provider);
        c.model = Some(model);
    } else {
        c.model = Some(spec.into());
    }
    c
}

fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (y, m, d) = lora_train::data::template::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    PathBuf::from(format!(
        "runs/eval-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    ))
}
