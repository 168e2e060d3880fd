//! A decoder layer's seven projections: their HF paths in PEFT's order, the attention
//! projections, and the per-layer naming and merging that exports and adapters share. Each one
//! loads as a quantizable [`crate::lora::Linear`].

use candle_core::Tensor;

use super::mlp::GatedMlp;
use super::norm::RmsNorm;
use super::weights::Weights;
use crate::lora::{Linear, Recompute};
use crate::Result;

/// HF paths of a decoder layer's seven projections, in PEFT's order.
pub const PROJECTION_PATHS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The attention projections of a decoder layer.
#[derive(Debug, Clone)]
pub struct AttnProjections {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

impl AttnProjections {
    /// Loads `{prefix}.{q,k,v,o}_proj` for `n_head`/`n_kv_head` heads of `head_dim`, q/k/v
    /// with biases when `qkv_bias` (Qwen2's frozen biases), o_proj when `o_bias`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        (n_head, n_kv_head, head_dim): (usize, usize, usize),
        qkv_bias: bool,
        o_bias: bool,
    ) -> Result<Self> {
        let (q, kv) = (n_head * head_dim, n_kv_head * head_dim);
        Ok(Self {
            q_proj: w.projection(&format!("{prefix}.q_proj"), q, hidden, qkv_bias)?,
            k_proj: w.projection(&format!("{prefix}.k_proj"), kv, hidden, qkv_bias)?,
            v_proj: w.projection(&format!("{prefix}.v_proj"), kv, hidden, qkv_bias)?,
            o_proj: w.projection(&format!("{prefix}.o_proj"), hidden, q, o_bias)?,
        })
    }

    /// The query, key and value heads of `x` (`[B, T, hidden]`), each a `[B, heads, T, D]`
    /// transposed view of a contiguous `[B, T, heads, D]`. With `qk_norm` (Qwen3, Gemma 3), q
    /// and k are normalised per head first, over D, as transformers orders it. `remake` makes
    /// `x` again for the projections' backward.
    pub fn heads(
        &self,
        x: &Tensor,
        remake: &Recompute,
        (n_head, n_kv_head, head_dim): (usize, usize, usize),
        qk_norm: Option<&(RmsNorm, RmsNorm)>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let heads = |l: &Linear, n: usize| -> Result<Tensor> {
            Ok(l.forward_recomputed(x, true, remake)?
                .reshape((b, t, n, head_dim))?)
        };
        let (q, k) = (
            heads(&self.q_proj, n_head)?,
            heads(&self.k_proj, n_kv_head)?,
        );
        let (q, k) = match qk_norm {
            Some((qn, kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            None => (q, k),
        };
        let v = heads(&self.v_proj, n_kv_head)?;
        Ok((q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?))
    }
}

/// A layer's seven projections in [`PROJECTION_PATHS`] order.
pub fn layer_projections<'a>(a: &'a AttnProjections, m: &'a GatedMlp) -> [&'a Linear; 7] {
    [
        &a.q_proj,
        &a.k_proj,
        &a.v_proj,
        &a.o_proj,
        &m.gate_proj,
        &m.up_proj,
        &m.down_proj,
    ]
}

/// Mutable [`layer_projections`].
pub fn layer_projections_mut<'a>(
    a: &'a mut AttnProjections,
    m: &'a mut GatedMlp,
) -> [&'a mut Linear; 7] {
    [
        &mut a.q_proj,
        &mut a.k_proj,
        &mut a.v_proj,
        &mut a.o_proj,
        &mut m.gate_proj,
        &mut m.up_proj,
        &mut m.down_proj,
    ]
}

/// Names each layer's projections `model.layers.{i}.{path}`.
pub fn name_projections<T>(layers: impl IntoIterator<Item = [T; 7]>) -> Vec<(String, T)> {
    name_projections_under("model", layers)
}

/// Names each layer's projections `{model}.layers.{i}.{path}`: `model` is the text model's
/// module path (`model.language_model` inside a multimodal checkpoint).
pub fn name_projections_under<T>(
    model: &str,
    layers: impl IntoIterator<Item = [T; 7]>,
) -> Vec<(String, T)> {
    layers
        .into_iter()
        .enumerate()
        .flat_map(|(i, ps)| {
            PROJECTION_PATHS
                .iter()
                .zip(ps)
                .map(move |(p, l)| (format!("{model}.layers.{i}.{p}"), l))
        })
        .collect()
}

/// `{name}.weight` (with any LoRA merged in) and `{name}.bias` of each projection.
pub fn merged_projection_tensors(named: Vec<(String, &Linear)>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(named.len() * 2);
    for (name, linear) in named {
        out.push((format!("{name}.weight"), linear.merged_weight()?));
        if let Some(b) = linear.bias() {
            out.push((format!("{name}.bias"), b.clone()));
        }
    }
    Ok(out)
}
