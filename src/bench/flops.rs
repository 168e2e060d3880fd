//! Training FLOPs of a LoRA step, the formula of `scripts/bench_gpu_peft.py` (and
//! BENCHMARKS.md): model FLOPs count the matmuls of forward and backward over a frozen base
//! (4·N_mm + 6·N_lora + 3·A per token), leaving out norms, softmax and the recomputation of
//! gradient checkpointing; hardware FLOPs add that recomputation. Gemma 3's sliding-window
//! layers count the keys inside their window.

use crate::config::ModelConfig;
use crate::train::memory::ModelDims;

/// The matmul shapes of a decoder that its training FLOPs depend on.
#[derive(Debug, Clone)]
pub struct FlopsCounter {
    dims: ModelDims,
    /// Each layer's attention window (`None`: full causal attention).
    windows: Vec<Option<usize>>,
    /// N_lora: `r · (in + out)` summed over the adapted projections, which is the number of
    /// LoRA parameters.
    lora_params: usize,
}

impl FlopsCounter {
    pub fn new(dims: ModelDims, windows: Vec<Option<usize>>, lora_params: usize) -> Self {
        Self {
            dims,
            windows,
            lora_params,
        }
    }

    /// The counter of a model from its config: Llama's layers attend causally over the whole
    /// sequence, Gemma 3's sliding layers over their window.
    pub fn of(config: &ModelConfig, lora_params: usize) -> Self {
        let dims = ModelDims::of(config);
        let windows = match config {
            ModelConfig::Llama(_) => vec![None; dims.layers],
            ModelConfig::Gemma3(c) => (0..dims.layers)
                .map(|i| c.is_sliding(i).then_some(c.sliding_window))
                .collect(),
        };
        Self::new(dims, windows, lora_params)
    }

    /// N_mm: the matmul weights of all layers plus the head (hidden × vocab, also when tied).
    pub fn matmul_weights(&self) -> f64 {
        self.dims.projection_params() + (self.dims.hidden * self.dims.vocab) as f64
    }

    /// A's forward part over one sequence of `t` tokens, all layers: `QKᵀ` and `PV`, each
    /// `2 · heads · head_dim` FLOPs per query and key it attends to, with a causal query
    /// attending to `t/2` keys on average (as the Python formula counts), or, inside a window
    /// `w < t`, to `w - w²/(2t)`.
    pub fn attention_forward(&self, t: usize) -> f64 {
        let q = (self.dims.heads * self.dims.head_dim) as f64;
        let t = t as f64;
        self.windows
            .iter()
            .map(|w| {
                let keys = match w {
                    Some(w) if (*w as f64) < t => {
                        let w = *w as f64;
                        (w * w / 2.0 + (t - w) * w) / t
                    }
                    _ => t / 2.0,
                };
                4.0 * q * t * keys
            })
            .sum()
    }

    /// Model FLOPs of training on sequences of these lengths (one forward and backward each):
    /// `t · (4·N_mm + 6·N_lora) + 3 · A(t)` summed over them.
    pub fn model_flops(&self, lengths: &[usize]) -> f64 {
        let per_token = 4.0 * self.matmul_weights() + 6.0 * self.lora_params as f64;
        lengths
            .iter()
            .map(|&t| t as f64 * per_token + 3.0 * self.attention_forward(t))
            .sum()
    }

    /// What gradient checkpointing runs again on top of [`Self::model_flops`]: each decoder
    /// layer's forward (its projections and LoRA products, not the head), and attention's
    /// `QKᵀ`/`PV` only with `recompute_attention` (else the layer keeps attention's output).
    pub fn recompute_flops(
        &self,
        lengths: &[usize],
        checkpointing: bool,
        recompute_attention: bool,
    ) -> f64 {
        if !checkpointing {
            return 0.0;
        }
        let per_token = 2.0 * self.dims.projection_params() + 2.0 * self.lora_params as f64;
        lengths
            .iter()
            .map(|&t| {
                let attention = match recompute_attention {
                    true => self.attention_forward(t),
                    false => 0.0,
                };
                t as f64 * per_token + attention
            })
            .sum()
    }

    /// Model FLOPs per token of a sequence of `seq` tokens: `bench_gpu_peft.py`'s
    /// `flops_per_token(cfg, seq, r)`.
    pub fn flops_per_token(&self, seq: usize) -> f64 {
        self.model_flops(&[seq]) / seq.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hidden 4, intermediate 8, one layer, 2 heads of 2, one KV head, vocab 10; LoRA r=1 on
    /// all seven projections.
    fn small(window: Option<usize>) -> FlopsCounter {
        let dims = ModelDims {
            hidden: 4,
            intermediate: 8,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
            vocab: 10,
            tied: true,
        };
        // r·(in+out): q 1·(4+4), k and v 1·(4+2), o 1·(4+4), gate and up 1·(4+8), down 1·(8+4).
        let lora = 8 + 6 + 6 + 8 + 12 + 12 + 12;
        FlopsCounter::new(dims, vec![window], lora)
    }

    #[test]
    fn the_formula_equals_a_hand_count() {
        // Weights: q 4·4 + k 4·2 + v 4·2 + o 4·4 + gate 4·8 + up 4·8 + down 8·4 = 144, head 4·10.
        let c = small(None);
        assert_eq!(c.matmul_weights(), 184.0);
        // Per token at T = 4: 4·184 + 6·64 + 3·(2·L·T·q = 2·1·4·4 = 32) = 736 + 384 + 96.
        assert_eq!(c.flops_per_token(4), 1216.0);
        assert_eq!(c.model_flops(&[4, 4]), 2.0 * 4.0 * 1216.0);
        // A window of 2 over 4 tokens: 2²/2 + (4-2)·2 = 6 keys over the 4 queries instead of
        // 4·4/2 = 8, so A per token is 4·q·6/4 = 24, not 32.
        assert_eq!(small(Some(2)).flops_per_token(4), 736.0 + 384.0 + 72.0);
        // A window at least as long as the sequence is full attention.
        assert_eq!(small(Some(4)).flops_per_token(4), 1216.0);
    }

    #[test]
    fn recomputation_is_one_more_forward_of_the_layers() {
        let c = small(None);
        assert_eq!(c.recompute_flops(&[4], false, true), 0.0);
        // 4 tokens · (2·144 + 2·64), plus A's forward (4·4·4·4/2 = 128) when attention is
        // recomputed too.
        assert_eq!(c.recompute_flops(&[4], true, false), 4.0 * 416.0);
        assert_eq!(c.recompute_flops(&[4], true, true), 4.0 * 416.0 + 128.0);
    }
}
