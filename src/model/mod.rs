//! Models: where they come from (HF folder, hub cache, GGUF), how they load, and the
//! [`CausalLm`] interface the trainer, scorer and generator use.
//!
//! One file per architecture ([`llama`] with its Mistral, Qwen2 and Qwen3 flavors, [`gemma3`]
//! with Gemma 2) over shared layers, one concept per file ([`norm`], [`rope`], [`mask`],
//! [`attention`], [`mlp`], [`cache`], [`decoder`]). Every projection is a
//! [`crate::lora::Linear`], so adapters attach without forking model files.

pub mod attention;
pub mod cache;
pub mod decoder;
pub mod gemma3;
pub mod llama;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod projections;
pub mod rope;
pub mod source;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use cache::KvCache;
pub use source::ModelSource;

use crate::config::gguf::GgufMeta;
use crate::config::{LlamaFlavor, ModelConfig};
use crate::data::{ChatTemplate, ChatTokenizer};
use crate::lora::Adaptable;
use crate::quant::{FrozenWeight, Quantize};
use crate::{Error, Result};
use weights::{read_gguf, GgufFlavor, Weights};

/// A decoder-only language model with a trainable forward pass; [`Adaptable`] gives LoRA its
/// projections.
pub trait CausalLm: Adaptable + Send + Sync {
    /// Runs the decoder: final hidden states `[B, T, H]` (after the last norm) for
    /// `input_ids: [B, T]`, with an optional 0/1 `attention_mask: [B, T]` for right padding.
    /// With a cache, the tokens continue the cached sequence and are appended to it.
    fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;

    /// Final hidden states of a whole sequence, without a cache.
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.decode(input_ids, attention_mask, None)
    }

    /// Final hidden states of packed rows `input_ids: [B, T]` holding several conversations
    /// each ([`mask::Segments`]): a token attends to the earlier tokens of its own conversation
    /// only, at positions that restart at 0 for each conversation. Training only: no cache.
    fn forward_hidden_packed(
        &self,
        input_ids: &Tensor,
        segments: &mask::Segments,
    ) -> Result<Tensor>;

    /// The output projection and its logit soft-capping.
    fn lm_head(&self) -> LmHead;

    /// Logits `[B, T, V]` from hidden states `[B, T, H]` (head, then any softcapping).
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = self.lm_head();
        let (b, t, h) = hidden.dims3()?;
        let l = head.weight.matmul_t(&hidden.reshape((b * t, h))?)?;
        let l = l.reshape((b, t, l.dim(1)?))?;
        match head.softcap {
            Some(cap) => Ok(((l / cap)?.tanh()? * cap)?),
            None => Ok(l),
        }
    }

    /// Full-sequence logits `[B, T, V]`.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask)?;
        self.logits(&h)
    }

    /// Appends `input_ids: [B, T]` to the cache and returns the logits of the last position
    /// `[B, V]`. `attention_mask` (0/1 `[B, T]`) marks the left padding of prompts that share a
    /// batch; the cache keeps it for the later passes.
    fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let h = self.decode(input_ids, attention_mask, Some(cache))?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }

    /// An empty KV cache for this model.
    fn new_cache(&self) -> KvCache;

    fn vocab_size(&self) -> usize;

    /// The longest sequence the model is made for (`max_position_embeddings`): a bound on the
    /// prompt plus the generated tokens, and on what scoring feeds it.
    fn context_len(&self) -> usize;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// Every weight with its HF name; projections carry their merged LoRA delta.
    fn merged_state_dict(&self) -> Result<Vec<(String, Tensor)>>;
}

/// What usually makes NaN or infinite logits, for errors raised where they first appear.
pub const NON_FINITE_CAUSE: &str = "the model or adapter holds NaN or infinite weights, or \
     the activations overflow the compute dtype (f16; try f32 or bf16)";

/// The output projection `[vocab, hidden]` (the embeddings when tied) and the
/// `tanh` soft-cap applied to its logits, if any.
#[derive(Debug, Clone)]
pub struct LmHead {
    pub weight: FrozenWeight,
    pub softcap: Option<f64>,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// How the decoder's projections are stored (the embeddings and head stay dense).
    pub quantize: Quantize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            quantize: Quantize::None,
        }
    }
}

/// A model with its tokenizer and chat template.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub config: ModelConfig,
    pub tokenizer: ChatTokenizer,
    pub template: ChatTemplate,
    pub source: ModelSource,
    /// What PEFT's `base_model_name_or_path` should say.
    pub name_or_path: String,
}

/// [`load`], then the PEFT adapter folder `adapter` applied when one is given.
pub fn load_with_adapter(
    spec: &str,
    opts: &LoadOptions,
    adapter: Option<&Path>,
) -> Result<LoadedModel> {
    let mut m = load(spec, opts)?;
    if let Some(dir) = adapter {
        let n = crate::lora::load_peft_adapter(m.model.as_mut(), dir, opts.dtype, &opts.device)?;
        tracing::info!("adapter {}: {n} layers adapted", dir.display());
    }
    Ok(m)
}

/// Resolves `spec` (a folder, a `.gguf` file or a hub id) and loads everything.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let source = ModelSource::resolve(spec)?;
    let (model, config, tokenizer) = match &source {
        ModelSource::HfDir(dir) => load_hf_dir(dir, opts)?,
        ModelSource::Gguf(path) => load_gguf(path, opts)?,
    };
    let template = ChatTemplate::for_model(config.family(), &tokenizer)?;
    Ok(LoadedModel {
        model,
        config,
        tokenizer,
        template,
        name_or_path: spec.to_string(),
        source,
    })
}

