//! Hugging Face `config.json` for the Llama family (Llama, Mistral, Qwen2, Qwen3) and Gemma 3,
//! deserialized as transformers writes it.
//!
//! Field names and defaults follow `LlamaConfig`, `MistralConfig`, `Qwen2Config`,
//! `Qwen3Config` and `Gemma3TextConfig` in transformers.
//! [`ModelConfig::validate`] checks the fields a model is built from (HF and GGUF alike), so a
//! zero, a non-dividing head count or a non-positive epsilon is an error naming the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The architectures this crate implements, as `architectures[0]` names them.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
];

/// The members of the Llama family: one decoder (`model::llama`) whose attention differs by
/// biases, per-head q/k norms and a sliding window, so each is a [`LlamaConfig`] with a flavor
/// rather than a file of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LlamaFlavor {
    /// `LlamaForCausalLM`: every projection biased or none (`attention_bias`).
    #[default]
    Llama,
    /// `MistralForCausalLM`: every layer attends within `sliding_window`, where it is set.
    Mistral,
    /// `Qwen2ForCausalLM`: q/k/v always biased, o_proj never.
    Qwen2,
    /// `Qwen3ForCausalLM`: RMSNorm over each q and k head before the rotation.
    Qwen3,
}

impl LlamaFlavor {
    /// `architectures[0]` of this flavor.
    pub fn architecture(self) -> &'static str {
        match self {
            LlamaFlavor::Llama => "LlamaForCausalLM",
            LlamaFlavor::Mistral => "MistralForCausalLM",
            LlamaFlavor::Qwen2 => "Qwen2ForCausalLM",
            LlamaFlavor::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// `model_type` of this flavor.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFlavor::Llama => "llama",
            LlamaFlavor::Mistral => "mistral",
            LlamaFlavor::Qwen2 => "qwen2",
            LlamaFlavor::Qwen3 => "qwen3",
        }
    }
}

/// `rope_scaling` as transformers writes it (`rope_type` or the older `type`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".into()
}

/// `LlamaForCausalLM` (Llama 2/3/3.1/3.2, SmolLM2), and with its [`LlamaFlavor`]
/// `Qwen2ForCausalLM` (Qwen2, Qwen2.5) and `Qwen3ForCausalLM` (dense Qwen3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Which member of the family (from `architectures`, not a field of the file).
    #[serde(skip)]
    pub flavor: LlamaFlavor,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// transformers v5 writes rope settings here (`rope_theta`, `rope_type`, factors).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Qwen2/Qwen3: whether any layer uses the sliding window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_sliding_window: bool,
    /// Mistral: the window of every layer (`null`: none; absent: transformers' 4096). Qwen2/Qwen3:
    /// the window of the sliding layers (ignored unless `use_sliding_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2/Qwen3 without `layer_types`: layers from this index on slide (transformers: 28).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Qwen2/Qwen3, transformers v5: "sliding_attention" or "full_attention" per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
}

/// Reads a transformers-v5 `rope_parameters` entry: its theta and any non-default scaling.
fn rope_from_parameters(v: &serde_json::Value) -> (Option<f64>, Option<RopeScaling>) {
    let theta = v.get("rope_theta").and_then(|t| t.as_f64());
    let scaling = serde_json::from_value::<RopeScaling>(v.clone())
        .ok()
        .filter(|s| s.rope_type != "default");
    (theta, scaling)
}

impl LlamaConfig {
    /// Folds `rope_parameters` into `rope_theta` / `rope_scaling`.
    fn normalize(mut self) -> Self {
        if let Some(p) = &self.rope_parameters {
            let (theta, scaling) = rope_from_parameters(p);
            if let Some(t) = theta {
                self.rope_theta = t;
            }
            if self.rope_scaling.is_none() {
                self.rope_scaling = scaling;
            }
        }
        self
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Whether q, k and v carry biases (and o_proj: [`Self::o_bias`]).
    pub fn qkv_bias(&self) -> bool {
        self.flavor == LlamaFlavor::Qwen2 || self.attention_bias
    }

    /// Whether o_proj carries a bias: Qwen2 never has one.
    pub fn o_bias(&self) -> bool {
        self.flavor != LlamaFlavor::Qwen2 && self.attention_bias
    }

    /// Whether each q and k head is RMS-normalised before the rotation (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.flavor == LlamaFlavor::Qwen3
    }

