//! The HF-style model config a GGUF file's metadata describes: llama.cpp's keys
//! (`llama.embedding_length`, `qwen2.block_count`, `gemma3.attention.sliding_window`, ...)
//! mapped onto [`LlamaConfig`] (architectures `llama`, `qwen2`, `qwen3`) and [`Gemma3Config`]
//! (`gemma2`, `gemma3`), with the defaults llama.cpp assumes where a key is absent and what it
//! infers where there is none (the attention scale), so a GGUF base builds its HF folder's model.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::hf::{
    Gemma3Config, LlamaConfig, LlamaFlavor, ModelConfig, RopeScaling, SUPPORTED_ARCHITECTURES,
};
use crate::{Error, Result};

/// The GGUF metadata key that holds `config.json` field `field` of architecture `arch`.
fn gguf_key(arch: &str, field: &str) -> String {
    let key = match field {
        "vocab_size" => "vocab_size",
        "hidden_size" => "embedding_length",
        "intermediate_size" => "feed_forward_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "max_position_embeddings" => "context_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "sliding_window" => "attention.sliding_window",
        other => other,
    };
    format!("{arch}.{key}")
}

/// Typed access to GGUF metadata with errors that name the file and key.
pub struct GgufMeta<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> GgufMeta<'a> {
    pub fn new(content: &'a Content, path: &'a Path) -> Self {
        Self { content, path }
    }

    /// `general.architecture`: `llama`, `gemma3`, ...
    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    /// The HF-style config of architecture `arch` (from [`Self::architecture`]); the vocabulary
    /// size falls back to the rows of `token_embd.weight`.
    pub fn model_config(&self, arch: &str) -> Result<ModelConfig> {
        let vocab = match self.opt_u32(&format!("{arch}.vocab_size")) {
            Some(v) => v as usize,
            None => self
                .content
                .tensor_infos
                .get("token_embd.weight")
                .and_then(|t| t.shape.dims().first().copied())
                .ok_or_else(|| Error::model(self.path, "no token_embd.weight tensor with rows"))?,
        };
        let config = match arch {
            "llama" => ModelConfig::Llama(self.llama_config(arch, LlamaFlavor::Llama, vocab)?),
            "qwen2" => ModelConfig::Llama(self.llama_config(arch, LlamaFlavor::Qwen2, vocab)?),
            "qwen3" => ModelConfig::Llama(self.llama_config(arch, LlamaFlavor::Qwen3, vocab)?),
            "gemma2" | "gemma3" => ModelConfig::Gemma3(self.gemma_config(arch, vocab)?),
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path: self.path.to_path_buf(),
                    arch: format!("{other} (GGUF general.architecture)"),
                    supported: format!(
                        "{} (GGUF: llama, qwen2, qwen3, gemma2, gemma3)",
                        SUPPORTED_ARCHITECTURES.join(", ")
                    ),
                })
            }
        };
        config.validate(self.path, |field| gguf_key(arch, field))?;
        Ok(config)
    }

    fn get(&self, key: &str) -> Result<&Value> {
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

    /// A Llama-family config from the keys under `arch` (`llama`, `qwen2`, `qwen3`: the same
    /// keys in llama.cpp's `LLM_KV` table).
    fn llama_config(&self, arch: &str, flavor: LlamaFlavor, vocab: usize) -> Result<LlamaConfig> {
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = self.u32(&key("embedding_length"))?;
        let heads = self.u32(&key("attention.head_count"))?;
        let head_dim = self
            .opt_u32(&key("attention.key_length"))
            .or_else(|| self.opt_u32(&key("rope.dimension_count")))
            .map(|x| x as usize)
            .unwrap_or(hidden / heads.max(1));
        let has_head = self.content.tensor_infos.contains_key("output.weight");
        // Qwen2's q/k/v biases come with the flavor (its o_proj has none); elsewhere a bias
        // tensor means `attention_bias`.
        let attention_bias = flavor != LlamaFlavor::Qwen2
            && self.content.tensor_infos.contains_key("blk.0.attn_q.bias");
        let eps_default = if flavor == LlamaFlavor::Llama {
            1e-5
        } else {
            1e-6
        };
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.u32(&key("feed_forward_length"))?,
            num_hidden_layers: self.u32(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .opt_u32(&key("attention.head_count_kv"))
                .map(|x| x as usize),
            head_dim: Some(head_dim),
            rms_norm_eps: self
                .opt_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(eps_default),
            rope_theta: self.opt_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
            // llama3 scaling comes as the `rope_freqs.weight` tensor; linear as metadata.
            rope_scaling: self.linear_rope_scaling(arch),
            max_position_embeddings: self.opt_u32(&key("context_length")).unwrap_or(2048) as usize,
            tie_word_embeddings: !has_head,
            attention_bias,
            mlp_bias: false,
            hidden_act: "silu".into(),
            rope_parameters: None,
            flavor,
            use_sliding_window: false,
            sliding_window: None,
            max_window_layers: None,
            layer_types: None,
        })
    }

    fn linear_rope_scaling(&self, arch: &str) -> Option<RopeScaling> {
        let kind = self
            .content
            .metadata
            .get(&format!("{arch}.rope.scaling.type"))
            .and_then(|v| v.to_string().ok().cloned())?;
        let factor = self.opt_f64(&format!("{arch}.rope.scaling.factor"))?;
        (kind == "linear").then(|| RopeScaling {
            rope_type: "linear".into(),
            factor: Some(factor),
            low_freq_factor: None,
            high_freq_factor: None,
            original_max_position_embeddings: None,
        })
    }

    /// A Gemma 2 or Gemma 3 config from the keys under `arch`, with llama.cpp's defaults
    /// (`llama-model.cpp`, `LLM_ARCH_GEMMA2` / `LLM_ARCH_GEMMA3`).
    fn gemma_config(&self, arch: &str, vocab: usize) -> Result<Gemma3Config> {
        let key = |k: &str| format!("{arch}.{k}");
        let gemma2 = arch == "gemma2";
        let hidden = self.u32(&key("embedding_length"))?;
        let heads = self.u32(&key("attention.head_count"))?;
        let layers = self.u32(&key("block_count"))?;
        let head_dim = self.u32(&key("attention.key_length"))?;
        // Gemma 2 has one rope base (10k unless stored); Gemma 3's local layers fix theirs at 10k.
        let rope_theta = self.opt_f64(&key("rope.freq_base")).unwrap_or(if gemma2 {
            10_000.0
        } else {
            1_000_000.0
        });
        let softcap = |k: &str, gemma2_default: f64| {
            self.opt_f64(&key(k))
                .or_else(|| gemma2.then_some(gemma2_default))
        };
        Ok(Gemma3Config {
            conditional_generation: false,
            gemma2,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.u32(&key("feed_forward_length"))?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: self.u32(&key("attention.head_count_kv"))?,
            head_dim,
            rms_norm_eps: self
                .opt_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            rope_theta,
            rope_local_base_freq: if gemma2 { rope_theta } else { 10_000.0 },
            rope_scaling: self.linear_rope_scaling(arch),
            sliding_window: self
                .opt_u32(&key("attention.sliding_window"))
                .unwrap_or(if gemma2 { 4096 } else { 512 }) as usize,
            // Gemma 2 slides on even layers, Gemma 3 on five of every six.
            sliding_window_pattern: Some(if gemma2 { 2 } else { 6 }),
            layer_types: None,
            query_pre_attn_scalar: query_pre_attn_scalar(gemma2, layers, hidden, heads, head_dim),
            final_logit_softcapping: softcap("final_logit_softcapping", 30.0),
            attn_logit_softcapping: softcap("attn_logit_softcapping", 50.0),
            max_position_embeddings: self.opt_u32(&key("context_length")).unwrap_or(if gemma2 {
                8192
            } else {
                32768
            }) as usize,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: false,
            hidden_activation: "gelu_pytorch_tanh".into(),
            rope_parameters: None,
        })
    }
}

