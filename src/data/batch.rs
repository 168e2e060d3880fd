//! Micro-batches: tokenized examples right-padded into one `[B, T]` tensor, with the flat rows
//! of the hidden states that predict each target, which is what the loss and scoring read.
//! Training, validation and `score` collate here, so one place says which rows predict targets.

use candle_core::{Device, Tensor};

use crate::data::TokenizedExample;
use crate::Result;

/// A right-padded micro-batch.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// `[B, T]` 0/1, or `None` when no row is padded.
    pub attention_mask: Option<Tensor>,
    /// Flat row index `b * T + t - 1` of the hidden state that predicts each target.
    pub pred_rows: Vec<u32>,
    /// The target token ids, aligned with `pred_rows`.
    pub target_ids: Vec<u32>,
    /// Real (non-pad) tokens in the batch.
    pub tokens: usize,
}

impl MicroBatch {
    pub fn num_targets(&self) -> usize {
        self.target_ids.len()
    }
}

/// Collates examples into one right-padded micro-batch.
pub fn collate(examples: &[&TokenizedExample], pad_id: u32, device: &Device) -> Result<MicroBatch> {
    let t = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let b = examples.len();
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0u32; b * t];
    let mut pred_rows = Vec::new();
    let mut target_ids = Vec::new();
    let mut tokens = 0;
    for (i, ex) in examples.iter().enumerate() {
        let n = ex.input_ids.len();
        ids[i * t..i * t + n].copy_from_slice(&ex.input_ids);
        mask[i * t..i * t + n].iter_mut().for_each(|m| *m = 1);
        tokens += n;
        for (pos, is_target) in ex.targets.iter().enumerate() {
            if *is_target && pos > 0 {
                pred_rows.push((i * t + pos - 1) as u32);
                target_ids.push(ex.input_ids[pos]);
            }
        }
    }
    let padded = tokens < b * t;
    Ok(MicroBatch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: if padded {
            Some(Tensor::from_vec(mask, (b, t), device)?)
        } else {
            None
        },
        pred_rows,
        target_ids,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TokenizedExample;

    fn ex(len: usize, targets: std::ops::Range<usize>) -> TokenizedExample {
        TokenizedExample::synthetic(len, targets)
    }

    #[test]
    fn collate_pads_and_indexes_targets() {
        let a = ex(3, 2..3);
        let b = ex(2, 1..2);
        let mb = collate(&[&a, &b], 99, &Device::Cpu).unwrap();
        assert_eq!(
            mb.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![0, 1, 2], vec![0, 1, 99]]
        );
        assert_eq!(mb.pred_rows, vec![1, 3]);
        assert_eq!(mb.target_ids, vec![2, 1]);
        assert!(mb.attention_mask.is_some());
        assert_eq!(mb.tokens, 5);
    }
}
