//! `lora-train data validate FILE`: every problem of a dataset, one line each naming the file,
//! line and field; with `--model`, the fit into `--max-seq-len`; with `--provider`, that
//! provider's upload rules (the hosted validator). Exits non-zero when there is an error.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use lora_train::data::formats::Kind;
use lora_train::data::validate::{validate_file, Problem, Severity};
use lora_train::providers::hosted::{check_dataset, DatasetKind};

use super::{format_or_auto, AutoFormat, TokenArgs};
use crate::cli::hosted::ProviderArg;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The dataset (JSONL, any format of `data convert`).
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,

    /// The file's format, or `auto` to detect it from the first line.
    #[arg(long, default_value = "auto", value_parser = format_or_auto, value_name = "auto|FORMAT")]
    pub format: AutoFormat,

    #[command(flatten)]
    pub tokens: TokenArgs,

    /// Also check the upload rules of this hosted fine-tuning provider.
    #[arg(long, value_enum)]
    pub provider: Option<ProviderArg>,

    /// Print the report as JSON (the exit code still says whether there were errors).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &ValidateArgs) -> anyhow::Result<()> {
    let chat = a.tokens.load()?;
    let tokens = a.tokens.check(&chat);
    let mut report = validate_file(&a.file, a.format.0, tokens.as_ref())?;
    if let Some(provider) = a.provider {
        let provider = lora_train::providers::HostedProvider::from(provider);
        let kind = match report.format.kind() {
            Kind::Chat => DatasetKind::Conversations,
            Kind::Preference => DatasetKind::Pairs,
        };
        let checked = check_dataset(provider, &a.file, kind)?;
        report.extend(checked.failures.into_iter().map(|f| Problem {
            line: f.line,
            severity: Severity::Error,
            field: None,
            message: format!("[{provider}] {}", f.message),
        }));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!("{}", p.display(&a.file));
        }
        let detected = report
            .detected_from
            .map(|why| format!(" (detected: {why})"))
            .unwrap_or_default();
        let fit = report
            .fit
            .as_ref()
            .map(|f| {
                format!(
                    "; at max_seq_len {}: {} fit, {} cut, {} dropped",
                    a.tokens.max_seq_len, f.kept, f.truncated, f.dropped
                )
            })
            .unwrap_or_default();
        println!(
            "{}: {} records as {}{detected}: {} errors, {} warnings{fit}",
            a.file.display(),
            report.records,
            report.format,
            report.errors,
            report.warnings
        );
    }
    if !report.is_ok() {
        bail!(
            "{}: {} {} (see above)",
            a.file.display(),
            report.errors,
            if report.errors == 1 {
                "error"
            } else {
                "errors"
            }
        );
    }
    Ok(())
}
