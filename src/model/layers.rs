//! Layers shared by the architectures, written only with ops whose backward Candle
//! implements (see `shared/reference/candle-0.11.md`: the fused `rms_norm`, `rope*` and
//! `softmax_last_dim` pass no gradient, so none of them is used here).

use candle_core::{DType, Device, Tensor, D};

use std::sync::{Arc, OnceLock};

use super::weights::Weights;
use super::LmHead;
use crate::autograd::{
    checkpoint, release, with_backward, with_backward_value, Checkpointing, ForwardOp, Phase,
    Stash, Value,
};
use crate::config::RopeScaling;
use crate::kernels::glu::MlpActivation;
use crate::kernels::{self, Kernel};
use crate::lora::{Linear, Recompute};
use crate::quant::FrozenWeight;
use crate::Result;

/// RMSNorm computed in f32, as transformers does: `x / sqrt(mean(x²) + eps) * w`.
///
/// With `unit_offset` the scale is `(1 + w)` (Gemma's `Gemma3RMSNorm`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    unit_offset: bool,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64, unit_offset: bool) -> Self {
        Self {
            weight,
            eps,
            unit_offset,
        }
    }

    /// The stored weight (HF convention: Gemma's is the offset from 1).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The norm as one op whose backward keeps only `x` (and recomputes the row scale):
    /// `dx = r·h − x·r³·mean(h∘x)` with `h = g∘w` and `r = 1/sqrt(mean(x²) + eps)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::use_fused(Kernel::RmsNorm, x.device()) {
            self.forward_fused(x)
        } else {
            self.forward_unfused(x)
        }
    }

    /// [`Self::forward`], and a [`Recompute`] that makes the same value again from `x`, which
    /// the norm's backward keeps anyway (the norm does not read its own output). Projections
    /// given it ([`Linear::forward_recomputed`]) do not read the output in backward either, so
    /// once they have run the caller can [`release()`] it: the graph then holds one
    /// `[tokens, hidden]` tensor per norm fewer.
    pub fn forward_remakeable(&self, x: &Tensor) -> Result<(Tensor, Recompute)> {
        let (eps, unit_offset) = (self.eps, self.unit_offset);
        if kernels::use_fused(Kernel::RmsNorm, x.device()) {
            let x = x.contiguous()?;
            let y = self.forward_fused(&x)?;
            let (x, w) = (x.detach(), self.weight.detach());
            let remake: Recompute =
                Arc::new(move || kernels::rms_norm::forward(&x, &w, eps, unit_offset));
            Ok((y, remake))
        } else {
            let y = self.forward_unfused(x)?;
            let (x, norm) = (x.detach(), self.clone());
            let remake: Recompute = Arc::new(move || norm.values(&x));
            Ok((y, remake))
        }
    }

    /// [`Self::forward`] with tensor ops (the CPU path and the kernels' reference).
    pub fn forward_unfused(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.values(&x.detach())?;
        let w = self.weight.to_dtype(DType::F32)?;
        let w = if self.unit_offset { (w + 1.0)? } else { w };
        let eps = self.eps;
        with_backward("rms-norm", y, &[x], move |inputs, g| {
            let x = inputs[0].detach().to_dtype(DType::F32)?;
            let h = g.to_dtype(DType::F32)?.broadcast_mul(&w)?;
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
            let mean_hx = ((&h * &x)?.sum_keepdim(D::Minus1)? / x.dim(D::Minus1)? as f64)?;
            let gx = (h.broadcast_mul(&r)? - x.broadcast_mul(&(r.powf(3.0)? * mean_hx)?)?)?;
            Ok(vec![Some(gx.to_dtype(inputs[0].dtype())?)])
        })
    }

    /// [`Self::forward`] with the fused kernels of [`crate::kernels::rms_norm`].
    pub fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let w = self.weight.detach().to_dtype(x.dtype())?.contiguous()?;
        let (eps, unit_offset) = (self.eps, self.unit_offset);
        let op = ForwardOp::Two(Box::new(kernels::rms_norm::forward_op(eps, unit_offset)));
        with_backward_value("rms-norm", Value::Op(op), &[&x, &w], move |inputs, _, g| {
            let gx = kernels::rms_norm::backward(inputs[0], inputs[1], g, eps, unit_offset)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Ok(vec![Some(gx), None])
        })
    }

    /// The forward values, as transformers computes them.
    fn values(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if self.unit_offset {
            // Gemma multiplies in f32 and casts afterwards.
            let w = (self.weight.to_dtype(DType::F32)? + 1.0)?;
            Ok(normed.broadcast_mul(&w)?.to_dtype(dtype)?)
        } else {
            // Llama casts back to the input dtype before the weight multiply.
            Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
        }
    }
}

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

    /// The seven projections, in [`PROJECTION_PATHS`]' order.
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
    /// Loads `{prefix}.{q,k,v,o}_proj` for `n_head`/`n_kv_head` heads of `head_dim`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        (n_head, n_kv_head, head_dim): (usize, usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let (q, kv) = (n_head * head_dim, n_kv_head * head_dim);
        Ok(Self {
            q_proj: w.linear(&format!("{prefix}.q_proj"), q, hidden, bias)?,
            k_proj: w.linear(&format!("{prefix}.k_proj"), kv, hidden, bias)?,
            v_proj: w.linear(&format!("{prefix}.v_proj"), kv, hidden, bias)?,
            o_proj: w.linear(&format!("{prefix}.o_proj"), hidden, q, bias)?,
        })
    }
}

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub act: MlpActivation,
}

