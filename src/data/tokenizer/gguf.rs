//! The tokenizer from GGUF metadata (`tokenizer.ggml.*`), as transformers' GGUF converter builds
//! it: byte-level BPE for `gpt2` vocabularies with the pre-tokenizer `tokenizer.ggml.pre` names,
//! and byte-fallback BPE with merges recovered from the vocabulary for `llama` ones.

use std::borrow::Cow;

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
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

use super::metadata::Metadata;
use super::{push_new, vocab_of, BpeKind, ChatTokenizer};

impl ChatTokenizer {
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
