//! `lora-train data stats FILE [--model M]`: counts and turns; with a model, token lengths with
//! percentiles, the share cut at `--max-seq-len`, and `--svg` for a length histogram.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use lora_train::data::stats::{file_stats, length_histogram_svg, Summary};
use lora_train::data::validate::TokenCheck;
use lora_train::data::LossOn;
use lora_train::fsutil::{check_new_file, write_atomic};

use super::{chat_format, format_or_auto, AutoFormat};
use crate::cli::loss_on;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The dataset (JSONL, any format of `data convert`).
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,

    /// The file's format, or `auto` to detect it from the first line.
    #[arg(long, default_value = "auto", value_parser = format_or_auto, value_name = "auto|FORMAT")]
    pub format: AutoFormat,

    /// Count tokens with this model's template and tokenizer (a HF folder, a hub id in the
    /// local cache or a .gguf; its weights are not loaded).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,

    /// The sequence length whose truncation share is reported.
    #[arg(long, value_name = "N", default_value_t = 2048, requires = "model")]
    pub max_seq_len: usize,

    #[arg(long, default_value = "last_assistant", value_parser = loss_on(), requires = "model")]
    pub loss_on: LossOn,

    /// Write a histogram of token lengths here (SVG).
    #[arg(long, value_name = "FILE.svg", requires = "model")]
    pub svg: Option<PathBuf>,

    /// Replace the --svg file when it exists.
    #[arg(long)]
    pub force: bool,

    /// Print the statistics as JSON, with every record's token counts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &StatsArgs) -> anyhow::Result<()> {
    if a.max_seq_len == 0 {
        bail!("--max-seq-len must be at least 1");
    }
    if let Some(svg) = &a.svg {
        check_new_file(svg, a.force)?;
    }
    let chat = chat_format(a.model.as_deref())?;
    let tokens = chat.as_ref().map(|(tokenizer, template)| TokenCheck {
        template,
        tokenizer,
        loss_on: a.loss_on,
        max_seq_len: a.max_seq_len,
    });
    let stats = file_stats(&a.file, a.format.0, tokens.as_ref())?;
    if let (Some(svg), Some(t)) = (&a.svg, &stats.tokens) {
        let title = format!("{}: tokens per conversation", a.file.display());
        write_atomic(svg, length_histogram_svg(t, &title).as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    let detected = stats
        .detected_from
        .map(|why| format!(" (detected: {why})"))
        .unwrap_or_default();
    println!(
        "{}: {} records as {}{detected}, {} with a system prompt",
        a.file.display(),
        stats.records,
        stats.format,
        stats.with_system
    );
    println!(
        "{:<20} {:>7} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "", "min", "mean", "p50", "p90", "p95", "p99", "max"
    );
    let row = |name: &str, s: &Summary| {
        println!(
            "{name:<20} {:>7} {:>9.1} {:>7} {:>7} {:>7} {:>7} {:>7}",
            s.min, s.mean, s.p50, s.p90, s.p95, s.p99, s.max
        )
    };
    row("messages", &stats.messages);
    row("assistant turns", &stats.assistant_turns);
    row("reply words", &stats.reply_words);
    if let Some(t) = &stats.tokens {
        row("prompt tokens", &t.prompt);
        row("target tokens", &t.target);
        row("total tokens", &t.total);
        println!(
            "at max_seq_len {} (loss_on = {}): {} fit, {} cut from the left ({:.1}%), {} dropped ({:.1}%)",
            t.max_seq_len,
            t.loss_on,
            t.kept,
            t.truncated,
            100.0 * t.truncated_share,
            t.dropped,
            100.0 * t.dropped_share
        );
    }
    if let Some(svg) = &a.svg {
        println!("wrote {}", svg.display());
    }
    Ok(())
}
