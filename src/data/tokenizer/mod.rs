//! A tokenizer that gives the same ids as the Hugging Face tokenizer of the same model, built from
//! an HF folder (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) or from GGUF
//! metadata (`tokenizer.ggml.*`) as transformers' GGUF converter does
//! (`gguf_tokenizer_mapping.py`): byte-level BPE for `gpt2` vocabularies, byte-fallback BPE with
//! merges recovered from the vocabulary for `llama` ones. A pre-tokenizer transformers ignores
//! (`smollm`'s single digits) comes from the model's own `tokenizer.json`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{Error, Result};

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

    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = Metadata {
            values: &content.metadata,
            path,
        };
        let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
            meta.error("tokenizer.ggml.model", "missing: the file has no tokenizer")
        })?;
        let tokens = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| meta.error("tokenizer.ggml.tokens", "missing"))?;
        if tokens.is_empty() {
            return Err(meta.error("tokenizer.ggml.tokens", "the vocabulary is empty"));
        }
        let token_types = meta.i32s("tokenizer.ggml.token_type")?.unwrap_or_default();
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(meta.error(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", token_types.len(), tokens.len()),
            ));
        }
        let token_id = |key: &str| meta.token_id(key, tokens.len());
        let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
        let eos_id = token_id("tokenizer.ggml.eos_token_id")?;
        let unk_id = token_id("tokenizer.ggml.unknown_token_id")?;
        let pad_id = token_id("tokenizer.ggml.padding_token_id")?;
        let eot_id = token_id("tokenizer.ggml.eot_token_id")?;
        let eom_id = token_id("tokenizer.ggml.eom_token_id")?;
        let architecture = meta.string("general.architecture")?.unwrap_or_default();

        let vocab = GgufVocab {
            meta: &meta,
            tokens: &tokens,
            token_types: &token_types,
        };
        let (mut inner, add_bos_default) = match model {
            "gpt2" => (vocab.byte_level_bpe()?, false),
            // transformers lists gemma, gemma2 and gemma3; later Gemmas share the vocabulary.
            "llama" if architecture.starts_with("gemma") => {
                (vocab.gemma_sentencepiece(unk_id)?, true)
            }
            "llama" => (vocab.llama_sentencepiece()?, true),
            other => {
                return Err(Error::Tokenizer(format!(
                    "{}: unsupported tokenizer.ggml.model `{other}` (supported: gpt2, llama)",
                    path.display()
                )))
            }
        };

        let byte_level = model == "gpt2";
        vocab.add_special_and_user_tokens(&mut inner, byte_level, [bos_id, eos_id, unk_id, pad_id]);

        let token_text = |id: Option<u32>| id.map(|id| tokens[id as usize].to_string());
        let bos_token = token_text(bos_id);
        let eos_token = token_text(eos_id);
        let add_bos = meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(add_bos_default);
        let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let bos = if add_bos {
            bos_token.as_deref().zip(bos_id)
        } else {
            None
        };
        let eos = if add_eos {
            eos_token.as_deref().zip(eos_id)
        } else {
            None
        };
        if add_bos && bos.is_none() {
            tracing::warn!(
                "{}: add_bos_token is set but there is no bos token",
                path.display()
            );
        }
        if bos.is_some() || eos.is_some() {
            inner.with_post_processor(Some(bos_eos_processor(bos, eos, path)?));
        }

        // llama.cpp's end-of-generation set: eos, eot, eom, and the usual end-of-turn tokens.
        let mut eos_token_ids = Vec::new();
        let end_tokens = END_OF_GENERATION_TOKENS
            .iter()
            .filter_map(|t| inner.token_to_id(t));
        push_new(
            &mut eos_token_ids,
            [eos_id, eot_id, eom_id]
                .into_iter()
                .flatten()
                .chain(end_tokens),
        );

        Ok(Self {
            inner,
            bos_token,
            eos_token,
            chat_template: meta.string("tokenizer.chat_template")?.map(str::to_string),
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
const END_OF_GENERATION_TOKENS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<|end_of_text|>",
];

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The Llama 3 split, as in its `tokenizer.json` and transformers' `_LLAMA3_SPLIT`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen 2 split, as in transformers' `qwen2/tokenization_qwen2.py`.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values and the pre-tokenizer of the matching HF `tokenizer.json`.
enum ByteLevelSplit {
    /// GPT-2's own regex inside `ByteLevel`.
    Gpt2,
    /// `Digits(individual_digits)` then GPT-2's regex (StarCoder, SmolLM).
    DigitsThenGpt2,
    /// A `Split(regex, Isolated)` before a regex-free `ByteLevel`.
    Regex(&'static str),
}

fn byte_level_split(pre: Option<&str>, path: &Path) -> ByteLevelSplit {
    match pre {
        None | Some("default" | "gpt2" | "gpt-2") => ByteLevelSplit::Gpt2,
        Some("smollm" | "starcoder" | "refact" | "codeshell") => ByteLevelSplit::DigitsThenGpt2,
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
            | "lfm2" | "dbrx" | "smaug-bpe",
        ) => ByteLevelSplit::Regex(LLAMA3_SPLIT),
        Some("qwen2" | "deepseek-r1-qwen" | "megrez") => ByteLevelSplit::Regex(QWEN2_SPLIT),
        Some(other) => {
            tracing::warn!(
                "{}: unknown tokenizer.ggml.pre `{other}`, splitting text as GPT-2 does",
                path.display()
            );
            ByteLevelSplit::Gpt2
        }
    }
}

/// Typed, bounds-checked access to GGUF metadata, with errors naming the file and key.
struct Metadata<'a> {
    values: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    fn error(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::Tokenizer(format!("{}: metadata `{key}`: {msg}", self.path.display()))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.error(
            key,
            format!("expected {expected}, found {:?}", found.value_type()),
        )
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    /// An array whose every item `convert` accepts; the error names the first bad item.
    fn array_of<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let values = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                convert(item).ok_or_else(|| self.wrong_type(&format!("{key}[{i}]"), expected, item))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(values))
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        self.array_of(key, "a string", |item| match item {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    fn i32s(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.array_of(key, "an i32", |item| {
            integer(item).and_then(|v| i32::try_from(v).ok())
        })
    }

    fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.array_of(key, "a float", |item| match item {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            _ => None,
        })
    }

    /// A token id, which must index the vocabulary.
    fn token_id(&self, key: &str, vocab_len: usize) -> Result<Option<u32>> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        let id = integer(value).ok_or_else(|| self.wrong_type(key, "an integer", value))?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < vocab_len => Ok(Some(id)),
            _ => Err(self.error(
                key,
                format!("token id {id} is out of range (vocabulary of {vocab_len})"),
            )),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::U8(v) => Some(i64::from(*v)),
        Value::I8(v) => Some(i64::from(*v)),
        Value::U16(v) => Some(i64::from(*v)),
        Value::I16(v) => Some(i64::from(*v)),
        Value::U32(v) => Some(i64::from(*v)),
        Value::I32(v) => Some(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v).ok(),
        Value::I64(v) => Some(*v),
        _ => None,
    }
}

