//! `lora-train data process --method feedback|alternative|both --input FILE -o OUT`: improve
//! each conversation's last reply (`lora_train::synth::process`) into records, SFT rows and DPO
//! pairs. The chains and prompts come from `--config` (default `configs/process.toml`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lora_train::data::formats::Format;
use lora_train::providers::Env;
use lora_train::synth::config::ProcessConfig;
use lora_train::synth::process::{run_process, Method, ProcessOptions};

use super::format_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// A critique, then a rewrite with it.
    Feedback,
    /// A fresh reply.
    Alternative,
    /// Both, on the same conversations (for comparing them).
    Both,
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    #[arg(long, value_enum)]
    pub method: MethodArg,

    /// Conversations (any conversation format of `data convert`); the last assistant reply of
    /// each is improved. Ids come from `conversation_id`, else `id`, else the line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub input: PathBuf,

    /// The records (one per conversation and method); `<stem>_metadata.json` goes beside it.
    #[arg(short = 'o', long, value_name = "OUT.jsonl")]
    pub out: PathBuf,

    /// Only the first N conversations.
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<usize>,

    /// The critic, writer and judge chains and prompts [default: configs/process.toml].
    #[arg(long, value_name = "process.toml")]
    pub config: Option<PathBuf>,

    /// Override one key of the process file (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,

    /// SFT rows: the conversation with the improved reply (with `both`, one file per method).
    #[arg(long, value_name = "FILE.jsonl")]
    pub sft: Option<PathBuf>,

    /// DPO pairs (improved chosen, original rejected).
    #[arg(long, value_name = "FILE.jsonl")]
    pub dpo: Option<PathBuf>,

    /// The DPO file's format: dpo-openai (Together and OpenAI), dpo-trl or dpo-seed.
    #[arg(long, default_value = "dpo-openai", value_parser = format_name, value_name = "FORMAT")]
    pub dpo_format: Format,

    /// Seconds each worker waits between requests (replaces `process.delay_secs`).
    #[arg(long, value_name = "SECS")]
    pub delay: Option<f64>,

    /// Start over when the outputs hold a run of another config or input.
    #[arg(long)]
    pub force: bool,

    /// Print the metadata as JSON.
    #[arg(long)]
    pub json: bool,

    /// Stop after this many items of this invocation, as Ctrl-C does (tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

/// The shipped process file, next to the binary's source tree or the working folder.
fn default_config() -> PathBuf {
    let here = PathBuf::from("configs/process.toml");
    if here.is_file() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/process.toml")
}

pub fn run(a: &ProcessArgs) -> anyhow::Result<()> {
    if let Some(d) = a.delay {
        if !(d.is_finite() && d >= 0.0) {
            anyhow::bail!("--delay must be a non-negative number of seconds");
        }
    }
    let config = a.config.clone().unwrap_or_else(default_config);
    let cfg = ProcessConfig::load(&config, &a.set)?;
    let methods = match a.method {
        MethodArg::Feedback => vec![Method::Feedback],
        MethodArg::Alternative => vec![Method::Alternative],
        MethodArg::Both => vec![Method::Feedback, Method::Alternative],
    };
    let opts = ProcessOptions {
        input: a.input.clone(),
        output: a.out.clone(),
        methods,
        sft: a.sft.clone(),
        dpo: a.dpo.clone(),
        dpo_format: a.dpo_format,
        limit: a.limit,
        delay_secs: a.delay,
        force: a.force,
        stop: Some(lora_train::train::install_stop_handler()),
        stop_after: a.stop_after,
    };
    let outcome = run_process(&cfg, &Env::from_process(), &opts)?;
    let m = &outcome.metadata;
    let written = m
        .files
        .values()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && p.is_file());
    crate::cli::record::datasets(
        written.map(|p| p.as_path()),
        &crate::cli::record::command_line(),
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        for (method, c) in &m.counts {
            println!(
                "{method}: {} improved, {} unchanged, {} not preferred by the judge, {} failed, {} pending",
                c.improved, c.unchanged, c.judge_rejected, c.failed, c.pending
            );
        }
        println!("${:.4}; wrote:", m.total_cost_usd);
        for (what, path) in &m.files {
            println!("  {what}: {}", path.display());
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
