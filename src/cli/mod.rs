//! The `lora-train` command line: one file per command, each with its clap arguments and the
//! code that turns them into library calls and printed results.
//!
//! This wing is the binary's own (clap, anyhow, `println!`); the library below it takes plain
//! arguments. Output shapes of `--json` are fixed because other tools read them.

mod bench;
mod data;
mod deploy;
mod doctor;
mod download;
mod eval;
mod export;
mod generate;
mod hosted;
mod inspect;
mod record;
mod score;
mod serve;
mod shell;
mod train;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use lora_train::config::{DeviceName, DtypeName};
use lora_train::model::{load_with_adapter, LoadOptions, LoadedModel};

/// Fine-tune Llama and Gemma chat models with LoRA and QLoRA, natively in Rust.
///
/// Train:    lora-train --config job.toml [--set train.lr=1e-4] [--resume]
/// Use:      lora-train generate --model M --adapter runs/x/adapter --prompt "Hi"
#[derive(Debug, Parser)]
#[command(name = "lora-train", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Train a LoRA adapter as this job file says (see configs/README.md).
    #[arg(long, value_name = "job.toml")]
    pub config: Option<PathBuf>,

    /// Override one job key, e.g. --set train.lr=1e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    pub set: Vec<String>,

    /// Continue from the newest checkpoint in the job's output folder.
    #[arg(long, requires = "config")]
    pub resume: bool,

    /// With --resume: continue although the training data changed since the checkpoint.
    #[arg(long, requires = "resume")]
    pub allow_data_change: bool,
    /// Start afresh in an output folder that holds an earlier run: remove that run's
    /// checkpoints, logs, adapter and report first (never any other file).
    #[arg(long, requires = "config", conflicts_with = "resume")]
    pub overwrite: bool,

    /// Stop after this many steps of this invocation, saving a checkpoint (as Ctrl-C does).
    #[arg(long, requires = "config", hide = true)]
    pub stop_after: Option<usize>,

    /// Skip the evaluation at the end of training (the job's `[report]` or `[eval]`).
    #[arg(long, requires = "config")]
    pub no_report: bool,

    /// Log more (repeat for debug output); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The registry file runs are recorded in [default: $LORA_TRAIN_HOME/registry.db, else
    /// ~/.lora-train/registry.db].
    #[arg(long, global = true, value_name = "FILE")]
    pub db: Option<PathBuf>,

    /// Record nothing in the registry.
    #[arg(long, global = true, conflicts_with = "db")]
    pub no_registry: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a reply from a prompt or a conversation.
    Generate(generate::GenerateArgs),
    /// Masked cross-entropy of a chat dataset (validation loss).
    Score(score::ScoreArgs),
    /// Show how a conversation is rendered and tokenized, and which tokens are targets.
    Inspect(inspect::InspectArgs),
    /// Export a checkpoint's adapter (PEFT format), or merge it into full HF weights.
    Export(export::ExportArgs),
    /// Evaluate models: answers, a judge in both orders, ratings with CIs, offline checks.
    Eval(eval::EvalArgs),
    /// Hosted fine-tuning jobs (Together, OpenAI): submit, status, watch, cancel, list, download.
    #[command(subcommand)]
    Hosted(hosted::HostedCommand),
    /// Dataset tools: convert, validate, stats, split, synth, process.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// What this build is and what it finds here: CPU, memory, CUDA driver, GPUs, libraries.
    Doctor(doctor::DoctorArgs),
    /// Download a model from the Hugging Face Hub into its cache and print the folder.
    Download(download::DownloadArgs),
    /// Measure a job's training speed, memory and MFU on this machine; sweep sizes.
    Bench(bench::BenchArgs),
    /// Serve the registry's REST API, a job queue and the dashboard (loopback by default).
    Serve(serve::ServeArgs),
    /// Deploy a registered version to a vLLM server, roll a deployment back, or print the
    /// `vllm serve` command for one.
    Deploy(deploy::DeployArgs),
}

/// A run that a signal stopped, its checkpoint saved: no error, but the process exits with the
/// signal's code (130 for SIGINT, 143 for SIGTERM), so a script can tell.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {}", .0.name())]
pub struct Stopped(pub lora_train::train::StopSignal);

