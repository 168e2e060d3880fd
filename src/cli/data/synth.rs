//! `lora-train data synth --config synth.toml`: the staged generator (`lora_train::synth`), with
//! the seeds' flags on top of the file. Ctrl-C stops starting new examples, writes those in
//! flight and exits with the signal's code; a re-run continues.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use lora_train::providers::Env;
use lora_train::synth::config::{SynthConfig, SynthOverrides};
use lora_train::synth::generate::{run_synth, SynthOptions};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The synth file (see configs/synth-documents.toml and docs/data.md).
    #[arg(long, value_name = "synth.toml")]
    pub config: PathBuf,

    /// Override one key, e.g. --set synth.seed=3 or --set stage.0.min_words=200 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,

    /// `{{ system_prompt }}` in the templates: the text, or @FILE to read it from a file.
    #[arg(long, value_name = "TEXT|@FILE")]
    pub system_prompt: Option<String>,

    /// Example slots to run (replaces `synth.examples`; raising it on a re-run adds slots).
    #[arg(long, value_name = "N")]
    pub examples: Option<usize>,

    /// The training JSONL (replaces `synth.output`); the detailed and metadata files go beside it.
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,

    /// An evaluation set (any format): drop examples sharing too many 13-grams with it.
    #[arg(long, value_name = "eval.jsonl")]
    pub against: Option<PathBuf>,

    /// The share of an example's 13-grams in --against at which it is dropped [default: 0.5].
    #[arg(long, value_name = "F", value_parser = share)]
    pub contamination_threshold: Option<f64>,

    /// Start over when the outputs hold a run of another config.
    #[arg(long)]
    pub force: bool,

    /// Print the metadata as JSON.
    #[arg(long)]
    pub json: bool,

    /// Stop after this many examples of this invocation, as Ctrl-C does (tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

fn share(s: &str) -> Result<f64, String> {
    super::super::parse_float(s, 0.0, true, 1.0, "give a share above 0, at most 1")
}

/// TEXT, or the content of FILE for @FILE.
pub fn text_or_file(value: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--system-prompt @{path}"))
            .map(|s| s.trim_end().to_string()),
        None => Ok(value.to_string()),
    }
}

pub fn run(a: &SynthArgs) -> anyhow::Result<()> {
    let flags = SynthOverrides {
        system_prompt: a.system_prompt.as_deref().map(text_or_file).transpose()?,
        examples: a.examples,
        output: a.output.clone(),
        against: a.against.clone(),
        contamination_threshold: a.contamination_threshold,
    };
    if a.examples == Some(0) {
        bail!("--examples must be at least 1");
    }
    let cfg = SynthConfig::load(&a.config, &a.set, &flags)?;
    let stop = lora_train::train::install_stop_handler();
    let opts = SynthOptions {
        force: a.force,
        stop: Some(stop),
        stop_after: a.stop_after,
    };
    let outcome = run_synth(&cfg, &Env::from_process(), &opts)?;
    let m = &outcome.metadata;
    let (train, _, _) = cfg.output_paths();
    if train.is_file() {
        crate::cli::record::datasets([train.as_path()], &crate::cli::record::command_line());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        let c = &m.counts;
        println!(
            "{} examples: {} accepted, {} rejected, {} near-duplicates, {} contaminated, {} failed, {} pending; ${:.4}",
            m.examples, c.accepted, c.rejected, c.duplicates, c.contaminated, c.failed, c.pending, m.total_cost_usd
        );
        for (why, n) in &m.rejects {
            println!("  not accepted: {why}: {n}");
        }
        for (name, u) in &m.providers {
            println!(
                "  {name}: {} replies, {} from cache, {} failures, {} in / {} out tokens, ${:.4}",
                u.replies, u.cache_hits, u.failures, u.input_tokens, u.output_tokens, u.cost_usd
            );
        }
        let (_, detailed, meta) = cfg.output_paths();
        println!(
            "wrote {}, {}, {}",
            train.display(),
            detailed.display(),
            meta.display()
        );
        if m.counts.failed > 0 {
            println!("(failed examples are tried again by running the same command)");
        }
    }
    if outcome.stopped {
        if let Some(signal) = lora_train::train::stop_signal() {
            eprintln!("stopped; run the same command to continue");
            return Err(crate::cli::Stopped(signal).into());
        }
    }
    Ok(())
}