impl GatedMlp {
    /// Loads `{prefix}.{gate,up,down}_proj`.
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
        act: MlpActivation,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: w.linear(&format!("{prefix}.gate_proj"), intermediate, hidden, bias)?,
            up_proj: w.linear(&format!("{prefix}.up_proj"), intermediate, hidden, bias)?,
            down_proj: w.linear(&format!("{prefix}.down_proj"), hidden, intermediate, bias)?,
            act,
        })
    }

    /// `remake` makes `x` again for the LoRA backward of `gate_proj` and `up_proj` (see
    /// [`RmsNorm::forward_remakeable`]), so the graph does not hold `x`.
    pub fn forward(&self, x: &Tensor, remake: &Recompute) -> Result<Tensor> {
        self.apply(x, true, remake)
    }

    /// [`GatedMlp::forward`] with the same backward graph but an unspecified (zero) output
    /// value: for a checkpoint replay whose MLP output only feeds the layer output, the
    /// `down_proj` product is never computed (its backward needs only its input).
    pub fn forward_graph_only(&self, x: &Tensor, remake: &Recompute) -> Result<Tensor> {
        self.apply(x, false, remake)
    }

    /// `down(act(gate(x)) · up(x))`. The graph does not hold `h = act(g)·u`, the widest
    /// activation of the layer: the activation's backward keeps `g` and `u` (not `h`), and
    /// `down_proj`'s backward remakes `h` from them for its LoRA `A` gradient, in the same op
    /// as the forward, so bit for bit (its frozen product reads only the output gradient).
    fn apply(&self, x: &Tensor, value: bool, remake: &Recompute) -> Result<Tensor> {
        let g = self.gate_proj.forward_recomputed(x, true, remake)?;
        let u = self.up_proj.forward_recomputed(x, true, remake)?;
        let (act, fused) = (self.act, kernels::use_fused(Kernel::Glu, x.device()));
        let h = if fused {
            gated_fused(&g, &u, act)?
        } else {
            gated_unfused(&g, &u, act)?
        };
        let (g, u) = (g.detach(), u.detach());
        let remake_h: Recompute = Arc::new(move || {
            if fused {
                kernels::glu::forward(&g, &u, act)
            } else {
                gated_unfused(&g, &u, act)
            }
        });
        let y = self.down_proj.forward_recomputed(&h, value, &remake_h)?;
        // h has been read by its one reader, down_proj, whose backward never reads it (see
        // above), and neither activation op (fused or unfused) reads its own result.
        release(&h)?;
        Ok(y)
    }
}

/// `act(g)·u` with tensor ops under candle's autograd (the CPU path and the kernel's reference).
pub fn gated_unfused(g: &Tensor, u: &Tensor, act: MlpActivation) -> Result<Tensor> {
    let a = match act {
        MlpActivation::Silu => candle_nn::ops::silu(g)?,
        MlpActivation::GeluTanh => g.gelu()?,
    };
    Ok((a * u)?)
}

