//! `lora-train score`: the masked cross-entropy of a chat dataset (validation loss). A
//! conversation longer than `--max-seq-len` loses tokens from its start, as in training; one
//! whose last assistant turn alone does not fit is refused with its token count.

use std::path::{Path, PathBuf};

use clap::Args;
use lora_train::data::dataset::read_jsonl_numbered;
use lora_train::data::mask::tokenize_line;
use lora_train::data::prepare::{fit_to_length, Fit};
use lora_train::data::{LossOn, TokenizedExample};
use lora_train::eval::{score_examples, DEFAULT_SCORE_BATCH};
use lora_train::model::LoadedModel;
use lora_train::Error;

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

    /// The longest conversation scored, in tokens [default: 2048, or the model's context when
    /// shorter]. A longer one loses tokens from its start, keeping its last assistant turn whole
    /// (as data.max_seq_len in training); one whose last turn alone does not fit is refused with
    /// its count. At most the model's context (max_position_embeddings).
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_seq_len: Option<usize>,

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
    let context = m.model.context_len();
    let max_len = match a.max_seq_len {
        Some(n) if n > context => {
            return Err(Error::TooLarge {
                what: format!("--max-seq-len {n}"),
                limit: format!("the model's context of {context} tokens (max_position_embeddings)"),
            }
            .into())
        }
        Some(n) => n,
        None => DEFAULT_MAX_SEQ_LEN.min(context),
    };
    let examples = tokenize_dataset(&m, &a.data, a.loss_on, max_len)?;
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

/// The default `--max-seq-len`: `data.max_seq_len`'s default.
const DEFAULT_MAX_SEQ_LEN: usize = 2048;

/// Reads and tokenizes a dataset, fitting each conversation into `max_len` tokens; errors name
/// the file and line.
fn tokenize_dataset(
    m: &LoadedModel,
    path: &Path,
    loss_on: LossOn,
    max_len: usize,
) -> anyhow::Result<Vec<TokenizedExample>> {
    let mut truncated = 0;
    let examples = read_jsonl_numbered(path)?
        .iter()
        .map(|(line, c)| {
            let ex = tokenize_line(c, path, *line, &m.template, &m.tokenizer, loss_on)?;
            match fit_to_length(&ex, max_len) {
                Fit::Kept(ex) => Ok(ex),
                Fit::Truncated(ex) => {
                    truncated += 1;
                    Ok(ex)
                }
                Fit::Dropped => Err(Error::Dataset {
                    path: path.to_path_buf(),
                    line: *line,
                    msg: format!(
                        "the conversation has {} tokens and its last assistant turn does not fit \
                         --max-seq-len {max_len}",
                        ex.input_ids.len()
                    ),
                }
                .into()),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if truncated > 0 {
        tracing::warn!(
            "{truncated} conversations are longer than --max-seq-len {max_len}: scored without \
             their first tokens"
        );
    }
    Ok(examples)
}
