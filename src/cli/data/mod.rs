//! `lora-train data ...`: dataset tools, one file per subcommand. `convert`, `validate`,
//! `stats` and `split` work offline on a file (a model only for token counts); the library side
//! is `lora_train::data::{formats, validate, stats, split}`. `synth` and `process` call chat
//! providers (`lora_train::synth`).

mod convert;
mod process;
mod split;
mod stats;
mod synth;
mod validate;

use clap::Subcommand;
use lora_train::data::formats::Format;
use lora_train::data::validate::TokenCheck;
use lora_train::data::{ChatTemplate, ChatTokenizer, LossOn};

#[derive(Debug, Subcommand)]
#[command(
    after_help = "Formats: openai, sharegpt, alpaca, chatml, sft, dpo-trl, dpo-seed, dpo-openai, \
gauntlet (see docs/data.md). Every command reads any of them, detecting the format from the first \
line unless told."
)]
pub enum DataCommand {
    /// Convert a dataset from one format to another, counting what a lossy target drops.
    Convert(convert::ConvertArgs),
    /// Check every line (roles, order, empty content, weights, fit, provider rules); exit 1 on errors.
    Validate(validate::ValidateArgs),
    /// Counts, turns and token lengths with percentiles; a length histogram as SVG.
    Stats(stats::StatsArgs),
    /// Split a file into FILE.train.jsonl and FILE.valid.jsonl as training's data.validation does.
    Split(split::SplitArgs),
    /// Generate training conversations through staged prompts and provider fallback chains.
    Synth(synth::SynthArgs),
    /// Improve each conversation's last reply (feedback or alternative) into SFT and DPO data.
    Process(process::ProcessArgs),
}

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Convert(a) => convert::run(&a),
        DataCommand::Validate(a) => validate::run(&a),
        DataCommand::Stats(a) => stats::run(&a),
        DataCommand::Split(a) => split::run(&a),
        DataCommand::Synth(a) => synth::run(&a),
        DataCommand::Process(a) => process::run(&a),
    }
}

/// `--from`/`--format`: a format, or `None` for `auto` (detect it from the first line).
#[derive(Debug, Clone, Copy)]
pub struct AutoFormat(pub Option<Format>);

fn format_or_auto(s: &str) -> Result<AutoFormat, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(AutoFormat(None));
    }
    s.parse().map(|f| AutoFormat(Some(f)))
}

/// `--to`: a format name.
fn format_name(s: &str) -> Result<Format, String> {
    s.parse()
}

/// `--model`, `--max-seq-len` and `--loss-on`: how `validate` and `stats` count tokens.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Render and tokenize every conversation with this model's template and tokenizer (a HF
    /// folder, a Hub repo org/name[@revision] or a .gguf; its weights are not loaded).
    #[arg(long, value_name = "M")]
    pub model: Option<String>,

    /// With --model: the sequence length conversations are fitted to, as training fits them.
    #[arg(long, value_name = "N", default_value_t = 2048, requires = "model")]
    pub max_seq_len: usize,

    #[arg(long, default_value = "last_assistant", value_parser = crate::cli::loss_on(), requires = "model")]
    pub loss_on: LossOn,
}

/// The model's tokenizer and template, when `--model` is given.
pub struct ChatFormat(Option<(ChatTokenizer, ChatTemplate)>);

impl TokenArgs {
    pub fn load(&self) -> anyhow::Result<ChatFormat> {
        if self.max_seq_len == 0 {
            anyhow::bail!("--max-seq-len must be at least 1");
        }
        Ok(ChatFormat(match &self.model {
            None => None,
            Some(m) => Some(lora_train::model::load_chat_format(m)?),
        }))
    }

    /// The check the library takes, borrowing `chat`.
    pub fn check<'a>(&self, chat: &'a ChatFormat) -> Option<TokenCheck<'a>> {
        chat.0.as_ref().map(|(tokenizer, template)| TokenCheck {
            template,
            tokenizer,
            loss_on: self.loss_on,
            max_seq_len: self.max_seq_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn every_data_command_parses() {
        for args in [
            &[
                "data",
                "convert",
                "in.jsonl",
                "-o",
                "out.jsonl",
                "--to",
                "sharegpt",
            ][..],
            &[
                "data", "convert", "in.jsonl", "-o", "o", "--from", "alpaca", "--to", "openai",
            ],
            &[
                "data",
                "validate",
                "f.jsonl",
                "--format",
                "auto",
                "--provider",
                "together",
            ],
            &[
                "data",
                "validate",
                "f.jsonl",
                "--model",
                "m",
                "--max-seq-len",
                "64",
            ],
            &[
                "data", "stats", "f.jsonl", "--model", "m", "--svg", "h.svg", "--json",
            ],
            &[
                "data", "split", "f.jsonl", "--valid", "0.1", "--seed", "3", "-o", "d",
            ],
            &[
                "data",
                "synth",
                "--config",
                "s.toml",
                "--system-prompt",
                "@p.txt",
                "--examples",
                "3",
            ],
            &[
                "data", "process", "--method", "both", "--input", "c.jsonl", "-o", "o.jsonl", "-n",
                "2",
            ],
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("lora-train").chain(args.iter().copied()))
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(matches!(cli.command, Some(Command::Data(_))));
        }
        for bad in [
            &["data", "convert", "in", "-o", "o", "--to", "dpo"][..],
            &["data", "split", "f", "--valid", "1"],
            &["data", "split", "f", "--valid", "0"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("lora-train").chain(bad.iter().copied()))
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}
