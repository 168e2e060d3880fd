//! A frozen linear layer with an optional LoRA path: `y = x Wᵀ + b + scale · (x Aᵀ) Bᵀ`.

use candle_core::{Module, Tensor};

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
}

/// A frozen projection, held as plain tensors so that no gradient is kept for it.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraWeights>,
}

impl Linear {
    /// `weight` is `[out, in]` as in HF checkpoints.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }

    pub fn lora(&self) -> Option<&LoraWeights> {
        self.lora.as_ref()
    }

    /// Attaches (or replaces) the LoRA path.
    pub fn set_lora(&mut self, lora: Option<LoraWeights>) {
        self.lora = lora;
    }

    /// The frozen part alone: `x Wᵀ + b`.
    pub fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        let (out, inp) = self.shape();
        let (lead, n) = leading_dims(x)?;
        let y = x.reshape((n, inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = lead;
        out_dims.push(out);
        Ok(y.reshape(out_dims)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_base(x)?;
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                let (_, n) = leading_dims(x)?;
                let x2 = x.reshape((n, self.shape().1))?;
                let delta = x2.matmul(&l.a.t()?)?.matmul(&l.b.t()?)?;
                let delta = (delta * l.scale)?.reshape(y.shape())?;
                Ok((y + delta)?)
            }
        }
    }
}

/// The dims before the last one, and their product.
fn leading_dims(x: &Tensor) -> Result<(Vec<usize>, usize)> {
    let dims = x.dims();
    if dims.is_empty() {
        return Err(crate::Error::Msg("linear: input is a scalar".into()));
    }
    let lead = dims[..dims.len() - 1].to_vec();
    let n = lead.iter().product();
    Ok((lead, n))
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Linear::forward(self, x).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}