/// `act(g)·u` as one op with the fused kernels of [`crate::kernels::glu`]; its backward keeps
/// `g` and `u` only.
pub fn gated_fused(g: &Tensor, u: &Tensor, act: MlpActivation) -> Result<Tensor> {
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    let op = ForwardOp::Two(Box::new(kernels::glu::forward_op(act)));
    with_backward_value("glu", Value::Op(op), &[&g, &u], move |inputs, _, dy| {
        let (dg, du) = kernels::glu::backward(inputs[0], inputs[1], dy, act)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(vec![Some(dg), Some(du)])
    })
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
    layers
        .into_iter()
        .enumerate()
        .flat_map(|(i, ps)| {
            PROJECTION_PATHS
                .iter()
                .zip(ps)
                .map(move |(p, l)| (format!("model.layers.{i}.{p}"), l))
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

/// Inverse frequencies of rotary embeddings, with optional `llama3` or `linear` scaling.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let mut inv: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    if let Some(s) = scaling {
        match s.rope_type.as_str() {
            // transformers `_compute_llama3_parameters`.
            "llama3" => {
                let factor = s.factor.unwrap_or(8.0);
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old_ctx = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            "linear" => {
                let factor = s.factor.unwrap_or(1.0);
                for f in inv.iter_mut() {
                    *f /= factor;
                }
            }
            _ => {}
        }
    }
    inv
}

/// Rotary position embedding in the HF half-split layout (`rotate_half`).
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f64>,
    head_dim: usize,
    /// The cos/sin tables for positions `0..len` last built, shared by clones (same frequencies).
    tables: Arc<std::sync::Mutex<Option<RopeTables>>>,
}

#[derive(Debug)]
struct RopeTables {
    dtype: DType,
    device: Device,
    len: usize,
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Self {
        Self {
            inv_freq: rope_inv_freq(head_dim, theta, scaling),
            head_dim,
            tables: Arc::default(),
        }
    }

    /// Divides each inverse frequency by a factor, as llama.cpp's `rope_freqs.weight` stores
    /// llama3 rope scaling in GGUF files.
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Result<Self> {
        if factors.len() != self.inv_freq.len() {
            return Err(crate::Error::Msg(format!(
                "rope_freqs has {} factors, expected {}",
                factors.len(),
                self.inv_freq.len()
            )));
        }
        for (f, k) in self.inv_freq.iter_mut().zip(factors) {
            *f /= *k as f64;
        }
        self.tables = Arc::default();
        Ok(self)
    }

    /// `(cos, sin)`, each `[T, head_dim]`, for positions `start..start+len`: rows of tables for
    /// positions from 0 that are built once per dtype and device (and rebuilt twice as long when
    /// a position lies beyond them), not on the host at every forward.
    pub fn cos_sin(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let need = start + len;
        let mut cached = self
            .tables
            .lock()
            .map_err(|_| crate::Error::Msg("rope tables: poisoned".into()))?;
        let fits = cached
            .as_ref()
            .is_some_and(|t| t.dtype == dtype && t.device.same_device(device) && t.len >= need);
        if !fits {
            let len = need.next_power_of_two().max(256);
            let (cos, sin) = self.compute(0, len, dtype, device)?;
            *cached = Some(RopeTables {
                dtype,
                device: device.clone(),
                len,
                cos,
                sin,
            });
        }
        match cached.as_ref() {
            Some(t) => Ok((t.cos.narrow(0, start, len)?, t.sin.narrow(0, start, len)?)),
            None => Err(crate::Error::Msg("rope tables: not built".into())),
        }
    }

    /// [`Self::cos_sin`] computed afresh.
    fn compute(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for p in start..start + len {
            // Computed in f32 like transformers, so positions far out round the same way.
            let freqs: Vec<f32> = self
                .inv_freq
                .iter()
                .map(|f| (p as f32) * (*f as f32))
                .collect();
            for k in 0..self.head_dim {
                let a = freqs[k % half];
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, self.head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, self.head_dim), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Applies rotary embeddings to `x: [B, H, T, D]` (any strides; the result is contiguous) with
/// `cos, sin: [T, D]`, as one op:
/// `y = x·cos + rot(x)·sin` with `rot(x) = [-x₂, x₁]`, so `dx = g·cos + rotᵀ(g·sin)` with
/// `rotᵀ(u) = [u₂, -u₁]`. Under autograd the broadcasts of `cos` and `sin` would each get
/// an activation-sized gradient buffer.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if kernels::use_fused(Kernel::Rope, x.device()) {
        apply_rotary_fused(x, cos, sin)
    } else {
        apply_rotary_unfused(x, cos, sin)
    }
}

/// [`apply_rotary`] with tensor ops (the CPU path and the kernel's reference).
pub fn apply_rotary_unfused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = rotary_values(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    with_backward("rotary", y, &[x], move |_, g| {
        let gs = g.broadcast_mul(&sin)?;
        let d = gs.dim(D::Minus1)?;
        let (u1, u2) = (
            gs.narrow(D::Minus1, 0, d / 2)?,
            gs.narrow(D::Minus1, d / 2, d / 2)?,
        );
        let back = Tensor::cat(&[&u2, &u1.neg()?], D::Minus1)?;
        Ok(vec![Some((g.broadcast_mul(&cos)? + back)?)])
    })
}

/// [`apply_rotary`] with the fused kernels of [`crate::kernels::rope`].
pub fn apply_rotary_fused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = kernels::rope::tables(cos, sin, x.dtype())?;
    let op = ForwardOp::Three(Box::new(kernels::rope::forward_op()));
    with_backward_value(
        "rotary",
        Value::Op(op),
        &[x, &cos, &sin],
        move |inputs, _, g| {
            let gx = kernels::rope::backward(g, inputs[1], inputs[2])
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Ok(vec![Some(gx), None, None])
        },
    )
}

fn rotary_values(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Repeats key/value heads for grouped-query attention: `[B, kv, T, D] -> [B, kv*n, T, D]`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))?)
}

