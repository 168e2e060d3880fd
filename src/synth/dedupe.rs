//! Near-duplicates and contamination. Text is normalized (lower case, anything but letters and
//! digits a space, spaces collapsed) and cut into word n-grams. Near-duplicates: MinHash
//! signatures over word 5-grams (Broder 1997), whose share of equal slots estimates the Jaccard
//! similarity of two examples' 5-gram sets; an example at `threshold` or above to a kept one is
//! dropped. Contamination: the share of an example's word 13-grams that occur in an evaluation
//! set (the 13-gram overlap of the GPT-3 paper's decontamination).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

/// Slots of a signature: the standard error of the estimate is about `1/sqrt(2 * 128)`.
const SLOTS: usize = 128;
/// Words per shingle for near-duplicates.
pub const DEDUPE_NGRAM: usize = 5;
/// Words per n-gram for contamination.
pub const CONTAMINATION_NGRAM: usize = 13;

/// Lower case, letters and digits kept, every other run of characters one space.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = true;
    for c in text.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
    // SipHash with fixed keys: stable within a build, which is all a run compares.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// Hashes of the word n-grams of normalized `text`; a text shorter than `n` words is one gram.
pub fn ngram_hashes(text: &str, n: usize) -> Vec<u64> {
    let norm = normalize(text);
    let words: Vec<&str> = norm.split(' ').filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return Vec::new();
    }
    if words.len() < n {
        return vec![hash_of(&words)];
    }
    words.windows(n).map(hash_of).collect()
}

/// A MinHash signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature([u64; SLOTS]);

/// Slot `i`'s permutation of a hash: a multiply and xor-shift with odd constants per slot.
fn permute(h: u64, i: usize) -> u64 {
    let a = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(2 * i as u64 + 1) | 1;
    let b = 0xbf58_476d_1ce4_e5b9u64.wrapping_mul(i as u64 + 7);
    let mut x = (h ^ b).wrapping_mul(a);
    x ^= x >> 31;
    x.wrapping_mul(0x94d0_49bb_1331_11eb)
}

impl Signature {
    /// The signature of `text`'s word 5-grams; `None` for a text without words.
    pub fn of(text: &str) -> Option<Signature> {
        let grams = ngram_hashes(text, DEDUPE_NGRAM);
        if grams.is_empty() {
            return None;
        }
        let mut slots = [u64::MAX; SLOTS];
        for g in grams {
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = (*slot).min(permute(g, i));
            }
        }
        Some(Signature(slots))
    }

    /// The estimated Jaccard similarity of two texts' 5-gram sets.
    pub fn similarity(&self, other: &Signature) -> f64 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / SLOTS as f64
    }
}

/// The kept examples' signatures; a new one is kept when no kept one is as similar as the
/// threshold.
#[derive(Debug, Default)]
pub struct NearDuplicates {
    kept: Vec<Signature>,
}

impl NearDuplicates {
    /// Keeps `text` unless it is a near-duplicate of a kept one (similarity at or above
    /// `threshold`); returns the highest similarity found when it is not kept. A threshold of 0
    /// (or above 1) keeps everything.
    pub fn admit(&mut self, text: &str, threshold: f64) -> Result<(), f64> {
        let Some(sig) = Signature::of(text) else {
            return Ok(());
        };
        if threshold > 0.0 && threshold <= 1.0 {
            let best = self
                .kept
                .iter()
                .map(|k| k.similarity(&sig))
                .fold(0.0f64, f64::max);
            if best >= threshold {
                return Err(best);
            }
        }
        self.kept.push(sig);
        Ok(())
    }
}

/// The 13-grams of an evaluation set.
#[derive(Debug, Default)]
pub struct Contamination {
    grams: HashSet<u64>,
}

impl Contamination {
    /// From the texts of an evaluation set (every message of every line).
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut grams = HashSet::new();
        for t in texts {
            let words = normalize(t);
            // Texts shorter than an n-gram cannot share one.
            if words.split(' ').count() >= CONTAMINATION_NGRAM {
                grams.extend(ngram_hashes(t, CONTAMINATION_NGRAM));
            }
        }
        Contamination { grams }
    }

    /// The share of `text`'s 13-grams found in the evaluation set (0 for a shorter text).
    pub fn overlap(&self, text: &str) -> f64 {
        if normalize(text).split(' ').count() < CONTAMINATION_NGRAM {
            return 0.0;
        }
        let grams = ngram_hashes(text, CONTAMINATION_NGRAM);
        let hits = grams.iter().filter(|g| self.grams.contains(g)).count();
        hits as f64 / grams.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, salt: &str) -> String {
        (0..n)
            .map(|i| format!("w{i}{salt}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn normalizing_ignores_case_and_punctuation() {
        assert_eq!(
            normalize("  Hello, WORLD!\n-- Ça va? "),
            "hello world ça va"
        );
    }

    #[test]
    fn minhash_estimates_jaccard() {
        let a = words(200, "");
        let same = Signature::of(&a).unwrap();
        assert_eq!(
            same.similarity(&Signature::of(&a.to_uppercase()).unwrap()),
            1.0
        );
        // Change 2 words of 200: ~10 of ~196 5-grams differ, Jaccard ≈ 0.9.
        let mut b: Vec<String> = a.split(' ').map(String::from).collect();
        b[50] = "x".into();
        b[150] = "y".into();
        let near = same.similarity(&Signature::of(&b.join(" ")).unwrap());
        assert!((0.78..=0.98).contains(&near), "{near}");
        let other = same.similarity(&Signature::of(&words(200, "z")).unwrap());
        assert!(other < 0.05, "{other}");
        let mut index = NearDuplicates::default();
        assert!(index.admit(&a, 0.8).is_ok());
        assert!(index.admit(&b.join(" "), 0.8).is_err());
        assert!(index.admit(&words(200, "z"), 0.8).is_ok());
        assert!(index.admit(&a, 0.0).is_ok(), "0 turns dedupe off");
    }

    #[test]
    fn contamination_is_the_share_of_shared_13_grams() {
        let eval = words(40, "");
        let c = Contamination::from_texts([eval.as_str(), "too short"]);
        assert_eq!(c.overlap(&eval), 1.0);
        // Half of the example is the eval text.
        let half = format!("{} {}", words(30, ""), words(30, "q"));
        let share = c.overlap(&half);
        assert!((0.3..0.5).contains(&share), "{share}");
        assert_eq!(c.overlap("short text"), 0.0);
        assert_eq!(c.overlap(&words(40, "q")), 0.0);
    }
}