/// The vocabulary part of GGUF metadata, and the builders for each `tokenizer.ggml.model`.
struct GgufVocab<'m, 'a> {
    meta: &'m Metadata<'a>,
    tokens: &'m [&'a str],
    token_types: &'m [i32],
}

impl GgufVocab<'_, '_> {
    fn build_error(&self, msg: impl std::fmt::Display) -> Error {
        Error::Tokenizer(format!("{}: {msg}", self.meta.path.display()))
    }

    /// Merges from `tokenizer.ggml.merges`, each "left right".
    fn file_merges(&self) -> Result<Option<Vec<(String, String)>>> {
        const KEY: &str = "tokenizer.ggml.merges";
        let Some(merges) = self.meta.strings(KEY)? else {
            return Ok(None);
        };
        let pairs = merges
            .iter()
            .enumerate()
            .map(|(i, merge)| match merge.split_once(' ') {
                Some((left, right))
                    if !left.is_empty() && !right.is_empty() && !right.contains(' ') =>
                {
                    Ok((left.to_string(), right.to_string()))
                }
                _ => Err(self.meta.error(
                    &format!("{KEY}[{i}]"),
                    format!("{merge:?} is not two tokens"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(pairs))
    }

    fn bpe(&self, vocab: Vocab, merges: Vec<(String, String)>, kind: BpeKind) -> Result<BPE> {
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges);
        if let BpeKind::SentencePiece { unk } = kind {
            builder = builder.fuse_unk(true).byte_fallback(true);
            if let Some(unk) = unk {
                builder = builder.unk_token(unk);
            }
        }
        builder
            .build()
            .map_err(|e| self.build_error(format!("cannot build the BPE model: {e}")))
    }

    /// Byte-level BPE (`tokenizer.ggml.model` = `gpt2`), as transformers' `byte_level_tokenizer`.
    fn byte_level_bpe(&self) -> Result<tokenizers::Tokenizer> {
        let alphabet = byte_alphabet();
        // A token is stored as text; the BPE model wants it spelled in the byte alphabet.
        let vocab: Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, token)| {
                (
                    spell_in_byte_alphabet(token, &alphabet).into_owned(),
                    id as u32,
                )
            })
            .collect();
        let merges = self.file_merges()?.ok_or_else(|| {
            self.meta.error(
                "tokenizer.ggml.merges",
                "missing: a byte-level BPE vocabulary needs its merges",
            )
        })?;
        let model = self.bpe(vocab, merges, BpeKind::ByteLevel)?;

        let mut tokenizer = tokenizers::Tokenizer::new(model);
        let pre = self.meta.string("tokenizer.ggml.pre")?;
        let pre_tokenizer: PreTokenizerWrapper = match byte_level_split(pre, self.meta.path) {
            ByteLevelSplit::Gpt2 => ByteLevel::new(false, true, true).into(),
            ByteLevelSplit::DigitsThenGpt2 => PreTokenizerSequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            ByteLevelSplit::Regex(regex) => {
                let split = Split::new(
                    tokenizers::pre_tokenizers::split::SplitPattern::Regex(regex.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| self.build_error(format!("pre-tokenizer regex: {e}")))?;
                PreTokenizerSequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
        };
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        Ok(tokenizer)
    }

    /// Gemma's SentencePiece vocabulary, as transformers' `gemma_tokenizer` + `GemmaTokenizer`.
    fn gemma_sentencepiece(&self, unk_id: Option<u32>) -> Result<tokenizers::Tokenizer> {
        // Runs of spaces are stored as real spaces but looked up as "▁" runs.
        let tokens: Vec<Cow<str>> = self
            .tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.chars().all(is_python_whitespace) {
                    Cow::Owned("\u{2581}".repeat(t.chars().count()))
                } else {
                    Cow::Borrowed(*t)
                }
            })
            .collect();
        let vocab = vocab_of(&tokens);
        let merges = match self.file_merges()? {
            Some(merges) => merges,
            // Gemma's scores do not follow its merge order; the order in the file does.
            None => merges_from_vocab(&tokens, &vocab, |id| -f64::from(id)),
        };
        let unk = unk_id
            .map(|id| tokens[id as usize].to_string())
            .or_else(|| vocab.contains_key("<unk>").then(|| "<unk>".to_string()));
        let model = self.bpe(vocab, merges, BpeKind::SentencePiece { unk })?;

        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_normalizer(Some(space_to_metaspace(self)?));
        let split = Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
            .map_err(|e| self.build_error(format!("pre-tokenizer: {e}")))?;
        tokenizer.with_pre_tokenizer(Some(split));
        tokenizer.with_decoder(Some(sentencepiece_decoder(self, false)?));
        Ok(tokenizer)
    }

    /// Other SentencePiece vocabularies, as transformers' `sentencepiece_tokenizer` + `LlamaTokenizer`.
    fn llama_sentencepiece(&self) -> Result<tokenizers::Tokenizer> {
        let vocab = vocab_of(self.tokens);
        let merges = match self.file_merges()? {
            Some(merges) => merges,
            None => {
                let scores = self.meta.f32s("tokenizer.ggml.scores")?.ok_or_else(|| {
                    self.meta.error(
                        "tokenizer.ggml.scores",
                        "missing: without tokenizer.ggml.merges the merges come from the scores",
                    )
                })?;
                if scores.len() != self.tokens.len() {
                    return Err(self.meta.error(
                        "tokenizer.ggml.scores",
                        format!("{} entries for {} tokens", scores.len(), self.tokens.len()),
                    ));
                }
                let tokens: Vec<Cow<str>> = self.tokens.iter().map(|t| Cow::Borrowed(*t)).collect();
                merges_from_vocab(&tokens, &vocab, |id| f64::from(scores[id as usize]))
            }
        };
        let model = self.bpe(vocab, merges, BpeKind::SentencePiece { unk: None })?;

        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Metaspace::new(
            '\u{2581}',
            PrependScheme::First,
            false,
        )));
        tokenizer.with_decoder(Some(sentencepiece_decoder(self, true)?));
        Ok(tokenizer)
    }

    /// Control tokens become special added tokens and user-defined ones plain added tokens, so
    /// that they match whole (transformers' `add_gguf_special_tokens`). The bos/eos/unk/pad
    /// tokens are special too, as transformers' special-token attributes make them.
    fn add_special_and_user_tokens(
        &self,
        tokenizer: &mut tokenizers::Tokenizer,
        byte_level: bool,
        named: [Option<u32>; 4],
    ) {
        // In a byte-level vocabulary a control token outside the byte alphabet is a mislabel.
        let spelled = |t: &str| !byte_level || t.chars().all(in_byte_alphabet);
        let of_type = |wanted: i32| {
            self.tokens
                .iter()
                .zip(self.token_types)
                .filter(move |(_, &kind)| kind == wanted)
                .map(|(t, _)| *t)
        };
        let mut special: Vec<AddedToken> = of_type(TOKEN_TYPE_CONTROL)
            .filter(|t| spelled(t))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        for id in named.into_iter().flatten() {
            let token = self.tokens[id as usize];
            if tokenizer.token_to_id(token) == Some(id)
                && !special.iter().any(|s| s.content == token)
            {
                special.push(AddedToken::from(token, true).normalized(false));
            }
        }
        if !special.is_empty() {
            tokenizer.add_special_tokens(&special);
        }
        let user_defined: Vec<AddedToken> = of_type(TOKEN_TYPE_USER_DEFINED)
            .filter(|t| tokenizer.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t, false).normalized(false))
            .collect();
        if !user_defined.is_empty() {
            tokenizer.add_tokens(&user_defined);
        }
    }
}

