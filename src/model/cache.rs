//! The key/value cache of generation: one [`LayerCache`] per decoder layer, appended to as
//! tokens are decoded, with each row's key padding when prompts of different lengths share a
//! batch (left-padded), and rows dropped as they finish.

use candle_core::Tensor;

use crate::Result;

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
    /// Per row, whether each cached position is a real token; `None` while none is padding.
    pub padding: Option<Vec<Vec<bool>>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            seq_len: 0,
            padding: None,
        }
    }

    /// The key padding of a pass that appends `t` positions to each of `b` rows: the cached
    /// rows' followed by `new` (the new positions' own, or all real), kept for the next pass.
    /// `None` while every key is real.
    pub fn extend_padding(
        &mut self,
        new: Option<Vec<Vec<bool>>>,
        b: usize,
        t: usize,
    ) -> Option<Vec<Vec<bool>>> {
        if self.padding.is_none() && new.as_ref().is_none_or(|n| n.iter().flatten().all(|v| *v)) {
            return None;
        }
        let mut rows = self
            .padding
            .take()
            .unwrap_or_else(|| vec![vec![true; self.seq_len]; b]);
        for (i, row) in rows.iter_mut().enumerate() {
            match new.as_ref().and_then(|n| n.get(i)) {
                Some(n) => row.extend((0..t).map(|j| n.get(j).copied().unwrap_or(false))),
                None => row.extend(std::iter::repeat_n(true, t)),
            }
        }
        self.padding = Some(rows.clone());
        Some(rows)
    }

    /// Keeps only the rows at `keep` (in that order), as generation drops finished rows.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        let Some(device) = self
            .layers
            .iter()
            .find_map(|l| l.k.as_ref().map(|k| k.device().clone()))
        else {
            return Ok(());
        };
        let idx = Tensor::new(
            keep.iter()
                .map(|&i| i as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            &device,
        )?;
        for l in &mut self.layers {
            if let (Some(k), Some(v)) = (&l.k, &l.v) {
                l.k = Some(k.index_select(&idx, 0)?);
                l.v = Some(v.index_select(&idx, 0)?);
            }
        }
        if let Some(rows) = self.padding.take() {
            let rows: Vec<Vec<bool>> = keep
                .iter()
                .map(|&i| rows.get(i).cloned().unwrap_or_default())
                .collect();
            if rows.iter().flatten().any(|v| !*v) {
                self.padding = Some(rows);
            }
        }
        Ok(())
    }
}
