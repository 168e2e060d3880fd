//! A frozen linear layer with an optional LoRA path: `y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ`.
//!
//! A shared [`AdapterSwitch`] turns every adapted projection of a model to its reference for a
//! forward pass (DPO's reference model with one copy of the weights): the frozen reference
//! A/B a layer keeps beside its trainable ones (a `lora.init_adapter` as loaded), or none, which
//! is the base model, as PEFT's `disable_adapter()` gives TRL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Module, Tensor};

use crate::autograd::{with_backward_value, Value};
use crate::gemm;
use crate::kernels::dropout;
use crate::quant::FrozenWeight;
use crate::Result;

/// The trainable low-rank part of a [`Linear`].
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in]`, PEFT's `lora_A.weight`.
    pub a: Tensor,
    /// `[out, r]`, PEFT's `lora_B.weight`.
    pub b: Tensor,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// Dropout on the LoRA input; applied only while a dropout seed is set (training).
    pub dropout: f64,
    /// Shared seed set by the trainer per micro-batch; 0 means evaluation (no dropout).
    pub dropout_seed: Option<Arc<AtomicU64>>,
    /// The dtype the LoRA path runs in (A and B are kept in f32 and cast to this).
    pub compute_dtype: DType,
    /// Shared with the model's other projections: while it is on, this one runs as the
    /// reference (no gradient, no dropout).
    pub switch: Option<Arc<AdapterSwitch>>,
    /// The reference's frozen `(A, B)`; `None` makes the reference the base weights.
    pub reference: Option<(Tensor, Tensor)>,
}

/// Switches a model's adapted projections between the trained adapter and the reference.
#[derive(Debug, Default)]
pub struct AdapterSwitch(AtomicBool);

impl AdapterSwitch {
    /// Runs `f` with every projection sharing this switch turned to its reference, and turns
    /// them back after, also when `f` fails.
    pub fn as_reference<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Back<'a>(&'a AtomicBool);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.0.store(true, Ordering::SeqCst);
        let _back = Back(&self.0);
        f()
    }

    /// Whether the projections run as the reference now.
    pub fn is_reference(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl LoraWeights {
    /// Inference-only weights (no dropout), e.g. from a loaded adapter.
    pub fn frozen(a: Tensor, b: Tensor, scale: f64) -> Self {
        let compute_dtype = a.dtype();
        Self {
            a,
            b,
            scale,
            dropout: 0.0,
            dropout_seed: None,
            compute_dtype,
            switch: None,
            reference: None,
        }
    }

    fn runs_reference(&self) -> bool {
        self.switch.as_ref().is_some_and(|s| s.is_reference())
    }

    /// The dropout key of the layer with `salt` under the shared seed, or `None` when dropout
    /// is off (no seed set, or a zero rate).
    fn dropout_key(&self, salt: u64) -> Option<u64> {
        let seed = match &self.dropout_seed {
            Some(s) if self.dropout > 0.0 => s.load(Ordering::Relaxed),
            _ => 0,
        };
        (seed != 0).then(|| seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// Makes a projection's input again, value for value, from tensors its producer's backward keeps
/// anyway (see [`Linear::forward_recomputed`]).
pub type Recompute = Arc<dyn Fn() -> Result<Tensor> + Send + Sync>;

/// A frozen projection (dense or quantized; never given a gradient) with an optional LoRA path.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: FrozenWeight,
    bias: Option<Tensor>,
    lora: Option<LoraWeights>,
    /// Distinguishes this layer's dropout masks from other layers'.
    salt: u64,
}

impl Linear {
    /// `weight` is `[out, in]` as in HF checkpoints.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::from_frozen(FrozenWeight::Dense(weight), bias)
    }

    /// A projection over an already-built frozen weight (e.g. a quantized one).
    pub fn from_frozen(weight: FrozenWeight, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
            salt: 0,
        }
    }

    /// Sets the per-layer salt for dropout masks (the model assigns a unique one per layer).
    pub fn set_salt(&mut self, salt: u64) {
        self.salt = salt;
    }

    pub fn weight(&self) -> &FrozenWeight {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        // A FrozenWeight is always built from a 2-D weight.
        self.weight.shape().unwrap_or((0, 0))
    }

    pub fn lora(&self) -> Option<&LoraWeights> {
        self.lora.as_ref()
    }

    /// Attaches (or replaces) the LoRA path.
    pub fn set_lora(&mut self, lora: Option<LoraWeights>) {
        self.lora = lora;
    }

    /// `W + scale · B A` (or `W` without an adapter), for merged exports.
    pub fn merged_weight(&self) -> Result<Tensor> {
        let weight = self.weight.to_dense()?;
        match &self.lora {
            None => Ok(weight),
            Some(l) => {
                let dtype = weight.dtype();
                let ba = gemm::matmul(&l.b.to_dtype(DType::F32)?, &l.a.to_dtype(DType::F32)?)?;
                let w = (weight.to_dtype(DType::F32)? + (ba * l.scale)?)?;
                Ok(w.to_dtype(dtype)?)
            }
        }
    }

    fn base(&self, x: &Tensor, value: bool) -> Result<Tensor> {
        let (out, inp) = self.shape();
        let (lead, n) = leading_dims(x, inp)?;
        let x2 = x.reshape((n, inp))?;
        let y = if value {
            self.weight.matmul_t(&x2)?
        } else {
            self.weight.matmul_t_graph_only(&x2)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = lead;
        out_dims.push(out);
        Ok(y.reshape(out_dims)?)
    }

    /// `x Wᵀ + b + scale · (dropout(x) Aᵀ) Bᵀ` as one op with its own backward, which keeps
    /// only `x` and the rank-`r` product `dropout(x) Aᵀ` for the backward pass (a dropout mask
    /// is redrawn from its key); autograd over the same expression would keep four `[n, out]`
    /// tensors per projection.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true, None)
    }

    /// [`Linear::forward`]'s backward graph with a zero output value: neither `x Wᵀ` nor
    /// the LoRA product is computed (only the rank-`r` `x Aᵀ` that B's gradient needs). For a
    /// checkpoint replay, where the output's value is never read.
    pub fn forward_graph_only(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false, None)
    }

    /// [`Linear::forward`] (or, without `value`, [`Linear::forward_graph_only`]) whose backward
    /// never reads `x`: the LoRA path's `A` gradient takes `x` from `recompute`, which must give
    /// the very value `x` had. So once this returns, the caller may free `x` with
    /// [`crate::autograd::release()`] (when nothing else reads it), e.g. the gated MLP's
    /// `act(g)·u`, which the activation's kept inputs make again in one elementwise pass.
    pub fn forward_recomputed(
        &self,
        x: &Tensor,
        value: bool,
        recompute: &Recompute,
    ) -> Result<Tensor> {
        self.apply(x, value, Some(recompute.clone()))
    }

    fn apply(&self, x: &Tensor, value: bool, recompute: Option<Recompute>) -> Result<Tensor> {
        let Some(l) = &self.lora else {
            // The frozen product's backward reads only the output gradient.
            return self.base(x, value);
        };
        if l.runs_reference() {
            return self.reference(x, l);
        }
        let (out, inp) = self.shape();
        let (lead, n) = leading_dims(x, inp)?;
        let mut out_dims = lead;
        out_dims.push(out);
        let x_dims = x.dims().to_vec();
        // The op takes `x` and gives `y` in their own shapes, flattening them to rows inside
        // (views), so no reshape nodes sit on the graph around it: each would add a zero
        // gradient buffer and a sum to backward.
        let xd = x.detach().reshape((n, inp))?;
        let cd = l.compute_dtype;
        // Inverted dropout on the LoRA input; the backward pass redraws the same mask from the key.
        let key = l.dropout_key(self.salt);
        let (keep, x_dtype) = (1.0 - l.dropout, xd.dtype());
        let x_lora = lora_input(&xd, key, keep, cd)?;
        let a = l.a.detach().to_dtype(cd)?;
        let b = l.b.detach().to_dtype(cd)?;
        let u = gemm::matmul(&x_lora, &a.t()?)?;
        // The sum is formed in the op's own storage (no copy after it).
        let y = if value {
            let base = self.weight.product_t(&xd)?;
            // The scale goes on the rank-r `u`, not on the [n, out] product.
            let delta = gemm::matmul(&(&u * l.scale)?, &b.t()?)?.to_dtype(base.dtype())?;
            Value::Sum(
                base.reshape(out_dims.as_slice())?,
                delta.reshape(out_dims.as_slice())?,
            )
        } else {
            Value::Zeros(out_dims.as_slice().into(), self.weight.dtype())
        };
        let weight = self.weight.clone();
        let scale = l.scale;
        let y = with_backward_value("lora-linear", y, &[x, &l.a, &l.b], move |inputs, _, g| {
            let x = match &recompute {
                Some(make) => make()?,
                None => inputs[0].detach(),
            };
            let (x, a_var, b_var) = (x.reshape((n, inp))?, inputs[1], inputs[2]);
            let g = &g.reshape((n, out))?;
            let gc = g.to_dtype(cd)?;
            let grad_b = (gemm::matmul(&gc.t()?, &u)? * scale)?.to_dtype(b_var.dtype())?;
            let grad_u = (gemm::matmul(&gc, &b)? * scale)?;
            let x_lora = lora_input(&x, key, keep, cd)?;
            let grad_a = gemm::matmul(&grad_u.t()?, &x_lora)?.to_dtype(a_var.dtype())?;
            let mut grad_x_lora = gemm::matmul(&grad_u, &a)?;
            if let Some(k) = key {
                // The same mask, scaled as the input's dtype holds `1 / keep`.
                grad_x_lora = dropout::apply(&grad_x_lora, k, keep, x_dtype)?;
            }
            let grad_x = weight.grad_input(g)?;
            let grad_x_lora = grad_x_lora.to_dtype(grad_x.dtype())?;
            let grad_x = (grad_x + grad_x_lora)?;
            Ok(vec![
                Some(grad_x.to_dtype(x.dtype())?.reshape(x_dims.as_slice())?),
                Some(grad_a),
                Some(grad_b),
            ])
        })?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}

impl Linear {
    /// The projection as the reference runs it, with no graph: the base weights plus the
    /// frozen reference A/B when the layer has them, in the very ops and dtypes of the trained
    /// path, so that equal weights give equal outputs bit for bit (DPO's first step then sees
    /// a log-ratio of exactly 0).
    fn reference(&self, x: &Tensor, l: &LoraWeights) -> Result<Tensor> {
        let Some((a, b)) = &l.reference else {
            return self.base(&x.detach(), true);
        };
        let (out, inp) = self.shape();
        let (lead, n) = leading_dims(x, inp)?;
        let mut out_dims = lead;
        out_dims.push(out);
        let xd = x.detach().reshape((n, inp))?;
        let cd = l.compute_dtype;
        let u = gemm::matmul(&xd.to_dtype(cd)?, &a.to_dtype(cd)?.t()?)?;
        let base = self.weight.product_t(&xd)?;
        let delta =
            gemm::matmul(&(&u * l.scale)?, &b.to_dtype(cd)?.t()?)?.to_dtype(base.dtype())?;
        let y = (base + delta)?.reshape(out_dims.as_slice())?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}

/// The LoRA path's input: `x` under the dropout of `key` (if any), in the compute dtype `cd`.
fn lora_input(x: &Tensor, key: Option<u64>, keep: f64, cd: DType) -> Result<Tensor> {
    let x = match key {
        Some(k) => dropout::apply(x, k, keep, x.dtype())?,
        None => x.clone(),
    };
    Ok(x.to_dtype(cd)?)
}

/// The dims before the trailing ones whose product is the input width `inp` (the last dim, or
/// e.g. `[.., heads, head_dim]` for `o_proj` over attention heads read as a view), and their
/// product: the rows.
fn leading_dims(x: &Tensor, inp: usize) -> Result<(Vec<usize>, usize)> {
    let dims = x.dims();
    let mut width = 1;
    for k in (0..dims.len()).rev() {
        width *= dims[k];
        if width == inp {
            let lead = dims[..k].to_vec();
            let n = lead.iter().product();
            return Ok((lead, n));
        }
        if width > inp {
            break;
        }
    }
    Err(crate::Error::shape(
        "linear",
        format!("trailing dims of {inp} elements"),
        format!("input {dims:?}"),
    ))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Linear::forward(self, x).map_err(candle_core::Error::from)
    }
}
