//! `lora-train score`: the masked cross-entropy of a chat dataset (validation loss).

use std::path::{Path, PathBuf};

use clap::Args;
use lora_train::data::dataset::read_jsonl_numbered;
use lora_train::data::mask::tokenize_line;
use lora_train::data::{LossOn, TokenizedExample};
use lora_train::eval::{score_examples, DEFAULT_SCORE_BATCH};
use lora_train::model::LoadedModel;

use super::{load_model, loss_on, ModelArgs};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// An OpenAI `messages` JSONL file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,

    /// Which tokens count: the last assistant turn, every assistant turn, or all tokens.
    #[arg(long, default_value = "last_assistant", value_parser = loss_on())]
    pub loss_on: LossOn,

    /// Examples per forward pass (right-padded, longest first; the losses do not depend on it).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SCORE_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,

    /// Print {"mean_loss", "target_tokens", "examples", "per_example"}.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
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

/// Reads and tokenizes a dataset; errors name the file and line.
fn tokenize_dataset(
    m: &LoadedModel,
    path: &Path,
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