    /// The sliding window of layer `i`, if it has one: Mistral's applies to every layer;
    /// transformers' `Qwen2Config` gives one only with `use_sliding_window`, to the layers
    /// `layer_types` marks (or, without it, from `max_window_layers` on).
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        match self.flavor {
            LlamaFlavor::Llama => None,
            LlamaFlavor::Mistral => self.sliding_window,
            LlamaFlavor::Qwen2 | LlamaFlavor::Qwen3 => {
                if !self.use_sliding_window {
                    return None;
                }
                let window = self.sliding_window?;
                let sliding = match &self.layer_types {
                    Some(types) => types.get(i).is_some_and(|t| t == "sliding_attention"),
                    None => i >= self.max_window_layers.unwrap_or(28),
                };
                sliding.then_some(window)
            }
        }
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

fn default_gemma_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_rope_local() -> f64 {
    10_000.0
}
fn default_sliding_window() -> usize {
    4096
}
fn default_gemma_qpas() -> f64 {
    256.0
}
fn default_true() -> bool {
    true
}
fn default_gemma_theta() -> f64 {
    1_000_000.0
}
// transformers' `Gemma3TextConfig` defaults (a Gemma 3 4B-like shape), for sparse `text_config`s.
fn default_gemma_vocab() -> usize {
    262_208
}
fn default_gemma_hidden() -> usize {
    2304
}
fn default_gemma_intermediate() -> usize {
    9216
}
fn default_gemma_layers() -> usize {
    26
}
fn default_gemma_heads() -> usize {
    8
}
fn default_gemma_kv_heads() -> usize {
    4
}
fn default_gemma_head_dim() -> usize {
    256
}

/// `Gemma3ForCausalLM` (text), `model_type` "gemma3_text", or the `text_config` of a
/// `Gemma3ForConditionalGeneration` checkpoint (`model_type` "gemma3"), whose fields the Hub's
/// files mostly leave to `Gemma3TextConfig`'s defaults (those below).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gemma3Config {
    /// Whether this is the text tower of a `Gemma3ForConditionalGeneration` checkpoint (not a
    /// field of the file): its tensors and adapter modules sit under the language model.
    #[serde(skip)]
    pub conditional_generation: bool,
    /// `Gemma2ForCausalLM` (not a field of the file): no q/k norms, attention logits
    /// soft-capped, one rope base for every layer.
    #[serde(skip)]
    pub gemma2: bool,
    #[serde(default = "default_gemma_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_gemma_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_gemma_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_gemma_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_gemma_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_gemma_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "default_gemma_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_gemma_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rope_local")]
    pub rope_local_base_freq: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_sliding_window")]
    pub sliding_window: usize,
    /// Older configs: every `sliding_window_pattern`-th layer is global.
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// Newer configs: "sliding_attention" or "full_attention" per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "default_gemma_qpas")]
    pub query_pre_attn_scalar: f64,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_gemma_act", alias = "hidden_act")]
    pub hidden_activation: String,
    /// transformers v5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

impl Gemma3Config {
    /// Folds `rope_parameters` into the global and local rope settings.
    fn normalize(mut self) -> Self {
        if let Some(p) = &self.rope_parameters {
            if let Some(full) = p.get("full_attention") {
                let (theta, scaling) = rope_from_parameters(full);
                if let Some(t) = theta {
                    self.rope_theta = t;
                }
                if self.rope_scaling.is_none() {
                    self.rope_scaling = scaling;
                }
            }
            if let Some(t) = p
                .get("sliding_attention")
                .and_then(|s| s.get("rope_theta"))
                .and_then(|t| t.as_f64())
            {
                self.rope_local_base_freq = t;
            }
        }
        self
    }

    /// Whether layer `i` uses sliding-window attention (and the local rope base).
    pub fn is_sliding(&self, i: usize) -> bool {
        if let Some(types) = &self.layer_types {
            return types
                .get(i)
                .map(|t| t == "sliding_attention")
                .unwrap_or(false);
        }
        let pattern = self.sliding_window_pattern.unwrap_or(6);
        pattern == 0 || !(i + 1).is_multiple_of(pattern)
    }
}

/// A model configuration, tagged by architecture.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    Llama(LlamaConfig),
    Gemma3(Gemma3Config),
}