/// The attention scale's `query_pre_attn_scalar`, which GGUF does not store: llama.cpp's
/// `f_attention_scale` takes `hidden / heads` for the 27B sizes (Gemma 2's 46 layers, Gemma 3's
/// 62) and `head_dim` for every other size, as their HF configs do.
fn query_pre_attn_scalar(
    gemma2: bool,
    layers: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
) -> f64 {
    let is_27b = layers == if gemma2 { 46 } else { 62 };
    if is_27b && heads > 0 {
        (hidden / heads) as f64
    } else {
        head_dim as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_27b_gemmas_scale_attention_by_hidden_over_heads() {
        // Gemma 2 27B: 4608 / 32 = 144; Gemma 3 27B: 5376 / 32 = 168 (their HF configs).
        assert_eq!(query_pre_attn_scalar(true, 46, 4608, 32, 128), 144.0);
        assert_eq!(query_pre_attn_scalar(false, 62, 5376, 32, 128), 168.0);
        // Gemma 2 9B and Gemma 3 12B: head_dim 256.
        assert_eq!(query_pre_attn_scalar(true, 42, 3584, 16, 256), 256.0);
        assert_eq!(query_pre_attn_scalar(false, 48, 3840, 16, 256), 256.0);
    }

    #[test]
    fn a_bad_field_is_named_by_its_gguf_key() {
        assert_eq!(gguf_key("llama", "num_hidden_layers"), "llama.block_count");
        assert_eq!(
            gguf_key("gemma3", "rms_norm_eps"),
            "gemma3.attention.layer_norm_rms_epsilon"
        );
        let c: LlamaConfig = serde_json::from_str(
            r#"{"vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,
                "num_attention_heads":0}"#,
        )
        .unwrap();
        let e = ModelConfig::Llama(c)
            .validate(Path::new("m.gguf"), |f| gguf_key("llama", f))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "m.gguf: `llama.attention.head_count` is 0; it must be at least 1"
        );
    }
}
