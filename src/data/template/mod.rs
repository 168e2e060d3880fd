//! Chat templates, rendered with minijinja as transformers' `apply_chat_template` does
//! (`utils/chat_template_utils.py`, `render_jinja_template`): a sandbox with `trim_blocks`,
//! `lstrip_blocks` and Jinja's trailing-newline rule, loop controls, `tojson` as Python's
//! `json.dumps(ensure_ascii=False)`, `raise_exception`, `strftime_now` and Python's string and dict
//! methods (`minijinja_contrib::pycompat`). Templates see `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, and `tools` and `documents` as none; an assistant message with
//! reasoning also has `reasoning_content` (Qwen3's template renders it in a `<think>` block).

use std::fmt;

use minijinja::{Environment, Value};
use serde::Serialize;

use crate::data::dataset::Message;
use crate::data::tokenizer::ChatTokenizer;
use crate::{Error, Result};

mod python;

pub use python::{civil_from_days, utc_now};
use python::{python_formatter, raise_exception, strftime_now, tojson, Raised};

const TEMPLATE_NAME: &str = "chat_template";

/// The official Gemma 3 instruct template (`google/gemma-3-*-it`, `tokenizer_config.json`).
const GEMMA_TEMPLATE: &str = include_str!("../templates/gemma.jinja");

/// The Llama 3 instruct template (`meta-llama/Meta-Llama-3-8B-Instruct`).
const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}\
{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// The ChatML template (as in Qwen and SmolLM tokenizers, without a default system prompt).
const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// End-of-turn markers, in the order they are looked for in a template's source.
const END_OF_TURN_TOKENS: [&str; 3] = ["<|eot_id|>", "<end_of_turn>", "<|im_end|>"];

/// A compiled chat template with the special tokens it is rendered with.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// What a template sees of a message: `role` and `content`, as in an OpenAI request, and
/// `reasoning_content` only where the message has it (templates test `is string`/`is defined`).
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

impl ChatTemplate {
    /// Compiles a Jinja chat template. Syntax errors name the template line.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_formatter(python_formatter);
        // minijinja can panic on what it should refuse (`''[::-1]` in 2.24): see `render`.
        crate::error::catch_panic(|| env.add_template_owned(TEMPLATE_NAME, source.to_string()))
            .map_err(engine_panic)?
            .map_err(|e| template_error(&e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token,
            eos_token,
        })
    }

    /// A built-in template by name: `gemma`, `llama3` or `chatml`.
    pub fn builtin(
        name: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let source = match name {
            "gemma" => GEMMA_TEMPLATE,
            "llama3" => LLAMA3_TEMPLATE,
            "chatml" => CHATML_TEMPLATE,
            other => {
                return Err(Error::Template(format!(
                    "no built-in template named `{other}` (built-in: gemma, llama3, chatml)"
                )))
            }
        };
        Self::new(source, bos_token, eos_token)
    }

    /// The model's own template if its tokenizer has one, otherwise the built-in template
    /// for `arch` (see [`builtin_template_name`]).
    pub fn for_model(arch: &str, tokenizer: &ChatTokenizer) -> Result<Self> {
        let bos = tokenizer.bos_token.clone();
        let eos = tokenizer.eos_token.clone();
        match &tokenizer.chat_template {
            Some(source) => Self::new(source, bos, eos),
            None => {
                let name = builtin_template_name(arch, tokenizer)?;
                let bos_note = match &bos {
                    Some(_) => String::new(),
                    None => ", and with no bos_token the rendering may lack <bos>".to_string(),
                };
                tracing::warn!(
                    "the model has no chat template (tokenizer_config.json missing or without \
                     one); assuming the built-in `{name}` template{bos_note}"
                );
                Self::builtin(name, bos, eos)
            }
        }
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `bos_token` the template is rendered with.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The `eos_token` the template is rendered with.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders a conversation. With `add_generation_prompt` the text ends with the header of
    /// an assistant turn, ready for generation.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&e))?;
        let messages: Vec<TemplateMessage<'_>> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: m.role.as_str(),
                content: &m.content,
                reasoning_content: m.reasoning_content.as_deref(),
            })
            .collect();
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(&messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        // transformers passes only the special tokens that are set; an unset one is undefined.
        if let Some(bos) = &self.bos_token {
            ctx.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            ctx.push(("eos_token", Value::from(eos.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        crate::error::catch_panic(|| template.render(ctx))
            .map_err(engine_panic)?
            .map_err(|e| template_error(&e))
    }

    /// The token that closes a turn in this template (`<|eot_id|>`, `<end_of_turn>`,
    /// `<|im_end|>`), if the source uses one.
    pub fn end_of_turn_token(&self) -> Option<String> {
        END_OF_TURN_TOKENS
            .iter()
            .find(|t| self.source.contains(*t))
            .map(|t| t.to_string())
    }
}

/// Chooses the built-in template for a model without one: `gemma` for Gemma architectures;
/// for Llama, `llama3` if the vocabulary has `<|start_header_id|>`, `chatml` if it has
/// `<|im_start|>`.
pub fn builtin_template_name(arch: &str, tokenizer: &ChatTokenizer) -> Result<&'static str> {
    let arch_lower = arch.to_ascii_lowercase();
    if arch_lower.starts_with("gemma") {
        return Ok("gemma");
    }
    if arch_lower.starts_with("qwen") && tokenizer.token_to_id("<|im_start|>").is_some() {
        return Ok("chatml");
    }
    if arch_lower.starts_with("llama") {
        if tokenizer.token_to_id("<|start_header_id|>").is_some() {
            return Ok("llama3");
        }
        if tokenizer.token_to_id("<|im_start|>").is_some() {
            return Ok("chatml");
        }
    }
    Err(Error::Template(format!(
        "the model has no chat template, and its vocabulary ({arch}) matches no built-in one \
         (Llama 3 needs <|start_header_id|>, ChatML needs <|im_start|>); for an HF folder, \
         put a Jinja template in chat_template.jinja beside tokenizer.json"
    )))
}

/// A panic inside minijinja, caught: the template hit a case the engine does not handle.
fn engine_panic(why: String) -> Error {
    Error::Template(format!(
        "the template engine failed on this template ({why}); rewrite the expression it chokes on"
    ))
}

fn template_error(e: &minijinja::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut raised = None;
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            raised = Some(r.0.clone());
            break;
        }
        source = s.source();
    }
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    match raised {
        Some(msg) => Error::Template(format!("{msg}{line}")),
        None => {
            let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
            Error::Template(format!("{}{detail}{line}", e.kind()))
        }
    }
}
