//! Models: where they come from (HF folder, hub cache, GGUF), how they load, and the
//! [`CausalLm`] interface the trainer, scorer and generator use.
//!
//! One file per architecture ([`llama`], [`gemma3`]) over shared layers, one concept per
//! file ([`norm`], [`rope`], [`mask`], [`attention`], [`mlp`], [`cache`], [`decoder`]). Every
//! projection is a [`crate::lora::Linear`], so adapters attach without forking model files.

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

use crate::autograd::Checkpointing;
use crate::config::{Gemma3Config, LlamaConfig, ModelConfig, SUPPORTED_ARCHITECTURES};
use crate::data::{ChatTemplate, ChatTokenizer};
use crate::lora::Linear;
use crate::quant::{FrozenWeight, Quantize};
use crate::{Error, Result};
use weights::{read_gguf, GgufFlavor, Weights};

/// A decoder-only language model with a trainable forward pass.
pub trait CausalLm: Send + Sync {
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

    /// Turns per-layer gradient checkpointing on (with the sink that collects the
    /// recomputed layers' LoRA gradients) or off.
    fn set_gradient_checkpointing(&mut self, checkpointing: Option<Checkpointing>);

    /// Full-sequence logits `[B, T, V]`.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask)?;
        self.logits(&h)
    }

    /// Appends `input_ids: [B, T]` to the cache and returns the logits of the last position `[B, V]`.
    fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.decode(input_ids, None, Some(cache))?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        Ok(self.logits(&last)?.squeeze(1)?)
    }

    /// An empty KV cache for this model.
    fn new_cache(&self) -> KvCache;

    fn vocab_size(&self) -> usize;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// Every weight with its HF name; projections carry their merged LoRA delta.
    fn merged_state_dict(&self) -> Result<Vec<(String, Tensor)>>;

    /// Every adaptable projection with its HF module path (`model.layers.0.self_attn.q_proj`).
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;
}

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
    let w = Weights::from_hf_dir(dir, opts.dtype, &opts.device)?.with_quantize(opts.quantize);
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
    let meta = GgufMeta {
        content: &content,
        path,
    };
    let arch = meta.string("general.architecture")?;
    let tokenizer = ChatTokenizer::from_gguf(&content, path)?;
    let vocab = match meta.opt_u32(&format!("{arch}.vocab_size")) {
        Some(v) => v as usize,
        None => content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| Error::model(path, "no token_embd.weight tensor"))?,
    };
    let (config, flavor) = match arch.as_str() {
        "llama" => {
            let c = meta.llama_config(vocab)?;
            let flavor = GgufFlavor::Llama {
                n_head: c.num_attention_heads,
                n_kv_head: c.num_kv_heads(),
            };
            (ModelConfig::Llama(c), flavor)
        }
        "gemma3" => (
            ModelConfig::Gemma3(meta.gemma3_config(vocab)?),
            GgufFlavor::Gemma3,
        ),
        other => {
            return Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: format!("{other} (GGUF general.architecture)"),
                supported: format!(
                    "{} (GGUF: llama, gemma3)",
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            })
        }
    };
    check_vocab(&tokenizer, &config, path)?;
    let has_rope_freqs = content.tensor_infos.contains_key("rope_freqs.weight");
    let w = Weights::from_gguf(content, file, path, flavor, opts.dtype, &opts.device)
        .with_quantize(opts.quantize);
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

/// Typed access to GGUF metadata with errors that name the file and key.
struct GgufMeta<'a> {
    content: &'a candle_core::quantized::gguf_file::Content,
    path: &'a Path,
}