/// An additive attention mask `[B, 1, Tq, Tk]`: 0 where allowed, the dtype's lowest finite
/// value where not (as transformers does), so that a padding query whose whole window is
/// padding gets uniform weights instead of NaN — NaN there would reach real rows through
/// `0 · NaN` in the value matmul and its backward.
///
/// Query `i` sits at absolute position `offset + i`; key `j` at position `j`. A key is allowed
/// when it is not in the future, inside the sliding window if there is one
/// (`pos_q - pos_k < window`, as transformers' `sliding_window_overlay`), and not padding.
pub fn attention_mask(
    batch: usize,
    q_len: usize,
    offset: usize,
    key_padding: Option<&[Vec<bool>]>,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let k_len = offset + q_len;
    let blocked = match dtype {
        DType::F16 => -65504f32,
        DType::BF16 => -3.38e38f32,
        _ => f32::MIN,
    };
    let mut data = vec![0f32; batch * q_len * k_len];
    for b in 0..batch {
        for i in 0..q_len {
            let qpos = offset + i;
            for j in 0..k_len {
                let mut allowed = j <= qpos;
                if let Some(w) = sliding_window {
                    allowed &= qpos - j.min(qpos) < w;
                }
                if let Some(pad) = key_padding {
                    allowed &= pad[b].get(j).copied().unwrap_or(false);
                }
                if !allowed {
                    data[(b * q_len + i) * k_len + j] = blocked;
                }
            }
        }
    }
    Ok(Tensor::from_vec(data, (batch, 1, q_len, k_len), device)?.to_dtype(dtype)?)
}

/// The attention mask of a forward pass in two forms: the additive `[B | 1, 1, Tq, Tk]` tensor
/// of [`attention_mask`] for the tensor-op attention, built on first use (the flash-attention
/// kernel never needs it), and its structure (query offset, window, per-key validity), which
/// the kernel masks with without reading a tensor.
#[derive(Debug, Clone)]
pub struct AttnMask {
    pub offset: usize,
    pub window: Option<usize>,
    /// u8 `[B, Tk]`, 1 for a real key; `None` when there is no padding.
    pub key_valid: Option<Tensor>,
    batch: usize,
    q_len: usize,
    key_padding: Option<Arc<Vec<Vec<bool>>>>,
    dtype: DType,
    device: Device,
    additive: Arc<OnceLock<Tensor>>,
}

impl AttnMask {
    /// See [`attention_mask`] for the arguments.
    pub fn new(
        batch: usize,
        q_len: usize,
        offset: usize,
        key_padding: Option<&[Vec<bool>]>,
        sliding_window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // As `attention_mask` reads it: row `b`'s key `j` is real when `pad[b][j]` is true.
        let k_len = offset + q_len;
        let valid: Option<Vec<u8>> = key_padding.map(|rows| {
            (0..batch)
                .flat_map(|b| (0..k_len).map(move |j| (b, j)))
                .map(|(b, j)| {
                    u8::from(rows.get(b).and_then(|r| r.get(j)).copied().unwrap_or(false))
                })
                .collect()
        });
        let key_valid = match valid {
            Some(v) if v.contains(&0) => Some(Tensor::from_vec(v, (batch, k_len), device)?),
            _ => None,
        };
        Ok(Self {
            offset,
            window: sliding_window,
            key_valid,
            batch,
            q_len,
            key_padding: key_padding.map(|p| Arc::new(p.to_vec())),
            dtype,
            device: device.clone(),
            additive: Arc::new(OnceLock::new()),
        })
    }

