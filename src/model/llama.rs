//! The Llama family: `LlamaForCausalLM` (Llama 2/3/3.1/3.2, SmolLM2), `MistralForCausalLM`
//! (a sliding window over every layer), `Qwen2ForCausalLM`
//! (Qwen2, Qwen2.5: frozen q/k/v biases) and `Qwen3ForCausalLM` (dense Qwen3: per-head q/k
//! RMSNorm before the rotation). Grouped-query attention, llama3 rope scaling, tied or untied
//! head, and the sliding window of Qwen's `use_sliding_window` layers. Follows transformers'
//! `models/{llama,mistral,qwen2,qwen3}/modeling_*.py`; the members differ only in their attention, so
//! they are one decoder with a [`crate::config::LlamaFlavor`] rather than three files.

use candle_core::Tensor;

use super::attention::{attend, KeyValues};
use super::cache::KvCache;
use super::decoder::{head_or_tied, merged_decoder_tensors, run_layer, DecoderLayer, Pass};
use super::mask::{pass_padding, AttnMask, Segments};
use super::mlp::GatedMlp;
use super::norm::RmsNorm;
use super::projections::{
    layer_projections, layer_projections_mut, name_projections, AttnProjections,
};
use super::rope::{apply_rotary, Rotary};
use super::weights::Weights;
use super::{CausalLm, LmHead};
use crate::autograd::{release, Checkpointing};
use crate::config::LlamaConfig;
use crate::kernels::glu::MlpActivation;
use crate::lora::{Adaptable, Linear, Recompute};
use crate::Result;

#[derive(Clone)]
struct Attention {
    proj: AttnProjections,
    /// Qwen3: RMSNorm over each head of q and k, before the rotation.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

#[derive(Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
    /// The sliding window of this layer's attention, if it has one.
    window: Option<usize>,
}

/// A Llama decoder with a causal-LM head.
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `None` when the head is tied to the embeddings.
    lm_head: Option<Linear>,
    rotary: Rotary,
    checkpointing: Option<Checkpointing>,
}

