//! `lora-train inspect`: how a conversation is rendered and tokenized, and which tokens are
//! targets.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use lora_train::data::dataset::read_jsonl;
use lora_train::data::mask::{format_inspect, tokenize_conversation};
use lora_train::data::LossOn;
use lora_train::model::{load, LoadOptions};

use super::loss_on;

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

    #[arg(long, default_value = "last_assistant", value_parser = loss_on())]
    pub loss_on: LossOn,
}

/// Runs the command.
pub fn run(a: InspectArgs) -> anyhow::Result<()> {
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
