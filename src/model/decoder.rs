//! The decoder-layer loop both architectures share: how a layer runs (plain, cached,
//! checkpointed), the [`DecoderLayer`] trait each architecture's block implements, the tied or
//! untied head, and the merged state dict an export writes.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::mask::AttnMask;
use super::norm::RmsNorm;
use super::projections::{merged_projection_tensors, name_projections};
use super::LmHead;
use crate::autograd::{checkpoint, Checkpointing, Phase, Stash};
use crate::lora::Linear;
use crate::quant::FrozenWeight;
use crate::Result;

/// How a decoder layer runs this time.
#[derive(Debug)]
pub enum Pass<'a> {
    /// A plain forward pass (training without checkpointing, evaluation, scoring).
    Plain,
    /// Generation: the new keys and values are appended to the layer's cache.
    Cached(&'a mut LayerCache),
    /// A run of a checkpointed layer: attention keeps its output for the replay, and the
    /// replay reads it back and may skip products whose value only feeds the layer output.
    Checkpointed(Phase<'a>),
}

impl<'a> Pass<'a> {
    /// Whether this is a checkpoint replay, whose output value is never read.
    pub fn is_replay(&self) -> bool {
        matches!(self, Pass::Checkpointed(p) if p.is_replay())
    }

    /// The KV cache and the checkpoint stash, whichever this pass has.
    pub fn parts(self) -> (Option<&'a mut LayerCache>, Option<&'a mut Stash>) {
        match self {
            Pass::Plain => (None, None),
            Pass::Cached(c) => (Some(c), None),
            Pass::Checkpointed(Phase::Record(s) | Phase::Replay(s)) => (None, Some(s)),
        }
    }
}

/// A decoder block, as the shared layer loop runs it.
pub trait DecoderLayer: Clone + Send + Sync + 'static {
    /// `x: [B, T, H]` through the block, with `rope = (cos, sin)` and an additive mask.
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &AttnMask,
        pass: Pass<'_>,
    ) -> Result<Tensor>;

    /// The block's norms, with their HF paths below `model.layers.{i}.`.
    fn norms(&self) -> Vec<(&'static str, &RmsNorm)>;

    /// The seven projections, in [`PROJECTION_PATHS`](super::projections::PROJECTION_PATHS)' order.
    fn projections(&self) -> [&Linear; 7];
}

/// A decoder's weights under their HF names, each projection with its adapter merged in: the
/// embedding, the final norm, an untied head, and every layer's norms and projections.
pub fn merged_decoder_tensors<L: DecoderLayer>(
    embed_tokens: &Tensor,
    norm: &RmsNorm,
    lm_head: Option<&Linear>,
    layers: &[L],
) -> Result<Vec<(String, Tensor)>> {
    let mut out = vec![
        (
            "model.embed_tokens.weight".to_string(),
            embed_tokens.clone(),
        ),
        ("model.norm.weight".to_string(), norm.weight().clone()),
    ];
    if let Some(h) = lm_head {
        out.push(("lm_head.weight".into(), h.merged_weight()?));
    }
    for (i, l) in layers.iter().enumerate() {
        for (path, n) in l.norms() {
            out.push((
                format!("model.layers.{i}.{path}.weight"),
                n.weight().clone(),
            ));
        }
    }
    out.extend(merged_projection_tensors(name_projections(
        layers.iter().map(L::projections),
    ))?);
    Ok(out)
}

/// Runs `layer`, checkpointed when `checkpointing` is set and there is no KV cache (training).
pub fn run_layer<L: DecoderLayer>(
    layer: &L,
    x: &Tensor,
    rope: &(Tensor, Tensor),
    mask: &AttnMask,
    checkpointing: Option<&Checkpointing>,
    cache: Option<&mut LayerCache>,
) -> Result<Tensor> {
    match (checkpointing, cache) {
        (_, Some(cache)) => layer.forward(x, rope, mask, Pass::Cached(cache)),
        (Some(c), None) => {
            let (layer, rope, mask) = (layer.clone(), rope.clone(), mask.clone());
            checkpoint(x, &c.sink, c.stash, move |x, phase| {
                layer.forward(x, &rope, &mask, Pass::Checkpointed(phase))
            })
        }
        (None, None) => layer.forward(x, rope, mask, Pass::Plain),
    }
}

/// The head of a model whose `lm_head` is `None` when tied to `embed_tokens`.
pub fn head_or_tied(
    lm_head: Option<&Linear>,
    embed_tokens: &Tensor,
    softcap: Option<f64>,
) -> LmHead {
    LmHead {
        weight: match lm_head {
            Some(head) => head.weight().clone(),
            None => FrozenWeight::Dense(embed_tokens.clone()),
        },
        softcap,
    }
}
