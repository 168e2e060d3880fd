//! `lora-train inspect`: how a conversation is rendered and tokenized, and which tokens are
//! targets; with `--packing`, how a file's conversations pack into rows.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use lora_train::data::dataset::{read_jsonl, read_jsonl_numbered};
use lora_train::data::mask::{format_inspect, tokenize_conversation, tokenize_line};
use lora_train::data::pack::{first_fit_decreasing, format_rows};
use lora_train::data::prepare::{fit_to_length, Fit};
use lora_train::data::LossOn;
use lora_train::model::{load, LoadOptions, LoadedModel};

use super::loss_on;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Hugging Face folder, a Hub repo (org/name[@revision]), or a .gguf file.
    #[arg(long, value_name = "M")]
    pub model: String,

    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,

    /// Which conversation (0-based).
    #[arg(long, default_value_t = 0)]
    pub index: usize,

    #[arg(long, default_value = "last_assistant", value_parser = loss_on())]
    pub loss_on: LossOn,

    /// Show how every conversation of the file packs into rows (as `data.packing = true`
    /// packs the training split): each row's conversations, where each starts, its targets.
    #[arg(long, requires = "max_seq_len")]
    pub packing: bool,

    /// Tokens per packed row (`data.max_seq_len`); longer conversations are fitted as in training.
    #[arg(long, value_name = "N", requires = "packing")]
    pub max_seq_len: Option<usize>,

    /// The packing seed (`train.seed`), which orders conversations of equal length.
    #[arg(long, value_name = "S", default_value_t = 42, requires = "packing")]
    pub seed: u64,
}

/// Runs the command.
pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let opts = LoadOptions::default();
    let m = load(&a.model, &opts)?;
    if let (true, Some(max_seq_len)) = (a.packing, a.max_seq_len) {
        return inspect_packing(&a, &m, max_seq_len);
    }
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

/// Tokenizes and fits every conversation as training does, packs them and prints the rows.
fn inspect_packing(a: &InspectArgs, m: &LoadedModel, max_seq_len: usize) -> anyhow::Result<()> {
    if max_seq_len == 0 {
        bail!("--max-seq-len must be at least 1");
    }
    let convs = read_jsonl_numbered(&a.data)?;
    // Kept conversations and their lines, fitted as `data::prepare` fits them.
    let (mut examples, mut lines) = (Vec::new(), Vec::new());
    let (mut truncated, mut dropped) = (0, 0);
    for (line, c) in &convs {
        let ex = tokenize_line(c, &a.data, *line, &m.template, &m.tokenizer, a.loss_on)?;
        let ex = match fit_to_length(&ex, max_seq_len) {
            Fit::Kept(ex) => ex,
            Fit::Truncated(ex) => {
                truncated += 1;
                ex
            }
            Fit::Dropped => {
                dropped += 1;
                continue;
            }
        };
        examples.push(ex);
        lines.push(*line);
    }
    if examples.is_empty() {
        bail!(
            "{}: no conversation fits --max-seq-len {max_seq_len} ({dropped} dropped)",
            a.data.display()
        );
    }
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let rows = first_fit_decreasing(&lengths, max_seq_len, a.seed)?;
    print!("{}", format_rows(&rows, &examples, &lines, max_seq_len));
    if truncated + dropped > 0 {
        println!(
            "({truncated} conversations truncated from the left, {dropped} dropped: longer than \
             {max_seq_len} tokens)"
        );
    }
    Ok(())
}