impl ModelConfig {
    /// Reads `config.json`, dispatching on `architectures` / `model_type`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON; `path` is used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
        let arch = value
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(str::to_string);
        let model_type = value
            .get("model_type")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let arch = match (arch.as_deref(), model_type) {
            (Some(a), _) => a.to_string(),
            (None, "llama") => "LlamaForCausalLM".into(),
            (None, "mistral") => "MistralForCausalLM".into(),
            (None, "qwen2") => "Qwen2ForCausalLM".into(),
            (None, "qwen3") => "Qwen3ForCausalLM".into(),
            (None, "gemma3_text") => "Gemma3ForCausalLM".into(),
            (None, "gemma3") => "Gemma3ForConditionalGeneration".into(),
            (None, other) => {
                return Err(Error::model(
                    path,
                    format!("no `architectures` and unknown model_type `{other}`"),
                ))
            }
        };
        let parse_err = |e: serde_json::Error| Error::model(path, format!("{arch}: {e}"));
        let config = match arch.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" | "Qwen3ForCausalLM" => {
                // transformers' MistralConfig slides over 4096 tokens unless the file says `null`.
                let mistral_window = value.get("sliding_window").is_none().then_some(4096);
                let flavor = match arch.as_str() {
                    "MistralForCausalLM" => LlamaFlavor::Mistral,
                    "Qwen2ForCausalLM" => LlamaFlavor::Qwen2,
                    "Qwen3ForCausalLM" => LlamaFlavor::Qwen3,
                    _ => LlamaFlavor::Llama,
                };
                let mut c = serde_json::from_value::<LlamaConfig>(value)
                    .map_err(parse_err)?
                    .normalize();
                c.flavor = flavor;
                if flavor == LlamaFlavor::Mistral && c.sliding_window.is_none() {
                    c.sliding_window = mistral_window;
                }
                // transformers' Qwen3Config defaults head_dim to 128, not hidden / heads.
                if flavor == LlamaFlavor::Qwen3 && c.head_dim.is_none() {
                    c.head_dim = Some(128);
                }
                Ok(ModelConfig::Llama(c))
            }
            "Gemma3ForCausalLM" => {
                // A multimodal Gemma 3 config nests the text model under `text_config`.
                let v = value.get("text_config").cloned().unwrap_or(value);
                Ok(ModelConfig::Gemma3(
                    serde_json::from_value::<Gemma3Config>(v)
                        .map_err(parse_err)?
                        .normalize(),
                ))
            }
            "Gemma2ForCausalLM" => {
                // transformers' Gemma2Config defaults where Gemma 3's differ.
                let absent = |k: &str| value.get(k).is_none();
                let (no_theta, no_final, no_attn) = (
                    absent("rope_theta") && absent("rope_parameters"),
                    absent("final_logit_softcapping"),
                    absent("attn_logit_softcapping"),
                );
                let no_window = absent("sliding_window");
                let mut c = serde_json::from_value::<Gemma3Config>(value)
                    .map_err(parse_err)?
                    .normalize();
                c.gemma2 = true;
                // transformers v5 writes Gemma 2's one rope as a flat `rope_parameters`.
                let flat_theta = c
                    .rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|t| t.as_f64());
                if let Some(t) = flat_theta {
                    c.rope_theta = t;
                } else if no_theta {
                    c.rope_theta = 10_000.0;
                }
                if no_final {
                    c.final_logit_softcapping = Some(30.0);
                }
                if no_attn {
                    c.attn_logit_softcapping = Some(50.0);
                }
                if no_window {
                    c.sliding_window = 4096;
                }
                // Every other layer slides, starting with the first.
                if c.layer_types.is_none() {
                    c.sliding_window_pattern = Some(2);
                }
                // One rope base: the local layers use the global one.
                c.rope_local_base_freq = c.rope_theta;
                Ok(ModelConfig::Gemma3(c))
            }
            "Gemma3ForConditionalGeneration" => {
                // The text tower only; the vision tower's config and tensors are never read.
                let v = match value.get("text_config") {
                    Some(v @ serde_json::Value::Object(_)) => v.clone(),
                    Some(_) => {
                        return Err(Error::model_field(
                            path,
                            "text_config",
                            "must be an object (the language model's config)",
                        ))
                    }
                    None => serde_json::json!({}),
                };
                let mut c = serde_json::from_value::<Gemma3Config>(v)
                    .map_err(|e| Error::model(path, format!("{arch} text_config: {e}")))?
                    .normalize();
                c.conditional_generation = true;
                Ok(ModelConfig::Gemma3(c))
            }
            other => Err(Error::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            }),
        }?;
        config.validate(path, str::to_string)?;
        Ok(config)
    }

    /// Checks the fields the model is built from: sizes and head counts of at least 1, key/value
    /// heads that divide the attention heads, a head count that divides `hidden_size` where no
    /// `head_dim` is given, and positive finite `rms_norm_eps` and rope bases. `field` spells a
    /// `config.json` name as the file at `path` does (a GGUF file's metadata key).
    pub fn validate(&self, path: &Path, field: impl Fn(&str) -> String) -> Result<()> {
        let bad = |name: &str, msg: String| Err(Error::model_field(path, field(name), msg));
        let (sizes, head_dim, floats) = match self {
            ModelConfig::Llama(c) => (
                [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("num_attention_heads", c.num_attention_heads),
                    ("num_key_value_heads", c.num_kv_heads()),
                    ("max_position_embeddings", c.max_position_embeddings),
                ],
                c.head_dim,
                vec![
                    ("rms_norm_eps", c.rms_norm_eps),
                    ("rope_theta", c.rope_theta),
                ],
            ),
            ModelConfig::Gemma3(c) => (
                [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("num_attention_heads", c.num_attention_heads),
                    ("num_key_value_heads", c.num_key_value_heads),
                    ("max_position_embeddings", c.max_position_embeddings),
                ],
                Some(c.head_dim),
                [
                    ("rms_norm_eps", Some(c.rms_norm_eps)),
                    ("rope_theta", Some(c.rope_theta)),
                    ("rope_local_base_freq", Some(c.rope_local_base_freq)),
                    ("query_pre_attn_scalar", Some(c.query_pre_attn_scalar)),
                    ("final_logit_softcapping", c.final_logit_softcapping),
                    ("attn_logit_softcapping", c.attn_logit_softcapping),
                ]
                .into_iter()
                .filter_map(|(name, v)| v.map(|v| (name, v)))
                .collect(),
            ),
        };
        for (name, value) in sizes {
            if value == 0 {
                return bad(name, "is 0; it must be at least 1".into());
            }
        }
        let heads = sizes[4].1;
        let (hidden, kv_heads) = (sizes[1].1, sizes[5].1);
        if !heads.is_multiple_of(kv_heads) {
            return bad(
                "num_key_value_heads",
                format!("= {kv_heads} does not divide num_attention_heads = {heads}"),
            );
        }
        match head_dim {
            Some(0) => return bad("head_dim", "is 0; it must be at least 1".into()),
            None if !hidden.is_multiple_of(heads) => {
                return bad(
                    "num_attention_heads",
                    format!(
                        "= {heads} does not divide hidden_size = {hidden}, and no head_dim is given"
                    ),
                )
            }
            _ => {}
        }
        for (name, value) in floats {
            if !(value.is_finite() && value > 0.0) {
                return bad(name, format!("= {value}; it must be a positive number"));
            }
        }
        let window = match self {
            ModelConfig::Gemma3(c) => Some(c.sliding_window),
            ModelConfig::Llama(c) => c.sliding_window,
        };
        if window == Some(0) {
            return bad("sliding_window", "is 0; it must be at least 1".into());
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Gemma3(c) => c.vocab_size,
        }
    }

    /// The HF architecture name of the model that is built: a multimodal checkpoint's text
    /// tower is a `Gemma3ForCausalLM` (what a merged export writes).
    pub fn architecture(&self) -> &'static str {
        match self {
            ModelConfig::Llama(c) => c.flavor.architecture(),
            ModelConfig::Gemma3(c) if c.gemma2 => "Gemma2ForCausalLM",
            ModelConfig::Gemma3(_) => "Gemma3ForCausalLM",
        }
    }

    /// `config.json` as transformers writes it, for merged exports.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let (mut v, model_type) = match self {
            ModelConfig::Llama(c) => (
                serde_json::to_value(c).unwrap_or_default(),
                c.flavor.model_type(),
            ),
            ModelConfig::Gemma3(c) => {
                let mut c = c.clone();
                // Spell out every layer's attention type; transformers v4 and v5 both read it.
                c.layer_types = Some(
                    (0..c.num_hidden_layers)
                        .map(|i| {
                            if c.is_sliding(i) {
                                "sliding_attention"
                            } else {
                                "full_attention"
                            }
                            .to_string()
                        })
                        .collect(),
                );
                let model_type = if c.gemma2 { "gemma2" } else { "gemma3_text" };
                (serde_json::to_value(&c).unwrap_or_default(), model_type)
            }
        };
        if let Some(obj) = v.as_object_mut() {
            obj.retain(|_, val| !val.is_null());
            obj.insert(
                "architectures".into(),
                serde_json::json!([self.architecture()]),
            );
            obj.insert("model_type".into(), model_type.into());
            obj.insert("torch_dtype".into(), torch_dtype.into());
        }
        v
    }

    /// The short family name used to pick a built-in chat template.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Llama(c) => match c.flavor {
                LlamaFlavor::Llama => "llama",
                LlamaFlavor::Mistral => "mistral",
                LlamaFlavor::Qwen2 | LlamaFlavor::Qwen3 => "qwen",
            },
            ModelConfig::Gemma3(_) => "gemma",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_architecture_is_named() {
        let err = ModelConfig::from_json_str(
            r#"{"architectures":["PhiForCausalLM"],"vocab_size":1}"#,
            Path::new("x/config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("PhiForCausalLM"), "{err}");
        assert!(err.contains("LlamaForCausalLM"), "{err}");
        assert!(err.starts_with("x/config.json"), "{err}");
    }

    const LLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":400,
        "hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"rms_norm_eps":1e-5}"#;
    const GEMMA: &str = r#"{"architectures":["Gemma3ForCausalLM"],"vocab_size":400,
        "hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"head_dim":16}"#;

    /// `base` with `field` set to the JSON value `value`, parsed; the error, if any.
    fn with(base: &str, field: &str, value: &str) -> Option<Error> {
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        ModelConfig::from_json_str(&v.to_string(), Path::new("m/config.json")).err()
    }

    #[test]
    fn a_valid_config_passes() {
        assert!(with(LLAMA, "rms_norm_eps", "1e-6").is_none());
        assert!(with(GEMMA, "rms_norm_eps", "1e-6").is_none());
        // With head_dim given, the heads need not divide hidden_size.
        assert!(with(GEMMA, "num_attention_heads", "6").is_none());
    }

    #[test]
    fn each_bad_field_is_named_with_the_file() {
        let cases = [
            (LLAMA, "num_hidden_layers", "0", "is 0"),
            (LLAMA, "num_attention_heads", "0", "is 0"),
            (LLAMA, "num_key_value_heads", "0", "is 0"),
            (LLAMA, "hidden_size", "0", "is 0"),
            (LLAMA, "intermediate_size", "0", "is 0"),
            (LLAMA, "vocab_size", "0", "is 0"),
            (LLAMA, "max_position_embeddings", "0", "is 0"),
            (
                LLAMA,
                "num_key_value_heads",
                "3",
                "does not divide num_attention_heads = 4",
            ),
            (
                LLAMA,
                "num_attention_heads",
                "6",
                "does not divide hidden_size = 64",
            ),
            (LLAMA, "head_dim", "0", "is 0"),
            (LLAMA, "rms_norm_eps", "-1e-6", "must be a positive number"),
            (LLAMA, "rms_norm_eps", "0", "must be a positive number"),
            (LLAMA, "rope_theta", "-1", "must be a positive number"),
            (GEMMA, "num_hidden_layers", "0", "is 0"),
            (GEMMA, "head_dim", "0", "is 0"),
            (GEMMA, "num_key_value_heads", "3", "does not divide"),
            (GEMMA, "rms_norm_eps", "-1e-6", "must be a positive number"),
            (
                GEMMA,
                "query_pre_attn_scalar",
                "0",
                "must be a positive number",
            ),
            (
                GEMMA,
                "final_logit_softcapping",
                "-30",
                "must be a positive number",
            ),
            (GEMMA, "sliding_window", "0", "is 0"),
        ];
        for (base, field, value, want) in cases {
            let e = with(base, field, value).unwrap_or_else(|| panic!("{field} = {value} passed"));
            let Error::BadModelConfig { field: named, .. } = &e else {
                panic!("{field} = {value}: {e:?}");
            };
            let text = e.to_string();
            assert_eq!(named, field, "{text}");
            assert!(text.starts_with("m/config.json: `"), "{text}");
            assert!(text.contains(want), "{field} = {value}: {text}");
        }
    }

    #[test]
    fn qwen_flavors_set_biases_norms_and_windows() {
        let parse = |arch: &str, extra: &str| {
            let text = format!(
                r#"{{"architectures":["{arch}"],"vocab_size":8,"hidden_size":64,
                "intermediate_size":8,"num_hidden_layers":4,"num_attention_heads":4{extra}}}"#
            );
            match ModelConfig::from_json_str(&text, Path::new("q/config.json")).unwrap() {
                ModelConfig::Llama(c) => c,
                other => panic!("{other:?}"),
            }
        };
        let q2 = parse("Qwen2ForCausalLM", r#","sliding_window":4096"#);
        assert_eq!(q2.flavor, LlamaFlavor::Qwen2);
        assert!(q2.qkv_bias() && !q2.o_bias() && !q2.qk_norm());
        // Off unless use_sliding_window, as transformers' Qwen2Config.
        assert_eq!(q2.layer_window(3), None);
        let q2 = parse(
            "Qwen2ForCausalLM",
            r#","use_sliding_window":true,"sliding_window":16,"max_window_layers":2"#,
        );
        let windows: Vec<_> = (0..4).map(|i| q2.layer_window(i)).collect();
        assert_eq!(windows, [None, None, Some(16), Some(16)]);
        let q3 = parse("Qwen3ForCausalLM", "");
        assert!(!q3.qkv_bias() && q3.qk_norm());
        assert_eq!(q3.head_dim(), 128, "transformers' Qwen3Config default");
        let q3 = parse(
            "Qwen3ForCausalLM",
            r#","use_sliding_window":true,"sliding_window":8,"layer_types":["sliding_attention","full_attention","full_attention","sliding_attention"]"#,
        );
        let windows: Vec<_> = (0..4).map(|i| q3.layer_window(i)).collect();
        assert_eq!(windows, [Some(8), None, None, Some(8)]);
        let llama = parse("LlamaForCausalLM", r#","sliding_window":8"#);
        assert_eq!(llama.layer_window(0), None);
        let mistral = parse("MistralForCausalLM", r#","sliding_window":8"#);
        assert_eq!(mistral.layer_window(0), Some(8));
        assert!(!mistral.qkv_bias() && !mistral.qk_norm());
        assert_eq!(parse("MistralForCausalLM", "").layer_window(3), Some(4096));
        let mistral = parse("MistralForCausalLM", r#","sliding_window":null"#);
        assert_eq!(mistral.layer_window(3), None);
        let json = ModelConfig::Llama(q3).to_hf_json("float32");
        assert_eq!(json["architectures"][0], "Qwen3ForCausalLM");
        assert_eq!(json["model_type"], "qwen3");
    }

    #[test]
    fn gemma3_conditional_generation_reads_its_text_config() {
        // The Hub's files leave most of text_config to Gemma3TextConfig's defaults.
        let c = ModelConfig::from_json_str(
            r#"{"architectures":["Gemma3ForConditionalGeneration"],"model_type":"gemma3",
                "text_config":{"hidden_size":2560,"intermediate_size":10240,
                "model_type":"gemma3_text","num_hidden_layers":34,"sliding_window":1024},
                "vision_config":{"hidden_size":1152}}"#,
            Path::new("g/config.json"),
        )
        .unwrap();
        let ModelConfig::Gemma3(g) = &c else {
            panic!("{c:?}")
        };
        assert!(g.conditional_generation);
        assert_eq!((g.hidden_size, g.num_hidden_layers), (2560, 34));
        assert_eq!(
            (g.vocab_size, g.head_dim, g.num_attention_heads),
            (262_208, 256, 8)
        );
        // A merged export is the text model.
        assert_eq!(
            c.to_hf_json("bfloat16")["architectures"][0],
            "Gemma3ForCausalLM"
        );
        let e = ModelConfig::from_json_str(
            r#"{"architectures":["Gemma3ForConditionalGeneration"],"text_config":3}"#,
            Path::new("g/config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("g/config.json") && e.contains("text_config"),
            "{e}"
        );
    }

    #[test]
    fn gemma_layer_pattern() {
        let c: Gemma3Config = serde_json::from_str(
            r#"{"vocab_size":8,"hidden_size":8,"intermediate_size":8,"num_hidden_layers":12,
                "num_attention_heads":1,"num_key_value_heads":1,"head_dim":8,"sliding_window_pattern":6}"#,
        )
        .unwrap();
        let globals: Vec<usize> = (0..12).filter(|&i| !c.is_sliding(i)).collect();
        assert_eq!(globals, vec![5, 11]);
    }
}