/// Which model to load, and how.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face folder, a Hub repo (org/name[@revision], downloaded into the Hub cache),
    /// or a .gguf file.
    #[arg(long, value_name = "M")]
    pub model: String,

    /// A PEFT LoRA adapter folder to apply.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: DtypeName,

    /// Device: auto, cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceName,
}

/// Parses the command line. A usage error prints as one `error:` line and exits with 2, as clap
/// does; help and `--version` print as clap prints them.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("error: {}", one_line(&e.render().to_string()));
            std::process::exit(e.exit_code());
        }
    }
}

/// clap's message on one line: its lines up to the usage, without tips, joined by spaces.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a float flag's value: a finite number from `min` (excluded when `min_open`) to `max`;
/// `valid` says that range in words for the error.
fn parse_float(s: &str, min: f64, min_open: bool, max: f64, valid: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number; {valid}"))?;
    if !v.is_finite() {
        return Err(format!("{s} is not a finite number; {valid}"));
    }
    if v < min || (min_open && v == min) || v > max {
        return Err(format!("{s} is out of range; {valid}"));
    }
    Ok(v)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    record::init(cli.db.clone(), cli.no_registry);
    // The training flags belong to `--config` runs; the global ones (--db, -v) go anywhere.
    if let (Some(_), Some(config)) = (&cli.command, &cli.config) {
        bail!(
            "--config {} trains; it does not go with a command (commands that read a job file \
             take their own --config after the command's name)",
            config.display()
        );
    }
    match cli.command {
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Score(a)) => score::run(a),
        Some(Command::Inspect(a)) => inspect::run(a),
        Some(Command::Export(a)) => export::run(&a),
        Some(Command::Eval(a)) => eval::run(&a),
        Some(Command::Hosted(c)) => hosted::run(c),
        Some(Command::Data(c)) => data::run(c),
        Some(Command::Doctor(a)) => doctor::run(&a),
        Some(Command::Download(a)) => download::run(a),
        Some(Command::Bench(a)) => bench::run(&a),
        Some(Command::Serve(a)) => serve::run(&a),
        Some(Command::Deploy(a)) => deploy::run(&a),
        None => match &cli.config {
            Some(path) => train::run(path, &cli),
            None => bail!("nothing to do: give --config job.toml, or a command (see --help)"),
        },
    }
}

/// Loads `--model` (and `--adapter`) as the command line asks.
fn load_model(args: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let opts = LoadOptions {
        dtype: args.dtype.dtype(),
        device: lora_train::device::open(args.device)?,
        ..Default::default()
    };
    Ok(load_with_adapter(
        &args.model,
        &opts,
        args.adapter.as_deref(),
    )?)
}

/// `--loss-on`: the names of the job file's `data.loss_on`.
fn loss_on() -> impl clap::builder::TypedValueParser<Value = lora_train::data::LossOn> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(lora_train::data::LossOn::NAMES)
        .map(|name| name.parse().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_flags_refuse_nan_infinity_and_values_out_of_range() {
        let t = |s| generate::temperature(s);
        assert_eq!(t("0"), Ok(0.0));
        assert_eq!(t("0.7"), Ok(0.7));
        for bad in ["nan", "NaN", "inf", "-inf", "infinity"] {
            let e = t(bad).unwrap_err();
            assert!(e.contains("not a finite number"), "{bad}: {e}");
        }
        let e = t("-0.5").unwrap_err();
        assert!(
            e.contains("-0.5 is out of range") && e.contains("0 or more"),
            "{e}"
        );
        assert!(t("warm").unwrap_err().contains("not a number"));
        let p = |s| generate::top_p(s);
        assert_eq!(p("1"), Ok(1.0));
        assert_eq!(p("0.9"), Ok(0.9));
        for bad in ["0", "-0.1", "1.5", "nan", "inf"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_negative_float_is_a_value_not_a_flag() {
        let e = Cli::try_parse_from([
            "lora-train",
            "generate",
            "--model",
            "m",
            "--prompt",
            "hi",
            "--temperature",
            "-0.5",
        ])
        .unwrap_err()
        .render()
        .to_string();
        let line = one_line(&e);
        assert!(line.contains("-0.5 is out of range"), "{line}");
        assert!(!line.contains("unexpected argument"), "{line}");
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let e = Cli::try_parse_from(["lora-train", "generate", "--prompt", "hi"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(line.contains("--model"), "{line}");
        assert!(!line.contains('\n'));
    }
}
