//! `lora-train data stats FILE [--model M]`: counts and turns; with a model, token lengths with
//! percentiles, the share cut at `--max-seq-len`, and `--svg` for a length histogram.

use std::path::PathBuf;

use clap::Args;
use lora_train::data::stats::{file_stats, length_histogram_svg, Summary};
use lora_train::fsutil::{check_new_file, write_atomic};

use super::{format_or_auto, AutoFormat, TokenArgs};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The dataset (JSONL, any format of `data convert`).
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,

    /// The file's format, or `auto` to detect it from the first line.
    #[arg(long, default_value = "auto", value_parser = format_or_auto, value_name = "auto|FORMAT")]
    pub format: AutoFormat,

    #[command(flatten)]
    pub tokens: TokenArgs,

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
    if let Some(svg) = &a.svg {
        check_new_file(svg, a.force)?;
    }
    let chat = a.tokens.load()?;
    let tokens = a.tokens.check(&chat);
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
