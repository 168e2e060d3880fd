//! `lora-train data convert IN -o OUT --to FORMAT`: one format to another through the format
//! table; says which format it detected and counts what a lossy target dropped.

use std::path::PathBuf;

use clap::Args;
use lora_train::data::formats::{convert_file, Format};
use lora_train::fsutil::{check_new_file, write_atomic};

use super::{format_name, format_or_auto, AutoFormat};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The dataset to read (JSONL).
    #[arg(value_name = "IN.jsonl")]
    pub input: PathBuf,

    /// Where to write the converted dataset.
    #[arg(short = 'o', long, value_name = "OUT.jsonl")]
    pub out: PathBuf,

    /// The input's format, or `auto` to detect it from the first line.
    #[arg(long, default_value = "auto", value_parser = format_or_auto, value_name = "auto|FORMAT")]
    pub from: AutoFormat,

    /// The format to write.
    #[arg(long, value_parser = format_name, value_name = "FORMAT")]
    pub to: Format,

    /// Replace OUT when it exists.
    #[arg(long)]
    pub force: bool,

    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &ConvertArgs) -> anyhow::Result<()> {
    check_new_file(&a.out, a.force)?;
    let converted = convert_file(&a.input, a.from.0, a.to)?;
    if let Some(why) = converted.detected_from {
        eprintln!("detected {} ({why} on the first line)", converted.from);
    }
    for (what, n) in &converted.losses.0 {
        eprintln!(
            "warning: lossy conversion to {}: dropped {what} in {n} of {} records",
            converted.to, converted.records
        );
    }
    write_atomic(&a.out, converted.text.as_bytes())?;
    crate::cli::record::datasets([a.out.as_path()], &crate::cli::record::command_line());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&converted)?);
    } else {
        println!(
            "wrote {} records to {} ({} -> {})",
            converted.records,
            a.out.display(),
            converted.from,
            converted.to
        );
    }
    Ok(())
}
