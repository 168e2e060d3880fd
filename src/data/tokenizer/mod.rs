//! A tokenizer that gives the same ids as the Hugging Face tokenizer of the same model, built from
//! an HF folder (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) or from GGUF
//! metadata (`tokenizer.ggml.*`) as transformers' GGUF converter does
//! (`gguf_tokenizer_mapping.py`): byte-level BPE for `gpt2` vocabularies, byte-fallback BPE with
//! merges recovered from the vocabulary for `llama` ones. A pre-tokenizer transformers ignores
//! (`smollm`'s single digits) comes from the model's own `tokenizer.json`.

use std::path::Path;

use tokenizers::models::bpe::Vocab;

use crate::{Error, Result};

mod gguf;
mod metadata;

/// A tokenizer plus the special tokens and chat template that go with it.
#[derive(Clone)]
pub struct ChatTokenizer {
    /// The HF tokenizer (model, normalizer, pre-tokenizer, decoder, added tokens).
    pub inner: tokenizers::Tokenizer,
    /// The BOS token string, as the chat template sees `bos_token`.
    pub bos_token: Option<String>,
    /// The EOS token string, as the chat template sees `eos_token`.
    pub eos_token: Option<String>,
    /// The chat template from `tokenizer_config.json` or `tokenizer.chat_template`, if any.
    pub chat_template: Option<String>,
    /// Token ids that end generation: eos, plus eos ids from `generation_config.json` (HF
    /// folder) or llama.cpp's end-of-generation tokens (GGUF).
    pub eos_token_ids: Vec<u32>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (and `generation_config.json` if
    /// present) from an HF model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(Error::Tokenizer(format!(
                "{}: not found (an HF model folder needs tokenizer.json)",
                tokenizer_path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_present(&config_path)?;
        if config.is_none() {
            tracing::warn!(
                "{}: not found; no bos/eos token or chat template",
                config_path.display()
            );
        }
        let config_str = |field: &str| -> Result<Option<String>> {
            match &config {
                Some(config) => token_string(config, field, &config_path),
                None => Ok(None),
            }
        };
        let bos_token = config_str("bos_token")?;
        let eos_token = config_str("eos_token")?;

        // transformers saves the template as `chat_template.jinja` and prefers it when present.
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.is_file() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            match &config {
                Some(config) => chat_template_from_config(config, &config_path)?,
                None => None,
            }
        };

        let mut eos_token_ids = Vec::new();
        if let Some(eos) = &eos_token {
            match inner.token_to_id(eos) {
                Some(id) => eos_token_ids.push(id),
                None => tracing::warn!(
                    "{}: eos_token {eos:?} is not in the vocabulary",
                    config_path.display()
                ),
            }
        }
        let generation_path = dir.join("generation_config.json");
        if let Some(generation) = read_json_if_present(&generation_path)? {
            push_new(
                &mut eos_token_ids,
                generation_eos_ids(&generation, &generation_path)?,
            );
        }

        Ok(Self {
            inner,
            bos_token,
            eos_token,
            chat_template,
            eos_token_ids,
        })
    }

    /// Encodes text. `add_special_tokens` adds BOS/EOS as the tokenizer's post-processor says.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Tokens llama.cpp treats as end of generation when the vocabulary has them (`llama-vocab.cpp`).
/// How the BPE model treats text its merges do not cover.
enum BpeKind {
    /// Byte-level: every byte is a token already.
    ByteLevel,
    /// SentencePiece: unknown characters fall back to `<0xNN>` byte tokens, else to `unk`.
    SentencePiece { unk: Option<String> },
}

/// Text to id; a text listed twice keeps its last id, as a Python dict built in order does.
fn vocab_of<S: AsRef<str>>(tokens: &[S]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_ref().to_string(), id as u32))
        .collect()
}

/// Appends the ids not already in `ids`, in order.
fn push_new(ids: &mut Vec<u32>, new: impl IntoIterator<Item = u32>) {
    for id in new {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
}

/// `bos_token` / `eos_token` in `tokenizer_config.json`: a string, an `AddedToken` object
/// (`{"content": ...}`), or null.
fn token_string(config: &serde_json::Value, field: &str, path: &Path) -> Result<Option<String>> {
    match config.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::Tokenizer(format!(
                "{}: field `{field}`: an AddedToken object needs a string `content`",
                path.display()
            ))),
        },
        Some(_) => Err(Error::Tokenizer(format!(
            "{}: field `{field}`: expected a string, an object with `content`, or null",
            path.display()
        ))),
    }
}

/// `chat_template` in `tokenizer_config.json`: a string, or a list of `{name, template}` of which
/// we take the one named "default".
fn chat_template_from_config(config: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    let bad =
        |msg: &str| Error::Tokenizer(format!("{}: field `chat_template`: {msg}", path.display()));
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                let name = item.get("name").and_then(|n| n.as_str());
                let template = item.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some("default"), Some(template)) => return Ok(Some(template.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(bad(
                            "each entry of the list needs a string `name` and `template`",
                        ))
                    }
                }
            }
            tracing::warn!(
                "{}: chat_template has no entry named \"default\"",
                path.display()
            );
            Ok(None)
        }
        Some(_) => Err(bad("expected a string or a list of {name, template}")),
    }
}

/// `eos_token_id` in `generation_config.json`: an integer or a list of integers.
fn generation_eos_ids(generation: &serde_json::Value, path: &Path) -> Result<Vec<u32>> {
    let bad = || {
        Error::Tokenizer(format!(
            "{}: field `eos_token_id`: expected a token id or a list of token ids",
            path.display()
        ))
    };
    let as_id = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(bad)
    };
    match generation.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(value) => Ok(vec![as_id(value)?]),
    }
}