fn space_to_metaspace(vocab: &GgufVocab) -> Result<Replace> {
    Replace::new(" ", "\u{2581}").map_err(|e| vocab.build_error(format!("normalizer: {e}")))
}

/// `Replace("▁", " ")`, `ByteFallback`, `Fuse`, and for a prepended space `Strip(" ", 1, 0)`.
fn sentencepiece_decoder(vocab: &GgufVocab, strip_prefix_space: bool) -> Result<DecoderSequence> {
    let replace =
        Replace::new("\u{2581}", " ").map_err(|e| vocab.build_error(format!("decoder: {e}")))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if strip_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(decoders))
}

/// A post-processor adding BOS before and/or EOS after each sequence, as transformers'
/// `TokenizersBackend.update_post_processor` builds it.
fn bos_eos_processor(
    bos: Option<(&str, u32)>,
    eos: Option<(&str, u32)>,
    path: &Path,
) -> Result<TemplateProcessing> {
    let sequence = |seq: &str, type_id: u32| {
        let special = |(token, _): (&str, u32)| serde_json::json!({"SpecialToken": {"id": token, "type_id": type_id}});
        let body = serde_json::json!({"Sequence": {"id": seq, "type_id": type_id}});
        bos.map(special)
            .into_iter()
            .chain([body])
            .chain(eos.map(special))
            .collect::<Vec<_>>()
    };
    let single = sequence("A", 0);
    let pair: Vec<_> = single.iter().cloned().chain(sequence("B", 1)).collect();
    let special_tokens: serde_json::Map<String, serde_json::Value> = bos
        .into_iter()
        .chain(eos)
        .map(|(token, id)| {
            (
                token.to_string(),
                serde_json::json!({"id": token, "ids": [id], "tokens": [token]}),
            )
        })
        .collect();
    let processor = serde_json::json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    });
    serde_json::from_value(processor).map_err(|e| {
        Error::Tokenizer(format!(
            "{}: cannot build the bos/eos post-processor: {e}",
            path.display()
        ))
    })
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes stand for themselves,
/// the others are shifted to U+0100 and up.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[byte as usize] = if printable {
            char::from(byte)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or('\0')
        };
    }
    table
}

