//! `Gemma3ForCausalLM` (text): q/k norms, sliding-window and global layers with their own
//! rope bases, scaled embeddings, four norms per layer, `query_pre_attn_scalar`, and
//! attention/final logit softcapping. Follows transformers' `models/gemma3/modeling_gemma3.py`.
//! `Gemma2ForCausalLM` is the same decoder without the q/k norms, with its attention logits
//! soft-capped and one rope base (`models/gemma2/modeling_gemma2.py`).
//! A `Gemma3ForConditionalGeneration` checkpoint loads as its text tower: the same decoder, whose
//! projections PEFT names `model.language_model.layers.…` there.

use candle_core::Tensor;

use super::attention::{attend, KeyValues};
use super::cache::KvCache;
use super::decoder::{head_or_tied, merged_decoder_tensors, run_layer, DecoderLayer, Pass};
use super::mask::{pass_padding, AttnMask, Segments};
use super::mlp::GatedMlp;
use super::norm::RmsNorm;
use super::projections::{
    layer_projections, layer_projections_mut, name_projections_under, AttnProjections,
};
use super::rope::{apply_rotary, Rotary};
use super::weights::Weights;
use super::{CausalLm, LmHead};
use crate::autograd::{release, Checkpointing};
use crate::config::Gemma3Config;
use crate::kernels::glu::MlpActivation;
use crate::lora::{Adaptable, Linear, Recompute};
use crate::Result;

#[derive(Clone)]
struct Attention {
    proj: AttnProjections,
    /// Gemma 3's per-head q/k norms (Gemma 2 has none).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
}

#[derive(Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: GatedMlp,
    post_feedforward_layernorm: RmsNorm,
    sliding: bool,
}

/// A Gemma 3 text decoder with its tied head.
pub struct Gemma3 {
    cfg: Gemma3Config,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rotary_global: Rotary,
    rotary_local: Rotary,
    checkpointing: Option<Checkpointing>,
}

impl Gemma3 {
    /// The token embeddings of `input_ids: [B, T]`, scaled by √hidden (transformers casts the
    /// scale to the embedding dtype before multiplying).
    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        let emb = self
            .embed_tokens
            .embedding(&input_ids.flatten_all()?)?
            .reshape((b, t, h))?;
        let device = self.embed_tokens.device();
        let scale =
            Tensor::new(&[(h as f32).sqrt()], device)?.to_dtype(self.embed_tokens.dtype())?;
        Ok(emb.broadcast_mul(&scale)?)
    }

    pub fn load(cfg: Gemma3Config, w: &Weights) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim;
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps;
        let norm = |name: &str, n: usize| -> Result<RmsNorm> {
            Ok(RmsNorm::new(w.get(name, &[n])?, eps, true))
        };
        let embed_tokens = w.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        // No capacity on the file's word: a huge layer count ends at the first missing layer.
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ab = cfg.attention_bias;
            let im = cfg.intermediate_size;
            layers.push(Layer {
                input_layernorm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                self_attn: Attention {
                    proj: AttnProjections::load(
                        w,
                        &format!("{p}.self_attn"),
                        h,
                        (nh, nkv, hd),
                        ab,
                        ab,
                    )?,
                    qk_norm: if cfg.gemma2 {
                        None
                    } else {
                        Some((
                            norm(&format!("{p}.self_attn.q_norm.weight"), hd)?,
                            norm(&format!("{p}.self_attn.k_norm.weight"), hd)?,
                        ))
                    },
                    n_head: nh,
                    n_kv_head: nkv,
                    head_dim: hd,
                    scale: 1.0 / cfg.query_pre_attn_scalar.sqrt(),
                    softcap: cfg.attn_logit_softcapping,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                pre_feedforward_layernorm: norm(
                    &format!("{p}.pre_feedforward_layernorm.weight"),
                    h,
                )?,
                mlp: GatedMlp::load(
                    w,
                    &format!("{p}.mlp"),
                    h,
                    im,
                    false,
                    MlpActivation::GeluTanh,
                )?,
                post_feedforward_layernorm: norm(
                    &format!("{p}.post_feedforward_layernorm.weight"),
                    h,
                )?,
                sliding: cfg.is_sliding(i),
            });
        }
        let final_norm = norm("model.norm.weight", h)?;
        let lm_head = if !cfg.tie_word_embeddings && w.contains("lm_head.weight") {
            Some(w.linear("lm_head", cfg.vocab_size, h, false)?)
        } else {
            None
        };
        let rotary_global = Rotary::new(hd, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let rotary_local = Rotary::new(hd, cfg.rope_local_base_freq, None);
        Ok(Self {
            cfg,
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            rotary_global,
            rotary_local,
            checkpointing: None,
        })
    }

    pub fn config(&self) -> &Gemma3Config {
        &self.cfg
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
            ("pre_feedforward_layernorm", &self.pre_feedforward_layernorm),
            (
                "post_feedforward_layernorm",
                &self.post_feedforward_layernorm,
            ),
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
        let (hs, remake) = self.input_layernorm.forward_remakeable(x)?;
        let a = self
            .self_attn
            .forward(&hs, &remake, &rope.0, &rope.1, mask, pass)?;
        release(&hs)?;
        let a = self.post_attention_layernorm.forward(&a)?;
        let x = (x + &a)?;
        // The post-norm outputs are read by the residual sums only, whose backward reads
        // neither summand, and the norms' backward reads their input, not their output.
        release(&a)?;
        let (hs, remake) = self.pre_feedforward_layernorm.forward_remakeable(&x)?;
        let m = self.mlp.forward(&hs, &remake)?;
        release(&hs)?;
        let m = self.post_feedforward_layernorm.forward(&m)?;
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
        // `[B, T, heads, D]`, contiguous: q and k are normalised per head before the transpose
        // (the norm is over D), and the rope kernel reads the transposed views through their
        // strides, so only v is copied into `[B, heads, T, D]`.
        let (q, k, v_in) = self.proj.heads(
            x,
            remake,
            (self.n_head, self.n_kv_head, self.head_dim),
            self.qk_norm.as_ref(),
        )?;
        let v = v_in.contiguous()?;
        // The copy is the projection's last reader (and reads nothing in backward).
        if !v_in.is_contiguous() {
            release(&v_in)?;
        }
        // The normed heads' last reader is the rotation, which does not read them in backward
        // (nor does the norm read its output): free them.
        let (q_in, k_in) = (q, k);
        let q = apply_rotary(&q_in, cos, sin)?;
        let k = apply_rotary(&k_in, cos, sin)?;
        release(&q_in)?;
        release(&k_in)?;
        let (cache, stash) = pass.parts();
        let kv = KeyValues::of_pass(k, v, cache)?;
        let o = attend(&q, kv, self.scale, self.softcap, mask, stash)?;
        // `[B, T, heads, head_dim]` as a view: the projection flattens it to rows itself, so the
        // graph keeps `o` once (flash attention's backward reads it) and not a row-major copy too.
        self.proj.o_proj.forward(&o.transpose(1, 2)?)
    }
}

