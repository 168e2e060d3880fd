//! The key/value cache of generation: one [`LayerCache`] per decoder layer, appended to as
//! tokens are decoded.

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
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            seq_len: 0,
        }
    }
}