impl Llama {
    /// The token embeddings of `input_ids: [B, T]`.
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        Ok(self
            .embed_tokens
            .embedding(&input_ids.flatten_all()?)?
            .reshape((b, t, self.cfg.hidden_size))?)
    }

    pub fn load(
        cfg: LlamaConfig,
        w: &Weights,
        rope_freq_factors: Option<Vec<f32>>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        // No capacity on the file's word: a huge layer count ends at the first missing layer.
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mb = cfg.mlp_bias;
            let head_norm = |which: &str| -> Result<RmsNorm> {
                let name = format!("{p}.self_attn.{which}.weight");
                Ok(RmsNorm::new(w.get(&name, &[hd])?, cfg.rms_norm_eps, false))
            };
            let qk_norm = if cfg.qk_norm() {
                Some((head_norm("q_norm")?, head_norm("k_norm")?))
            } else {
                None
            };
            layers.push(Layer {
                input_layernorm: RmsNorm::new(
                    w.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                    cfg.rms_norm_eps,
                    false,
                ),
                self_attn: Attention {
                    proj: AttnProjections::load(
                        w,
                        &format!("{p}.self_attn"),
                        h,
                        (nh, nkv, hd),
                        cfg.qkv_bias(),
                        cfg.o_bias(),
                    )?,
                    qk_norm,
                    n_head: nh,
                    n_kv_head: nkv,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::new(
                    w.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    cfg.rms_norm_eps,
                    false,
                ),
                mlp: GatedMlp::load(
                    w,
                    &format!("{p}.mlp"),
                    h,
                    cfg.intermediate_size,
                    mb,
                    MlpActivation::Silu,
                )?,
                window: cfg.layer_window(i),
            });
        }
        let norm = RmsNorm::new(w.get("model.norm.weight", &[h])?, cfg.rms_norm_eps, false);
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            Some(w.linear("lm_head", cfg.vocab_size, h, false)?)
        } else {
            None
        };
        let mut rotary = Rotary::new(hd, cfg.rope_theta, cfg.rope_scaling.as_ref());
        if let Some(f) = rope_freq_factors {
            rotary = rotary.with_freq_factors(&f)?;
        }
        Ok(Self {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            checkpointing: None,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The full mask, and the sliding one when some layer has a window (all windowed layers
    /// share the config's one window).
    fn masks(&self, make: impl Fn(Option<usize>) -> Result<AttnMask>) -> Result<Masks> {
        let window = self.layers.iter().find_map(|l| l.window);
        Ok(Masks {
            full: make(None)?,
            sliding: window.map(|w| make(Some(w))).transpose()?,
        })
    }
}

/// A pass's attention masks: the full one and, if any layer slides, the windowed one.
struct Masks {
    full: AttnMask,
    sliding: Option<AttnMask>,
}

impl Masks {
    fn of(&self, window: Option<usize>) -> &AttnMask {
        match (window, &self.sliding) {
            (Some(_), Some(m)) => m,
            _ => &self.full,
        }
    }
}

impl Layer {
    fn projections_mut(&mut self) -> [&mut Linear; 7] {
        layer_projections_mut(&mut self.self_attn.proj, &mut self.mlp)
    }
}

impl DecoderLayer for Layer {
    fn norms(&self) -> Vec<(&'static str, &RmsNorm)> {
        let mut norms = vec![
            ("input_layernorm", &self.input_layernorm),
            ("post_attention_layernorm", &self.post_attention_layernorm),
        ];
        if let Some((q, k)) = &self.self_attn.qk_norm {
            norms.extend([("self_attn.q_norm", q), ("self_attn.k_norm", k)]);
        }
        norms
    }

    fn projections(&self) -> [&Linear; 7] {
        layer_projections(&self.self_attn.proj, &self.mlp)
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &AttnMask,
        pass: Pass<'_>,
    ) -> Result<Tensor> {
        // The normed inputs are read by the projections only, which remake them in backward
        // from the norms' inputs (RmsNorm::forward_remakeable): free them once those have run.
        let (h, remake) = self.input_layernorm.forward_remakeable(x)?;
        let replay = pass.is_replay();
        let a = self
            .self_attn
            .forward(&h, &remake, &rope.0, &rope.1, mask, pass)?;
        release(&h)?;
        let x = (x + &a)?;
        // The projection outputs are read by the residual sums only, whose backward reads
        // neither summand, and the projections' own backward does not read them: free them.
        release(&a)?;
        let (h, remake) = self.post_attention_layernorm.forward_remakeable(&x)?;
        let m = if replay {
            // Only the residual sum reads the MLP output.
            self.mlp.forward_graph_only(&h, &remake)?
        } else {
            self.mlp.forward(&h, &remake)?
        };
        release(&h)?;
        let out = (x + &m)?;
        release(&m)?;
        Ok(out)
    }
}

impl Attention {
    /// `remake` makes `x` again for the q/k/v projections' backward (see
    /// [`RmsNorm::forward_remakeable`]).
    fn forward(
        &self,
        x: &Tensor,
        remake: &Recompute,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        pass: Pass<'_>,
    ) -> Result<Tensor> {
        // Qwen3 normalises each head over D before the transpose (transformers' order); the
        // norm reads its input, not its output, in backward.
        let (q, k, v) = self.proj.heads(
            x,
            remake,
            (self.n_head, self.n_kv_head, self.head_dim),
            self.qk_norm.as_ref(),
        )?;
        // The transposed views go in as they are: the rope kernel reads them through their
        // strides and writes contiguous heads. Rotation and copy are their inputs' last readers,
        // and neither they nor the projections read them in backward: free them.
        let (q_in, k_in, v_in) = (q, k, v);
        let q = apply_rotary(&q_in, cos, sin)?;
        let k = apply_rotary(&k_in, cos, sin)?;
        let v = v_in.contiguous()?;
        release(&q_in)?;
        release(&k_in)?;
        if !v_in.is_contiguous() {
            release(&v_in)?;
        }
        let (cache, stash) = pass.parts();
        let kv = KeyValues::of_pass(k, v, cache)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = attend(&q, kv, scale, None, mask, stash)?;
        // `[B, T, heads, head_dim]` as a view: the projection flattens it to rows itself, so the
        // graph keeps `o` once (flash attention's backward reads it) and not a row-major copy too.
        self.proj.o_proj.forward(&o.transpose(1, 2)?)
    }
}

impl CausalLm for Llama {
    fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask_01: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.seq_len).unwrap_or(0);
        let dtype = self.embed_tokens.dtype();
        let device = self.embed_tokens.device();
        let mut x = self.embed(input_ids)?;
        let pad = pass_padding(attention_mask_01, cache.as_deref_mut(), b, t)?;
        let masks = self
            .masks(|window| AttnMask::new(b, t, offset, pad.as_deref(), window, dtype, device))?;
        let rope = self.rotary.cos_sin(offset, t, dtype, device)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = run_layer(
                layer,
                &x,
                &rope,
                masks.of(layer.window),
                self.checkpointing.as_ref(),
                layer_cache,
            )?;
        }
        if let Some(c) = cache {
            c.seq_len += t;
        }
        self.norm.forward(&x)
    }

    fn forward_hidden_packed(&self, input_ids: &Tensor, segments: &Segments) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let dtype = self.embed_tokens.dtype();
        let device = self.embed_tokens.device();
        let mut x = self.embed(input_ids)?;
        // The sliding window counts within each conversation.
        let masks = self.masks(|window| AttnMask::packed(segments, window, dtype, device))?;
        let rope = self
            .rotary
            .cos_sin_at(&segments.positions(), (b, t), dtype, device)?;
        for layer in &self.layers {
            let mask = masks.of(layer.window);
            x = run_layer(layer, &x, &rope, mask, self.checkpointing.as_ref(), None)?;
        }
        self.norm.forward(&x)
    }

    fn lm_head(&self) -> LmHead {
        head_or_tied(self.lm_head.as_ref(), &self.embed_tokens, None)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn context_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn device(&self) -> &candle_core::Device {
        self.embed_tokens.device()
    }

    fn merged_state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        merged_decoder_tensors(
            &self.embed_tokens,
            &self.norm,
            self.lm_head.as_ref(),
            &self.layers,
        )
    }
}

impl Adaptable for Llama {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        name_projections(self.layers.iter_mut().map(Layer::projections_mut))
    }

    fn set_gradient_checkpointing(&mut self, checkpointing: Option<Checkpointing>) {
        self.checkpointing = checkpointing;
    }
}
