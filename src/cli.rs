//! The `lora-train` command line: argument definitions (clap derive) and the commands.
//!
//! Output shapes of `--json` are fixed because other tools read them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::data::dataset::{parse_messages_json, read_jsonl, read_jsonl_numbered};
use crate::data::mask::{format_inspect, tokenize_conversation, tokenize_line};
use crate::data::{LossOn, Message, Role, TokenizedExample};
use crate::device::{parse_device, parse_dtype};
use crate::eval::{score_examples, DEFAULT_SCORE_BATCH};
use crate::generate::{generate_timed, GenerateOptions};
use crate::lora::load_peft_adapter;
use crate::model::{load, LoadOptions, LoadedModel};

/// Fine-tune Llama and Gemma chat models with LoRA and QLoRA, natively in Rust.
///
/// Train:    lora-train --config job.toml [--set train.lr=1e-4] [--resume]
/// Use:      lora-train generate --model M --adapter runs/x/adapter --prompt "Hi"
#[derive(Debug, Parser)]
#[command(name = "lora-train", version, about, long_about = None, args_conflicts_with_subcommands = true)]
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

    /// Stop after this many steps of this invocation, saving a checkpoint (as Ctrl-C does).
    #[arg(long, requires = "config", hide = true)]
    pub stop_after: Option<usize>,

    /// Skip the before/after behaviour report at the end of training.
    #[arg(long, requires = "config")]
    pub no_report: bool,

    /// Log more (repeat for debug output); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a reply from a prompt or a conversation.
    Generate(GenerateArgs),
    /// Masked cross-entropy of a chat dataset (validation loss).
    Score(ScoreArgs),
    /// Show how a conversation is rendered and tokenized, and which tokens are targets.
    Inspect(InspectArgs),
    /// Export a checkpoint's adapter (PEFT format), or merge it into full HF weights.
    Export(ExportArgs),
    /// Hosted fine-tuning jobs (Together, OpenAI): submit, status, watch, cancel, list, download.
    #[command(subcommand)]
    Hosted(crate::providers::cli::HostedCommand),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint folder (or any PEFT adapter folder).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,

    /// Where to write the adapter (or the merged model).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Write full HF safetensors of base + scale·BA instead of the adapter.
    #[arg(long)]
    pub merge: bool,

    /// Tensor dtype of the output: bf16, f16 or f32.
    #[arg(long, default_value = "f32")]
    pub dtype: String,

    /// The base model, when it is not where the adapter's base_model_name_or_path says.
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
}

/// Which model to load, and how.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face folder, a hub id in the local cache (org/name), or a .gguf file.
    #[arg(long, value_name = "M")]
    pub model: String,

    /// A PEFT LoRA adapter folder to apply.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// Compute dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,

    /// Device: auto, cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// A user message; it is rendered through the chat template.
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    pub prompt: Option<String>,

    /// A JSON file with a list of messages, or {"messages": [...]}.
    #[arg(long, value_name = "FILE.json")]
    pub messages: Option<PathBuf>,

    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,

    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,

    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,

    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Print {"text", "token_ids", "prompt_tokens", "tokens_per_second"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// An OpenAI `messages` JSONL file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,

    /// Which tokens count: the last assistant turn, every assistant turn, or all tokens.
    #[arg(long, value_enum, default_value_t = LossOn::LastAssistant)]
    pub loss_on: LossOn,

    /// Examples per forward pass (right-padded, longest first; the losses do not depend on it).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SCORE_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,

    /// Print {"mean_loss", "target_tokens", "examples", "per_example"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Hugging Face folder, a hub id in the local cache, or a .gguf file.
    #[arg(long, value_name = "M")]
    pub model: String,

    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,

    /// Which conversation (0-based).
    #[arg(long, default_value_t = 0)]
    pub index: usize,

    #[arg(long, value_enum, default_value_t = LossOn::LastAssistant)]
    pub loss_on: LossOn,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Generate(a)) => cmd_generate(a),
        Some(Command::Score(a)) => cmd_score(a),
        Some(Command::Inspect(a)) => cmd_inspect(a),
        Some(Command::Export(a)) => crate::export::cmd::run_export(&a),
        Some(Command::Hosted(c)) => crate::providers::cli::run(c),
        None => match &cli.config {
            Some(path) => cmd_train(path, &cli),
            None => bail!("nothing to do: give --config job.toml, or a command (see --help)"),
        },
    }
}

fn cmd_train(path: &std::path::Path, cli: &Cli) -> anyhow::Result<()> {
    let job = crate::config::JobConfig::load(path, &cli.set)?;
    if job.hosted.is_some() {
        // A `[hosted]` job trains on the provider's cluster instead of here.
        return crate::providers::cli::submit_job_file(path, &cli.set, false);
    }
    job.check_files()?;
    let mut trainer = crate::train::Trainer::new(job)?;
    let malloc = crate::alloc::host_training(trainer.device());
    tracing::debug!("host allocator for training: {malloc:?}");
    eprintln!(
        "training {} on {} examples ({} validation): {} steps, {} LoRA parameters",
        trainer.model().name_or_path,
        trainer.train().len(),
        trainer.validation().len(),
        trainer.plan().total_steps,
        trainer.params().num_parameters()
    );
    let stop = crate::train::install_ctrlc();
    let opts = crate::train::RunOptions {
        resume: cli.resume,
        progress: true,
        stop_after: cli.stop_after,
    };
    let summary = trainer.run(&opts, stop)?;
    print_summary(&summary);
    if !summary.interrupted && !cli.no_report {
        if let Some(report) = crate::train::report::behaviour_report(&mut trainer, &summary)? {
            println!("{}", report.render());
        }
    }
    if summary.interrupted {
        eprintln!(
            "stopped at step {}/{}; continue with: lora-train --config {} --resume",
            summary.steps,
            summary.total_steps,
            path.display()
        );
    }
    Ok(())
}

