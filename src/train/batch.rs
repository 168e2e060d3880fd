//! Micro-batches: left truncation to `max_seq_len`, right padding, and the target rows that
//! the loss reads.

use candle_core::{Device, Tensor};

use crate::data::TokenizedExample;
use crate::Result;

/// What happened to an example when it was fitted to `max_seq_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Kept(TokenizedExample),
    /// Cut from the left; the last assistant turn survived.
    Truncated(TokenizedExample),
    /// Even the last assistant turn does not fit.
    Dropped,
}

/// Fits an example into `max_len` tokens by dropping tokens from the left, so the final
/// target span (the last assistant turn) is kept whole; drops it when that is impossible.
pub fn fit_to_length(ex: &TokenizedExample, max_len: usize) -> Fit {
    let len = ex.input_ids.len();
    if len <= max_len {
        return Fit::Kept(ex.clone());
    }
    // Start of the last contiguous run of targets.
    let Some(last_target) = ex.targets.iter().rposition(|t| *t) else {
        return Fit::Dropped;
    };
    let mut run_start = last_target;
    while run_start > 0 && ex.targets[run_start - 1] {
        run_start -= 1;
    }
    let cut = len - max_len;
    // The token before the run must stay too: it predicts the first target.
    if run_start < cut + 1 {
        return Fit::Dropped;
    }
    let mut targets = ex.targets[cut..].to_vec();
    targets[0] = false;
    Fit::Truncated(TokenizedExample {
        input_ids: ex.input_ids[cut..].to_vec(),
        targets,
    })
}

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

    fn ex(n: usize, targets: std::ops::Range<usize>) -> TokenizedExample {
        TokenizedExample {
            input_ids: (0..n as u32).collect(),
            targets: (0..n).map(|i| targets.contains(&i)).collect(),
        }
    }

    #[test]
    fn truncates_from_the_left_keeping_the_last_turn() {
        let e = ex(10, 6..10);
        match fit_to_length(&e, 6) {
            Fit::Truncated(t) => {
                assert_eq!(t.input_ids, vec![4, 5, 6, 7, 8, 9]);
                assert_eq!(t.targets, vec![false, false, true, true, true, true]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fit_to_length(&e, 4), Fit::Dropped);
        assert!(matches!(fit_to_length(&e, 10), Fit::Kept(_)));
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