/// The tokenizer and chat template of `spec` without its weights, for tools that only render
/// and count tokens (`data stats`, `data validate`): the same pair [`load`] gives.
pub fn load_chat_format(spec: &str) -> Result<(ChatTokenizer, ChatTemplate)> {
    let source = ModelSource::resolve(spec)?;
    let (config, tokenizer) = match &source {
        ModelSource::HfDir(dir) => {
            let cfg_path = dir.join("config.json");
            if !cfg_path.is_file() {
                return Err(Error::model(dir, "no config.json in this folder"));
            }
            (
                ModelConfig::from_file(&cfg_path)?,
                ChatTokenizer::from_hf_dir(dir)?,
            )
        }
        ModelSource::Gguf(path) => {
            let (content, _file) = read_gguf(path)?;
            let meta = GgufMeta::new(&content, path);
            let arch = meta.architecture()?;
            (
                meta.model_config(&arch)?,
                ChatTokenizer::from_gguf(&content, path)?,
            )
        }
    };
    let template = ChatTemplate::for_model(config.family(), &tokenizer)?;
    Ok((tokenizer, template))
}

type Parts = (Box<dyn CausalLm>, ModelConfig, ChatTokenizer);

fn check_vocab(tokenizer: &ChatTokenizer, config: &ModelConfig, path: &Path) -> Result<()> {
    let tok = tokenizer.vocab_size();
    let emb = config.vocab_size();
    if tok > emb {
        return Err(Error::model(
            path,
            format!(
                "the tokenizer has {tok} tokens but the embedding has only {emb} rows; \
                 tokenizer and weights do not belong to the same model"
            ),
        ));
    }
    Ok(())
}

/// The embedding's rows against the config's `vocab_size` (`field`, as `path` spells it).
fn check_embedding_rows(config: &ModelConfig, w: &Weights, path: &Path, field: &str) -> Result<()> {
    let vocab = config.vocab_size();
    match w.dims("model.embed_tokens.weight").as_deref() {
        Some([rows, _]) if *rows != vocab => Err(Error::model_field(
            path,
            field,
            format!("= {vocab} but the embedding (model.embed_tokens.weight) has {rows} rows"),
        )),
        _ => Ok(()),
    }
}

fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Parts> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(Error::model(dir, "no config.json in this folder"));
    }
    let config = ModelConfig::from_file(&cfg_path)?;
    let tokenizer = ChatTokenizer::from_hf_dir(dir)?;
    check_vocab(&tokenizer, &config, dir)?;
    if opts.quantize == Quantize::Gguf {
        return Err(Error::model(
            dir,
            "quantize = \"gguf\" keeps a GGUF file's own blocks, but this is a safetensors folder; \
             use nf4, q4_0, q4k or q8_0 to quantize it at load",
        ));
    }
    let mut w = Weights::from_hf_dir(dir, opts.dtype, &opts.device)?.with_quantize(opts.quantize);
    if matches!(&config, ModelConfig::Gemma3(c) if c.conditional_generation) {
        w = w.with_text_tower()?;
    }
    check_embedding_rows(&config, &w, &cfg_path, "vocab_size")?;
    let model = build(&config, &w, None)?;
    Ok((model, config, tokenizer))
}

fn build(
    config: &ModelConfig,
    w: &Weights,
    rope_factors: Option<Vec<f32>>,
) -> Result<Box<dyn CausalLm>> {
    Ok(match config {
        ModelConfig::Llama(c) => Box::new(llama::Llama::load(c.clone(), w, rope_factors)?),
        ModelConfig::Gemma3(c) => Box::new(gemma3::Gemma3::load(c.clone(), w)?),
    })
}

fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Parts> {
    let (content, file) = read_gguf(path)?;
    let meta = GgufMeta::new(&content, path);
    let arch = meta.architecture()?;
    let tokenizer = ChatTokenizer::from_gguf(&content, path)?;
    let config = meta.model_config(&arch)?;
    check_vocab(&tokenizer, &config, path)?;
    let flavor = match &config {
        ModelConfig::Llama(c) if matches!(c.flavor, LlamaFlavor::Qwen2 | LlamaFlavor::Qwen3) => {
            GgufFlavor::Qwen
        }
        ModelConfig::Llama(c) => GgufFlavor::Llama {
            n_head: c.num_attention_heads,
            n_kv_head: c.num_kv_heads(),
        },
        ModelConfig::Gemma3(_) => GgufFlavor::Gemma,
    };
    let has_rope_freqs = content.tensor_infos.contains_key("rope_freqs.weight");
    let w = Weights::from_gguf(content, file, path, flavor, opts.dtype, &opts.device)
        .with_quantize(opts.quantize);
    check_embedding_rows(&config, &w, path, &format!("{arch}.vocab_size"))?;
    let rope_factors = if has_rope_freqs {
        Some(
            w.get_raw("rope_freqs.weight")?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        )
    } else {
        None
    };
    let model = build(&config, &w, rope_factors)?;
    Ok((model, config, tokenizer))
}

/// The path a model spec names, for messages.
pub fn display_path(source: &ModelSource) -> PathBuf {
    match source {
        ModelSource::HfDir(p) | ModelSource::Gguf(p) => p.clone(),
    }
}