fn print_summary(s: &crate::train::TrainSummary) {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    println!("== training summary ==");
    println!(
        "steps {}/{}  tokens {}  time {:.1}s  ({:.0} tokens/s)",
        s.steps,
        s.total_steps,
        s.tokens,
        s.elapsed_s,
        s.tokens as f64 / s.elapsed_s.max(1e-9)
    );
    println!(
        "examples: {} train, {} validation; {} truncated, {} dropped (max_seq_len)",
        s.train_examples, s.validation_examples, s.fit.truncated, s.fit.dropped
    );
    println!(
        "train loss: first {}  last {}",
        f(s.first_loss),
        f(s.last_loss)
    );
    println!(
        "validation loss: before {}  after {}",
        f(s.val_loss_before),
        f(s.val_loss_after)
    );
    if let Some(m) = s.peak_gpu_memory_mib {
        println!("peak GPU memory (memory pool): {m} MiB");
    }
    if let Some(a) = &s.adapter_dir {
        println!("adapter: {}", a.display());
    }
    println!(
        "metrics: {}  plot: {}",
        s.output_dir.join("metrics.jsonl").display(),
        s.output_dir.join("loss.svg").display()
    );
}

fn load_model(args: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let opts = LoadOptions {
        dtype: parse_dtype(&args.dtype)?,
        device: parse_device(&args.device)?,
        ..Default::default()
    };
    let mut m = load(&args.model, &opts)?;
    if let Some(dir) = &args.adapter {
        let n = load_peft_adapter(m.model.as_mut(), dir, opts.dtype, &opts.device)?;
        tracing::info!("adapter {}: {n} layers adapted", dir.display());
    }
    Ok(m)
}

/// The ids that end a generated turn: eos ids and the template's end-of-turn token.
pub fn stop_ids(m: &LoadedModel) -> Vec<u32> {
    let mut ids = m.tokenizer.eos_token_ids.clone();
    if let Some(eot) = m.template.end_of_turn_token() {
        if let Some(id) = m.tokenizer.token_to_id(&eot) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn cmd_generate(a: GenerateArgs) -> anyhow::Result<()> {
    let messages = match (&a.prompt, &a.messages) {
        (Some(p), _) => vec![Message::new(Role::User, p.clone())],
        (None, Some(f)) => parse_messages_json(f)?,
        (None, None) => bail!("give --prompt or --messages"),
    };
    if !(0.0..=1.0).contains(&a.top_p) || a.top_p == 0.0 {
        bail!("--top-p must be in (0, 1]");
    }
    if a.temperature < 0.0 {
        bail!("--temperature must be >= 0");
    }
    let m = load_model(&a.model)?;
    let prompt = m.template.render(&messages, true)?;
    let prompt_ids = m.tokenizer.encode(&prompt, false)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: stop_ids(&m),
    };
    // Stream text as it decodes: print the growing decode's new suffix.
    let mut shown = String::new();
    let mut sofar: Vec<u32> = Vec::new();
    let stream = !a.json;
    let mut stdout = std::io::stdout();
    let mut gen = generate_timed(m.model.as_ref(), &prompt_ids, &opts, |id| {
        if !stream {
            return;
        }
        sofar.push(id);
        if let Ok(text) = m.tokenizer.decode(&sofar, true) {
            if text.len() > shown.len() && text.starts_with(&shown) && !text.ends_with('\u{fffd}') {
                let _ = write!(stdout, "{}", &text[shown.len()..]);
                let _ = stdout.flush();
                shown = text;
            }
        }
    })?;
    gen.text = m.tokenizer.decode(&gen.token_ids, true)?;
    if a.json {
        println!("{}", serde_json::to_string(&gen)?);
    } else {
        if gen.text.len() > shown.len() && gen.text.starts_with(&shown) {
            print!("{}", &gen.text[shown.len()..]);
        }
        println!();
        tracing::info!(
            "{} prompt tokens, {} new tokens, {:.1} tokens/s",
            gen.prompt_tokens,
            gen.token_ids.len(),
            gen.tokens_per_second
        );
    }
    Ok(())
}

/// Reads and tokenizes a dataset; errors name the file and line.
pub fn tokenize_dataset(
    m: &LoadedModel,
    path: &std::path::Path,
    loss_on: LossOn,
) -> anyhow::Result<Vec<TokenizedExample>> {
    read_jsonl_numbered(path)?
        .iter()
        .map(|(line, c)| {
            Ok(tokenize_line(
                c,
                path,
                *line,
                &m.template,
                &m.tokenizer,
                loss_on,
            )?)
        })
        .collect()
}

fn cmd_score(a: ScoreArgs) -> anyhow::Result<()> {
    let m = load_model(&a.model)?;
    let examples = tokenize_dataset(&m, &a.data, a.loss_on)?;
    let report = score_examples(m.model.as_ref(), &examples, a.batch_size, !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "mean_loss {:.6}  perplexity {:.3}  target_tokens {}  examples {}",
            report.mean_loss,
            report.perplexity(),
            report.target_tokens,
            report.examples
        );
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> anyhow::Result<()> {
    let opts = LoadOptions::default();
    let m = load(&a.model, &opts)?;
    let convs = read_jsonl(&a.data)?;
    let Some(conv) = convs.get(a.index) else {
        bail!(
            "{}: --index {} is out of range ({} conversations)",
            a.data.display(),
            a.index,
            convs.len()
        );
    };
    let ex = tokenize_conversation(conv, &m.template, &m.tokenizer, a.loss_on)?;
    print!("{}", format_inspect(&ex, &m.tokenizer)?);
    Ok(())
}
