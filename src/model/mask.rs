//! Attention masks: causal, sliding-window and right-padding, as the additive tensor the
//! tensor-op attention adds to its scores and as the structure the flash kernel masks with.
//! Blocked positions get the dtype's lowest finite value, as transformers does.
//!
//! Packed rows ([`Segments`]) hold several conversations one after another: attention is then
//! block-diagonal causal (a token sees the earlier tokens of its own conversation only, as
//! FlashAttention's varlen form and transformers' `DataCollatorWithFlattening` do) and positions
//! restart at 0 for each conversation.

use std::ops::Range;
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
    let blocked = blocked_value(dtype);
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
    /// The conversations of packed rows, whose tokens see only their own conversation.
    pub segments: Option<Segments>,
    segment_starts: Arc<OnceLock<Tensor>>,
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
            segments: None,
            segment_starts: Arc::new(OnceLock::new()),
        })
    }

    /// The block-diagonal causal mask of packed rows (no cache, no key padding: a row's
    /// padding is a segment of its own), with an optional sliding window within each
    /// conversation.
    pub fn packed(
        segments: &Segments,
        sliding_window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut mask = Self::new(
            segments.batch(),
            segments.len(),
            0,
            None,
            sliding_window,
            dtype,
            device,
        )?;
        mask.segments = Some(segments.clone());
        Ok(mask)
    }

    /// The segment starts of packed rows as the flash kernel reads them (u32 `[B, T]` on the
    /// mask's device), built once per forward pass on first use; `None` for unpacked rows.
    pub fn segment_starts(&self) -> Result<Option<&Tensor>> {
        let Some(seg) = &self.segments else {
            return Ok(None);
        };
        if let Some(t) = self.segment_starts.get() {
            return Ok(Some(t));
        }
        let t = seg.starts_tensor(&self.device)?;
        Ok(Some(self.segment_starts.get_or_init(|| t)))
    }

    /// The additive mask tensor, built once per forward pass on first use.
    pub fn additive(&self) -> Result<&Tensor> {
        if let Some(t) = self.additive.get() {
            return Ok(t);
        }
        if let Some(seg) = &self.segments {
            let t = seg.additive_mask(self.window, self.dtype, &self.device)?;
            return Ok(self.additive.get_or_init(|| t));
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

/// The conversations of packed rows `[B, T]`: for each token, the index in its row of its
/// conversation's first token. A row's trailing padding is one more conversation, which no real
/// token sees. Query `i` of row `b` sees key `j` iff `starts[b][i] <= j <= i`, and sits at
/// position `i - starts[b][i]`.
#[derive(Debug, Clone)]
pub struct Segments {
    starts: Arc<Vec<Vec<u32>>>,
    len: usize,
}

impl Segments {
    /// Checks that each row has `len` entries, each a conversation start: `starts[b][0] = 0`
    /// and `starts[b][i]` is either `starts[b][i - 1]` or `i`.
    pub fn new(starts: Vec<Vec<u32>>, len: usize) -> Result<Self> {
        for (b, row) in starts.iter().enumerate() {
            let bad =
                |why: String| crate::Error::Msg(format!("packed row {b}: segment starts {why}"));
            if row.len() != len {
                return Err(bad(format!("have {} entries for {len} tokens", row.len())));
            }
            for (i, &s) in row.iter().enumerate() {
                let ok = match i {
                    0 => s == 0,
                    _ => s == row[i - 1] || s as usize == i,
                };
                if !ok {
                    return Err(bad(format!("are not contiguous at token {i} (start {s})")));
                }
            }
        }
        Ok(Self {
            starts: Arc::new(starts),
            len,
        })
    }

    pub fn batch(&self) -> usize {
        self.starts.len()
    }

    /// Tokens per row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each row's segment starts.
    pub fn starts(&self) -> &[Vec<u32>] {
        &self.starts
    }

    /// Each token's position in its conversation, `[B · T]` row-major.
    pub fn positions(&self) -> Vec<u32> {
        self.starts
            .iter()
            .flat_map(|row| row.iter().enumerate().map(|(i, s)| i as u32 - s))
            .collect()
    }

    /// Each row's conversations as token ranges, in order; together they cover the row.
    pub fn conversations(&self) -> Vec<Vec<Range<usize>>> {
        self.starts
            .iter()
            .map(|row| {
                let mut spans: Vec<Range<usize>> = Vec::new();
                for (i, &s) in row.iter().enumerate() {
                    match spans.last_mut() {
                        Some(last) if last.start == s as usize => last.end = i + 1,
                        _ => spans.push(i..i + 1),
                    }
                }
                spans
            })
            .collect()
    }

    /// The starts as a u32 `[B, T]` tensor, which the flash kernel masks with.
    pub fn starts_tensor(&self, device: &Device) -> Result<Tensor> {
        let flat: Vec<u32> = self.starts.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (self.batch(), self.len), device)?)
    }

    /// The additive mask `[B, 1, T, T]`: key `j` allowed for query `i` iff
    /// `starts[i] <= j <= i` and, with a window, `i - j < window`.
    pub fn additive_mask(
        &self,
        window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (b, t) = (self.batch(), self.len);
        let blocked = blocked_value(dtype);
        let mut data = vec![blocked; b * t * t];
        for (r, row) in self.starts.iter().enumerate() {
            for (i, &s) in row.iter().enumerate() {
                let first =
                    window.map_or(s as usize, |w| (s as usize).max((i + 1).saturating_sub(w)));
                let at = (r * t + i) * t;
                data[at + first..=at + i].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        Ok(Tensor::from_vec(data, (b, 1, t, t), device)?.to_dtype(dtype)?)
    }
}

/// The additive value of a blocked position in `dtype`: its lowest finite value.
fn blocked_value(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65504f32,
        DType::BF16 => -3.38e38f32,
        _ => f32::MIN,
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

    /// Two conversations (0..3, 3..5) and a padding segment (5..6): no token sees another
    /// conversation, positions restart, and a window counts within the conversation.
    #[test]
    fn packed_mask_is_block_diagonal_causal() -> Result<()> {
        let seg = Segments::new(vec![vec![0, 0, 0, 3, 3, 5]], 6)?;
        assert_eq!(seg.positions(), vec![0, 1, 2, 0, 1, 0]);
        let allowed = |window| -> Result<Vec<Vec<bool>>> {
            let m = seg.additive_mask(window, DType::F32, &Device::Cpu)?;
            let rows = m.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
            Ok(rows
                .iter()
                .map(|r| r.iter().map(|v| *v == 0.0).collect())
                .collect())
        };
        let (t, f) = (true, false);
        assert_eq!(
            allowed(None)?,
            vec![
                vec![t, f, f, f, f, f],
                vec![t, t, f, f, f, f],
                vec![t, t, t, f, f, f],
                vec![f, f, f, t, f, f],
                vec![f, f, f, t, t, f],
                vec![f, f, f, f, f, t],
            ]
        );
        assert_eq!(allowed(Some(2))?[2], vec![f, t, t, f, f, f]);
        assert_eq!(allowed(Some(2))?[4], vec![f, f, f, t, t, f]);
        assert_eq!(seg.conversations(), vec![vec![0..3, 3..5, 5..6]]);
        Ok(())
    }

    #[test]
    fn segment_starts_that_are_not_conversations_are_refused() {
        assert!(Segments::new(vec![vec![0, 0, 1]], 3).is_err());
        assert!(Segments::new(vec![vec![1, 1, 1]], 3).is_err());
        assert!(Segments::new(vec![vec![0, 0]], 3).is_err());
        assert!(Segments::new(vec![vec![0, 0, 2]], 3).is_ok());
    }
}