impl GgufMeta<'_> {
    fn get(&self, key: &str) -> Result<&candle_core::quantized::gguf_file::Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::model(self.path, format!("GGUF metadata `{key}` is missing")))
    }
    fn string(&self, key: &str) -> Result<String> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| Error::model(self.path, format!("GGUF metadata `{key}`: {e}")))
    }
    fn u32(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map(|x| x as usize)
            .map_err(|e| Error::model(self.path, format!("GGUF metadata `{key}`: {e}")))
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| v.to_u32().ok())
    }
    fn opt_f64(&self, key: &str) -> Option<f64> {
        let v = self.content.metadata.get(key)?;
        v.to_f32().map(|x| x as f64).or_else(|_| v.to_f64()).ok()
    }

    fn llama_config(&self, vocab: usize) -> Result<LlamaConfig> {
        let hidden = self.u32("llama.embedding_length")?;
        let heads = self.u32("llama.attention.head_count")?;
        let head_dim = self
            .opt_u32("llama.attention.key_length")
            .or_else(|| self.opt_u32("llama.rope.dimension_count"))
            .map(|x| x as usize)
            .unwrap_or(hidden / heads.max(1));
        let has_head = self.content.tensor_infos.contains_key("output.weight");
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.u32("llama.feed_forward_length")?,
            num_hidden_layers: self.u32("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .opt_u32("llama.attention.head_count_kv")
                .map(|x| x as usize),
            head_dim: Some(head_dim),
            rms_norm_eps: self
                .opt_f64("llama.attention.layer_norm_rms_epsilon")
                .unwrap_or(1e-5),
            rope_theta: self.opt_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            // llama3 scaling comes as the `rope_freqs.weight` tensor; linear as metadata.
            rope_scaling: self.linear_rope_scaling("llama"),
            max_position_embeddings: self.opt_u32("llama.context_length").unwrap_or(2048) as usize,
            tie_word_embeddings: !has_head,
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            mlp_bias: false,
            hidden_act: "silu".into(),
            rope_parameters: None,
        })
    }

    fn linear_rope_scaling(&self, arch: &str) -> Option<crate::config::RopeScaling> {
        let kind = self
            .content
            .metadata
            .get(&format!("{arch}.rope.scaling.type"))
            .and_then(|v| v.to_string().ok().cloned())?;
        let factor = self.opt_f64(&format!("{arch}.rope.scaling.factor"))?;
        (kind == "linear").then(|| crate::config::RopeScaling {
            rope_type: "linear".into(),
            factor: Some(factor),
            low_freq_factor: None,
            high_freq_factor: None,
            original_max_position_embeddings: None,
        })
    }

    fn gemma3_config(&self, vocab: usize) -> Result<Gemma3Config> {
        let head_dim = self.u32("gemma3.attention.key_length")?;
        Ok(Gemma3Config {
            vocab_size: vocab,
            hidden_size: self.u32("gemma3.embedding_length")?,
            intermediate_size: self.u32("gemma3.feed_forward_length")?,
            num_hidden_layers: self.u32("gemma3.block_count")?,
            num_attention_heads: self.u32("gemma3.attention.head_count")?,
            num_key_value_heads: self.u32("gemma3.attention.head_count_kv")?,
            head_dim,
            rms_norm_eps: self
                .opt_f64("gemma3.attention.layer_norm_rms_epsilon")
                .unwrap_or(1e-6),
            rope_theta: self.opt_f64("gemma3.rope.freq_base").unwrap_or(1_000_000.0),
            // llama.cpp fixes the local base at 10k for Gemma 3.
            rope_local_base_freq: 10_000.0,
            rope_scaling: self.linear_rope_scaling("gemma3"),
            sliding_window: self
                .opt_u32("gemma3.attention.sliding_window")
                .unwrap_or(512) as usize,
            sliding_window_pattern: Some(6),
            layer_types: None,
            // Every Gemma 3 size but 27B scales by head_dim (llama.cpp `f_attention_scale`).
            query_pre_attn_scalar: head_dim as f64,
            final_logit_softcapping: self.opt_f64("gemma3.final_logit_softcapping"),
            attn_logit_softcapping: self.opt_f64("gemma3.attn_logit_softcapping"),
            max_position_embeddings: self.opt_u32("gemma3.context_length").unwrap_or(32768)
                as usize,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: false,
            hidden_activation: "gelu_pytorch_tanh".into(),
            rope_parameters: None,
        })
    }
}

/// The path a model spec names, for messages.
pub fn display_path(source: &ModelSource) -> PathBuf {
    match source {
        ModelSource::HfDir(p) | ModelSource::Gguf(p) => p.clone(),
    }
}
