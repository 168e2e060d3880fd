//! Micro-batches: tokenized examples right-padded into one `[B, T]` tensor, with the flat rows
//! of the hidden states that predict each target, which is what the loss and scoring read.
//! Training, validation and `score` collate here, so one place says which rows predict targets.
//! With packing ([`collate_packed`]) a row holds several examples one after another, each with
//! its own targets, and the batch says where each starts (`segment_starts`). DPO's pairs
//! ([`collate_pairs`]) run as their chosen and rejected sequences in one batch.

use candle_core::{Device, Tensor};

use crate::data::{TokenizedExample, TokenizedPair};
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
    /// Examples (conversations) in the batch.
    pub conversations: usize,
    /// Packed rows: for each row and token, the index in the row of its example's first token
    /// (a row's trailing padding counts as one more example, which no real token sees).
    pub segment_starts: Option<Vec<Vec<u32>>>,
}

impl MicroBatch {
    pub fn num_targets(&self) -> usize {
        self.target_ids.len()
    }

    /// The tokens the batch computes on, padding included: rows times length.
    pub fn padded_tokens(&self) -> usize {
        self.input_ids.elem_count()
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
        conversations: b,
        segment_starts: None,
    })
}

/// A micro-batch of preference pairs: every pair's chosen sequence, then every pair's rejected
/// one, in one right-padded batch (TRL's `concatenated_forward` order).
#[derive(Debug, Clone)]
pub struct PairBatch {
    pub batch: MicroBatch,
    pub pairs: usize,
    /// The reply tokens (targets) of each sequence, chosen then rejected: how `batch.target_ids`
    /// splits into sequences.
    pub reply_tokens: Vec<usize>,
}

impl PairBatch {
    /// The targets of the chosen replies, which come first in `batch.target_ids`.
    pub fn chosen_targets(&self) -> usize {
        self.reply_tokens[..self.pairs].iter().sum()
    }
}

/// Collates pairs into one micro-batch of `2 × pairs` sequences, chosen first.
pub fn collate_pairs(pairs: &[&TokenizedPair], pad_id: u32, device: &Device) -> Result<PairBatch> {
    let sequences: Vec<&TokenizedExample> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    let batch = collate(&sequences, pad_id, device)?;
    // As `collate` counts them: a target at position 0 has nothing to predict it.
    let reply_tokens = sequences
        .iter()
        .map(|e| e.targets.iter().skip(1).filter(|t| **t).count())
        .collect();
    Ok(PairBatch {
        batch,
        pairs: pairs.len(),
        reply_tokens,
    })
}

/// Collates packed rows, each a list of examples placed one after another, into one
/// micro-batch: right-padded to the longest row, with each example's own targets (an example's
/// first token is never a target, so no target is predicted across examples) and the segment
/// starts that keep attention inside each example.
pub fn collate_packed(
    rows: &[Vec<&TokenizedExample>],
    pad_id: u32,
    device: &Device,
) -> Result<MicroBatch> {
    let len = |row: &Vec<&TokenizedExample>| row.iter().map(|e| e.input_ids.len()).sum::<usize>();
    let t = rows.iter().map(len).max().unwrap_or(0);
    let b = rows.len();
    let mut ids = vec![pad_id; b * t];
    let mut starts = Vec::with_capacity(b);
    let mut pred_rows = Vec::new();
    let mut target_ids = Vec::new();
    let (mut tokens, mut conversations) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let mut row_starts = Vec::with_capacity(t);
        for ex in row {
            let start = row_starts.len();
            let n = ex.input_ids.len();
            ids[i * t + start..i * t + start + n].copy_from_slice(&ex.input_ids);
            row_starts.resize(start + n, start as u32);
            for (pos, is_target) in ex.targets.iter().enumerate() {
                if *is_target && pos > 0 {
                    pred_rows.push((i * t + start + pos - 1) as u32);
                    target_ids.push(ex.input_ids[pos]);
                }
            }
        }
        tokens += row_starts.len();
        conversations += row.len();
        let pad_start = row_starts.len() as u32;
        row_starts.resize(t, pad_start);
        starts.push(row_starts);
    }
    Ok(MicroBatch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: None,
        pred_rows,
        target_ids,
        tokens,
        conversations,
        segment_starts: Some(starts),
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

    #[test]
    fn packed_rows_keep_each_examples_targets_and_starts() {
        let (a, b, c) = (ex(3, 2..3), ex(2, 1..2), ex(4, 1..4));
        let mb = collate_packed(&[vec![&a, &b], vec![&c]], 99, &Device::Cpu).unwrap();
        assert_eq!(
            mb.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![0, 1, 2, 0, 1], vec![0, 1, 2, 3, 99]]
        );
        // a's target 2 from row 0 position 1, b's target 1 (at 4) from 3, c's from 5, 6, 7.
        assert_eq!(mb.pred_rows, vec![1, 3, 5, 6, 7]);
        assert_eq!(mb.target_ids, vec![2, 1, 1, 2, 3]);
        assert_eq!(
            mb.segment_starts,
            Some(vec![vec![0, 0, 0, 3, 3], vec![0, 0, 0, 0, 4]])
        );
        assert_eq!((mb.tokens, mb.conversations), (9, 3));
        assert!(mb.attention_mask.is_none());
        // The same targets as the examples unpacked.
        let plain = collate(&[&a, &b, &c], 99, &Device::Cpu).unwrap();
        assert_eq!(plain.target_ids, mb.target_ids);
    }
}