impl CausalLm for Gemma3 {
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
        let global_mask = AttnMask::new(b, t, offset, pad.as_deref(), None, dtype, device)?;
        let local_mask = AttnMask::new(
            b,
            t,
            offset,
            pad.as_deref(),
            Some(self.cfg.sliding_window),
            dtype,
            device,
        )?;
        let global_rope = self.rotary_global.cos_sin(offset, t, dtype, device)?;
        let local_rope = self.rotary_local.cos_sin(offset, t, dtype, device)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let (mask, rope) = if layer.sliding {
                (&local_mask, &local_rope)
            } else {
                (&global_mask, &global_rope)
            };
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = run_layer(
                layer,
                &x,
                rope,
                mask,
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
        let global_mask = AttnMask::packed(segments, None, dtype, device)?;
        let local_mask = AttnMask::packed(segments, Some(self.cfg.sliding_window), dtype, device)?;
        let positions = segments.positions();
        let global_rope = self
            .rotary_global
            .cos_sin_at(&positions, (b, t), dtype, device)?;
        let local_rope = self
            .rotary_local
            .cos_sin_at(&positions, (b, t), dtype, device)?;
        for layer in &self.layers {
            let (mask, rope) = if layer.sliding {
                (&local_mask, &local_rope)
            } else {
                (&global_mask, &global_rope)
            };
            x = run_layer(layer, &x, rope, mask, self.checkpointing.as_ref(), None)?;
        }
        self.norm.forward(&x)
    }

    fn lm_head(&self) -> LmHead {
        head_or_tied(
            self.lm_head.as_ref(),
            &self.embed_tokens,
            self.cfg.final_logit_softcapping,
        )
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

impl Adaptable for Gemma3 {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        // Inside a multimodal checkpoint the text model is `model.language_model` (PEFT's and
        // vLLM's module names for Gemma3ForConditionalGeneration).
        let model = if self.cfg.conditional_generation {
            "model.language_model"
        } else {
            "model"
        };
        name_projections_under(model, self.layers.iter_mut().map(Layer::projections_mut))
    }

    fn set_gradient_checkpointing(&mut self, checkpointing: Option<Checkpointing>) {
        self.checkpointing = checkpointing;
    }
}
