//! `lora-train generate`: a reply to a prompt or a conversation, streamed as it decodes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use lora_train::data::dataset::parse_messages_json;
use lora_train::data::{Message, Role};
use lora_train::generate::{generate_timed, stop_ids, GenerateOptions};

use super::{load_model, ModelArgs};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// A user message; it is rendered through the chat template.
    #[arg(
        long,
        conflicts_with = "messages",
        required_unless_present = "messages"
    )]
    pub prompt: Option<String>,

    /// A JSON file with a list of messages, or {"messages": [...]}.
    #[arg(long, value_name = "FILE.json")]
    pub messages: Option<PathBuf>,

    /// At most this many new tokens, and at most the model's context
    /// (max_position_embeddings) less the prompt. A prompt longer than the context is refused
    /// with its token count, never cut.
    #[arg(long, value_name = "N", default_value_t = 256, allow_hyphen_values = true,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_new_tokens: usize,

    /// Sampling temperature, 0 or more; 0 is greedy.
    #[arg(long, value_name = "T", default_value_t = 0.0, allow_negative_numbers = true,
          value_parser = temperature)]
    pub temperature: f64,

    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P, in (0, 1].
    #[arg(long, value_name = "P", default_value_t = 1.0, allow_negative_numbers = true,
          value_parser = top_p)]
    pub top_p: f64,

    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Print {"text", "token_ids", "prompt_tokens", "tokens_per_second"}.
    #[arg(long)]
    pub json: bool,
}

/// `--temperature`: a finite number, 0 or more.
pub(super) fn temperature(s: &str) -> Result<f64, String> {
    super::parse_float(s, 0.0, false, f64::MAX, "expected 0 or more (0 is greedy)")
}

/// `--top-p`: a finite number in (0, 1].
pub(super) fn top_p(s: &str) -> Result<f64, String> {
    super::parse_float(s, 0.0, true, 1.0, "expected a number in (0, 1]")
}

/// Runs the command.
pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let messages = match (&a.prompt, &a.messages) {
        (Some(p), _) => vec![Message::new(Role::User, p.clone())],
        (None, Some(f)) => parse_messages_json(f)?,
        (None, None) => bail!("give --prompt or --messages"),
    };
    let m = load_model(&a.model)?;
    let prompt = m.template.render(&messages, true)?;
    let prompt_ids = m.tokenizer.encode(&prompt, false)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: stop_ids(&m),
    };
    // Stream text as it decodes: print the growing decode's new suffix.
    let mut shown = String::new();
    let mut sofar: Vec<u32> = Vec::new();
    let stream = !a.json;
    let mut stdout = std::io::stdout();
    let mut gen = generate_timed(m.model.as_ref(), &prompt_ids, &opts, |id| {
        if !stream {
            return;
        }
        sofar.push(id);
        if let Ok(text) = m.tokenizer.decode(&sofar, true) {
            if text.len() > shown.len() && text.starts_with(&shown) && !text.ends_with('\u{fffd}') {
                let _ = write!(stdout, "{}", &text[shown.len()..]);
                let _ = stdout.flush();
                shown = text;
            }
        }
    })?;
    gen.text = m.tokenizer.decode(&gen.token_ids, true)?;
    if a.json {
        println!("{}", serde_json::to_string(&gen)?);
    } else {
        if gen.text.len() > shown.len() && gen.text.starts_with(&shown) {
            print!("{}", &gen.text[shown.len()..]);
        }
        println!();
        tracing::info!(
            "{} prompt tokens, {} new tokens, {:.1} tokens/s",
            gen.prompt_tokens,
            gen.token_ids.len(),
            gen.tokens_per_second
        );
    }
    Ok(())
}
