//! Attention masks: causal, sliding-window and right-padding, as the additive tensor the
//! tensor-op attention adds to its scores and as the structure the flash kernel masks with.
//! Blocked positions get the dtype's lowest finite value, as transformers does.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};

use super::cache::KvCache;
use crate::Result;

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

/// The key padding of a pass over `b` rows of `t` tokens: the 0/1 `attention_mask` of those
/// tokens, after the cached rows' own padding when the pass appends to a KV cache.
pub fn pass_padding(
    attention_mask: Option<&Tensor>,
    cache: Option<&mut KvCache>,
    b: usize,
    t: usize,
) -> Result<Option<Vec<Vec<bool>>>> {
    let new = attention_mask.map(padding_rows).transpose()?;
    Ok(match cache {
        Some(c) => c.extend_padding(new, b, t),
        None => new,
    })
}

/// Reads a `[B, T]` 0/1 attention mask into per-row booleans.
pub fn padding_rows(attention_mask: &Tensor) -> Result<Vec<Vec<bool>>> {
    let rows = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0).collect())
        .collect())
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
}
