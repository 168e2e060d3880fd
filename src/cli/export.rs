//! `lora-train export`: a checkpoint's adapter in PEFT format, or merged full weights.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lora_train::config::DtypeName;
use lora_train::export::merge::{copy_adapter, merge_to_hf};
use lora_train::lora::PeftAdapterConfig;

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
    pub dtype: DtypeName,

    /// Replace what is at --out even when it is not an output of this command (a folder of
    /// other files, a checkpoint, a run folder, a file).
    #[arg(long)]
    pub force: bool,

    /// The base model, when it is not where the adapter's base_model_name_or_path says.
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
}

/// Runs the export command.
pub fn run(a: &ExportArgs) -> anyhow::Result<()> {
    let dtype = a.dtype.dtype();
    let cfg_path = a.checkpoint.join("adapter_config.json");
    let cfg = PeftAdapterConfig::from_file(&cfg_path)?;
    if a.merge {
        let base = a
            .model
            .clone()
            .or_else(|| cfg.base_model())
            .with_context(|| {
                format!(
                    "{}: no base_model_name_or_path; give --model",
                    cfg_path.display()
                )
            })?;
        merge_to_hf(&base, &a.checkpoint, &a.out, dtype, a.force)?;
        println!("merged model written to {}", a.out.display());
    } else {
        copy_adapter(&a.checkpoint, &a.out, dtype, a.force)?;
        println!("adapter written to {}", a.out.display());
    }
    Ok(())
}