/// Whether `c` is one of the 256 characters of [`byte_alphabet`].
fn in_byte_alphabet(c: char) -> bool {
    matches!(c as u32, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF | 0x100..=0x143)
}

fn spell_in_byte_alphabet<'t>(token: &'t str, alphabet: &[char; 256]) -> Cow<'t, str> {
    if token.chars().all(in_byte_alphabet) {
        Cow::Borrowed(token)
    } else {
        Cow::Owned(token.bytes().map(|b| alphabet[b as usize]).collect())
    }
}

/// Python's `str.isspace`, which transformers uses to spot Gemma's space-run tokens.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// The merges a SentencePiece BPE vocabulary implies, in the order transformers'
/// `generate_merges(vocab, vocab_scores)` gives them: every split of a token into two
/// vocabulary tokens, best score first, then longer left and right parts first; ties keep the
/// vocabulary order. `vocab` maps each text to its last id, as the Python dict does, and a text
/// listed twice is visited once, at its first place.
fn merges_from_vocab(
    tokens: &[Cow<str>],
    vocab: &Vocab,
    score_of_id: impl Fn(u32) -> f64,
) -> Vec<(String, String)> {
    struct Candidate {
        left: u32,
        right: u32,
        score: f64,
        left_chars: u32,
        right_chars: u32,
    }
    let mut seen = std::collections::HashSet::new();
    let has_duplicates = vocab.len() != tokens.len();
    let mut candidates = Vec::with_capacity(tokens.len() * 2);
    for token in tokens {
        let token: &str = token;
        if has_duplicates && !seen.insert(token) {
            continue;
        }
        let Some(&id) = vocab.get(token) else {
            continue;
        };
        // -0.0 equals 0.0 in Python's sort; NaN has no order there, put it last.
        let score = match score_of_id(id) {
            s if s.is_nan() => f64::NEG_INFINITY,
            s => s + 0.0,
        };
        let start = candidates.len();
        let total_chars = token.chars().count() as u32;
        for (left_chars, (split, _)) in (1..).zip(token.char_indices().skip(1)) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                candidates.push(Candidate {
                    left: l,
                    right: r,
                    score,
                    left_chars,
                    right_chars: total_chars - left_chars,
                });
            }
        }
        candidates[start..].sort_by_key(|c| (c.left, c.right));
    }
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    candidates
        .into_iter()
        .map(|c| {
            (
                tokens[c.left as usize].to_string(),
                tokens[c.right as usize].to_string(),
            )
        })
        .collect()
}

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
