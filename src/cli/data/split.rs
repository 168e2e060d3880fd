//! `lora-train data split FILE --valid F --seed S [-o DIR]`: FILE.train.jsonl and
//! FILE.valid.jsonl, with training's own seeded choice, conversations kept whole.

use std::path::PathBuf;

use clap::Args;
use lora_train::data::split::split_file;

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The dataset (JSONL, any format).
    #[arg(value_name = "FILE.jsonl")]
    pub file: PathBuf,

    /// The fraction held out for validation (at least one line).
    #[arg(long, value_name = "F", value_parser = valid_fraction)]
    pub valid: f64,

    /// The split seed: the job's `train.seed` gives the split `data.validation = F` makes.
    #[arg(long, value_name = "S", default_value_t = 42)]
    pub seed: u64,

    /// Write the two files here instead of beside FILE.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Replace the output files when they exist.
    #[arg(long)]
    pub force: bool,

    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

fn valid_fraction(s: &str) -> Result<f64, String> {
    super::super::parse_float(s, 0.0, true, 1.0, "give a fraction above 0 and below 1").and_then(
        |v| {
            if v >= 1.0 {
                Err(format!(
                    "{s} is out of range; give a fraction above 0 and below 1"
                ))
            } else {
                Ok(v)
            }
        },
    )
}

pub fn run(a: &SplitArgs) -> anyhow::Result<()> {
    let r = split_file(&a.file, a.valid, a.seed, a.out.as_deref(), a.force)?;
    crate::cli::record::datasets(
        [r.train.as_path(), r.valid.as_path()],
        &crate::cli::record::command_line(),
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let groups = r
        .conversations
        .map(|n| format!(", {n} conversations kept whole"))
        .unwrap_or_default();
    println!(
        "wrote {} ({} lines) and {} ({} lines){groups}",
        r.train.display(),
        r.train_lines,
        r.valid.display(),
        r.valid_lines
    );
    Ok(())
}