    /// The additive mask tensor, built once per forward pass on first use.
    pub fn additive(&self) -> Result<&Tensor> {
        if let Some(t) = self.additive.get() {
            return Ok(t);
        }
        let t = attention_mask(
            self.batch,
            self.q_len,
            self.offset,
            self.key_padding.as_deref().map(Vec::as_slice),
            self.window,
            self.dtype,
            &self.device,
        )?;
        Ok(self.additive.get_or_init(|| t))
    }
}

/// Reads a `[B, T]` 0/1 attention mask into per-row booleans.
pub fn padding_rows(attention_mask: &Tensor) -> Result<Vec<Vec<bool>>> {
    let rows = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0).collect())
        .collect())
}

/// Key/value cache of one layer, `[B, kv_heads, T, D]`.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl LayerCache {
    /// Appends new keys/values and returns the full ones.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

/// The KV cache of a whole model, for generation.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Number of positions already in the cache.
    pub seq_len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            seq_len: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_sliding_window_matches_transformers() {
        let m = attention_mask(1, 5, 0, None, Some(2), DType::F32, &Device::Cpu).unwrap();
        let rows = m
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // query 3 sees keys 2 and 3 only.
        let allowed: Vec<bool> = rows[3].iter().map(|v| *v == 0.0).collect();
        assert_eq!(allowed, vec![false, false, true, true, false]);
    }

    #[test]
    fn rms_norm_backward_matches_autograd() -> crate::Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        for unit_offset in [false, true] {
            let w = Tensor::randn(0f32, 1., 6, &dev)?;
            let norm = RmsNorm::new(w, 1e-6, unit_offset);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 6), &dev)?)?;
            let g = Tensor::randn(0f32, 1., (3, 6), &dev)?;
            let fused = (norm.forward(x.as_tensor())? * &g)?.sum_all()?.backward()?;
            let plain = (norm.values(x.as_tensor())? * &g)?.sum_all()?.backward()?;
            let (a, b) = (fused.get(x.as_tensor()), plain.get(x.as_tensor()));
            let (Some(a), Some(b)) = (a, b) else {
                panic!("no gradient");
            };
            let diff = crate::testutil::max_abs_diff(a, b)?;
            assert!(diff < 1e-5, "rms-norm gradient differs by {diff}");
        }
        Ok(())
    }

    #[test]
    fn rotary_backward_matches_autograd() -> crate::Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        let (cos, sin) = Rotary::new(8, 10000.0, None).cos_sin(2, 5, DType::F32, &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?)?;
        let g = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let fused = (apply_rotary(x.as_tensor(), &cos, &sin)? * &g)?
            .sum_all()?
            .backward()?;
        let plain = (rotary_values(x.as_tensor(), &cos, &sin)? * &g)?
            .sum_all()?
            .backward()?;
        let (Some(a), Some(b)) = (fused.get(x.as_tensor()), plain.get(x.as_tensor())) else {
            panic!("no gradient");
        };
        let diff = crate::testutil::max_abs_diff(a, b)?;
        assert!(diff < 1e-5, "rotary gradient differs by {diff}");
        Ok(())
    }

    #[test]
    fn cached_rope_tables_equal_fresh_ones() -> crate::Result<()> {
        let rot = Rotary::new(16, 500_000.0, None);
        let bits = |t: &Tensor| -> crate::Result<Vec<u32>> {
            Ok(t.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        // Within the first table, past it (a rebuild), a smaller request again, another dtype.
        for (start, len, dtype) in [
            (0, 10, DType::F32),
            (3, 40, DType::F32),
            (250, 300, DType::F32),
            (5, 7, DType::F32),
            (100, 17, DType::BF16),
        ] {
            let (c, s) = rot.cos_sin(start, len, dtype, &Device::Cpu)?;
            let (c0, s0) = rot.compute(start, len, dtype, &Device::Cpu)?;
            assert_eq!(c.dims(), &[len, 16]);
            assert_eq!(bits(&c)?, bits(&c0)?, "cos at {start}+{len} {dtype:?}");
            assert_eq!(bits(&s)?, bits(&s0)?, "sin at {start}+{len} {dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn rotary_half_split_rotates_pairs() {
        let rot = Rotary::new(4, 10_000.0, None);
        let (cos, sin) = rot.cos_sin(1, 1, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[[1f32, 0., 0., 0.]]]], &Device::Cpu).unwrap();
        let y = apply_rotary(&x, &cos, &sin).unwrap().flatten_all().unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
    }
}
