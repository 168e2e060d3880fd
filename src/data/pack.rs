//! Padding-free packing: conversations concatenated into rows of up to `data.max_seq_len`
//! tokens by first-fit-decreasing (Johnson 1973; TRL's `packing_strategy = "bfd"` and Axolotl's
//! multipack use the same family), with equal lengths in a seeded order so a seed gives one
//! packing. Each conversation keeps its own tokens and loss targets; [`super::batch`] turns rows
//! into micro-batches whose attention does not cross conversations.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::TokenizedExample;
use crate::{Error, Result};

/// Packs conversations of `lengths` tokens into rows of at most `capacity` tokens: longest
/// first (equal lengths in a seeded shuffle), each into the first row it fits. Returns each
/// row's conversation indices in the order they sit in the row. Every conversation is placed
/// exactly once; one longer than `capacity` is an error.
pub fn first_fit_decreasing(
    lengths: &[usize],
    capacity: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if let Some((i, n)) = lengths.iter().enumerate().find(|(_, n)| **n > capacity) {
        return Err(Error::Config(format!(
            "data.packing: conversation {i} has {n} tokens, more than data.max_seq_len = {capacity}"
        )));
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    // Stable: equal lengths keep the seeded order.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut free = FreeSpace::new(lengths.len());
    for i in order {
        let n = lengths[i];
        match free.first_fit(n) {
            Some(r) => {
                rows[r].push(i);
                free.set(r, free.get(r) - n);
            }
            None => {
                let r = rows.len();
                rows.push(vec![i]);
                free.set(r, capacity - n);
            }
        }
    }
    Ok(rows)
}

/// The rows of `inspect --packing`: for each row its tokens and fill, and for each conversation
/// in it (by its 1-based line in `lines`) where it starts and ends in the row and its target
/// ranges in row positions.
pub fn format_rows(
    rows: &[Vec<usize>],
    examples: &[TokenizedExample],
    lines: &[usize],
    capacity: usize,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let total: usize = examples.iter().map(|e| e.input_ids.len()).sum();
    let _ = writeln!(
        out,
        "=== {} conversations in {} rows of up to {capacity} tokens ({:.1}% full) ===",
        examples.len(),
        rows.len(),
        100.0 * total as f64 / (rows.len().max(1) * capacity) as f64
    );
    for (r, row) in rows.iter().enumerate() {
        let len: usize = row.iter().map(|i| examples[*i].input_ids.len()).sum();
        let _ = writeln!(out, "row {r}: {len} tokens, {} conversations", row.len());
        let mut start = 0;
        for &i in row {
            let ex = &examples[i];
            let end = start + ex.input_ids.len();
            let mut targets = Vec::new();
            let mut pos = 0;
            while pos < ex.targets.len() {
                if ex.targets[pos] {
                    let run = pos;
                    while pos < ex.targets.len() && ex.targets[pos] {
                        pos += 1;
                    }
                    targets.push(format!("[{}..{})", start + run, start + pos));
                } else {
                    pos += 1;
                }
            }
            let _ = writeln!(
                out,
                "  line {:>5}  [{start}..{end})  {} targets {}",
                lines.get(i).copied().unwrap_or(i + 1),
                ex.num_targets(),
                targets.join(" ")
            );
            start = end;
        }
    }
    out
}

/// The free tokens of each row in a max segment tree, so the first row with room for `n` is
/// found in `O(log rows)` instead of by a scan of every row.
struct FreeSpace {
    size: usize,
    tree: Vec<usize>,
}

impl FreeSpace {
    fn new(rows: usize) -> Self {
        let size = rows.max(1).next_power_of_two();
        Self {
            size,
            tree: vec![0; 2 * size],
        }
    }

    fn get(&self, row: usize) -> usize {
        self.tree[self.size + row]
    }

    fn set(&mut self, row: usize, free: usize) {
        let mut at = self.size + row;
        self.tree[at] = free;
        while at > 1 {
            at /= 2;
            self.tree[at] = self.tree[2 * at].max(self.tree[2 * at + 1]);
        }
    }

    /// The first row with at least `n` free tokens (a row never opened has none).
    fn first_fit(&self, n: usize) -> Option<usize> {
        if self.tree[1] < n || n == 0 && self.tree[1] == 0 {
            return None;
        }
        let mut at = 1;
        while at < self.size {
            at = if self.tree[2 * at] >= n {
                2 * at
            } else {
                2 * at + 1
            };
        }
        Some(at - self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(rows: &[Vec<usize>], lengths: &[usize]) -> Vec<usize> {
        rows.iter()
            .map(|r| r.iter().map(|i| lengths[*i]).sum())
            .collect()
    }

    #[test]
    fn first_fit_decreasing_packs_longest_first_into_the_first_row_with_room() -> Result<()> {
        let lengths = [3, 7, 2, 5, 4, 1];
        let rows = first_fit_decreasing(&lengths, 8, 0)?;
        // 7 | 5 | 4: 7+1, 5+3, 4+2.
        assert_eq!(rows, vec![vec![1, 5], vec![3, 0], vec![4, 2]]);
        assert_eq!(fill(&rows, &lengths), vec![8, 8, 6]);
        Ok(())
    }

    #[test]
    fn every_conversation_is_placed_once_and_rows_fit() -> Result<()> {
        let lengths: Vec<usize> = (0..500).map(|i| (i * 37 % 61) + 1).collect();
        let rows = first_fit_decreasing(&lengths, 128, 9)?;
        let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        assert!(fill(&rows, &lengths).iter().all(|n| *n <= 128));
        let total: usize = lengths.iter().sum();
        // FFD stays within 11/9 of the optimum (+ a row); here it fills well.
        assert!(rows.len() <= total.div_ceil(128) + 2, "{} rows", rows.len());
        Ok(())
    }

    #[test]
    fn the_seed_orders_equal_lengths_only() -> Result<()> {
        let lengths = [4; 6];
        let a = first_fit_decreasing(&lengths, 8, 1)?;
        let b = first_fit_decreasing(&lengths, 8, 1)?;
        let c = first_fit_decreasing(&lengths, 8, 2)?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 3);
        Ok(())
    }

    #[test]
    fn a_conversation_longer_than_a_row_is_an_error() {
        let err = first_fit_decreasing(&[3, 9], 8, 0).unwrap_err().to_string();
        assert!(err.contains("max_seq_len = 8"), "{err}");
    }
}
