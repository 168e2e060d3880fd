//! Data preparation for a run: read the training file, hold out validation conversations (a
//! file of their own, or a seeded fraction of the training file), tokenize them with the chat
//! template and fit each example into the sequence length. It takes the template, tokenizer
//! and settings as plain values, so it knows nothing of models or job files.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::data::dataset::read_jsonl_numbered;
use crate::data::formats::Format;
use crate::data::mask::tokenize_line;
use crate::data::pairs::{read_pairs, tokenize_and_fit_pairs, NumberedPair};
use crate::data::TokenizedPair;
use crate::data::{ChatTemplate, ChatTokenizer, Conversation, LossOn, Message, TokenizedExample};
use crate::{Error, Result};

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

/// Counts from fitting examples into `max_seq_len`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FitReport {
    pub kept: usize,
    pub truncated: usize,
    pub dropped: usize,
}

/// An item of a JSONL file and its 1-based line.
pub type Numbered<T> = (usize, T);

/// A conversation and its line in the file, as `read_jsonl_numbered` returns them.
pub type NumberedConversation = Numbered<Conversation>;

/// Where validation conversations come from.
#[derive(Debug, Clone, Copy)]
pub enum HeldOut<'a> {
    /// No validation set.
    None,
    /// A JSONL file of its own.
    File(&'a Path),
    /// This fraction of the training file, chosen with the split seed.
    Fraction(f64),
}

/// How conversations become training examples.
#[derive(Debug, Clone, Copy)]
pub struct PrepareOptions {
    pub loss_on: LossOn,
    pub max_seq_len: usize,
    /// Seeds the choice of held-out conversations for [`HeldOut::Fraction`].
    pub split_seed: u64,
}

/// Tokenized training and validation examples.
#[derive(Debug, Clone, Default)]
pub struct PreparedData {
    pub train: Vec<TokenizedExample>,
    pub validation: Vec<TokenizedExample>,
    /// How the training examples fitted.
    pub fit: FitReport,
    /// How the validation examples fitted, the same way.
    pub validation_fit: FitReport,
}

/// Reads `train` and the held-out conversations, tokenizes both and fits them to
/// `opts.max_seq_len`; errors name the file and line. A file whose every trained reply is
/// empty is refused.
pub fn prepare_dataset(
    train: &Path,
    held_out: HeldOut,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    opts: &PrepareOptions,
) -> Result<PreparedData> {
    let mut convs = read_jsonl_numbered(train)?;
    refuse_empty_replies(&convs, train, opts.loss_on)?;
    let mut val_convs = Vec::new();
    let mut val_path = train;
    match held_out {
        HeldOut::File(path) => {
            val_path = path;
            val_convs = read_jsonl_numbered(path)?;
            refuse_empty_replies(&val_convs, path, opts.loss_on)?;
        }
        HeldOut::Fraction(fraction) => {
            let groups = SplitGroups::read(train)?;
            (convs, val_convs) = split_validation(convs, &groups, fraction, opts.split_seed);
        }
        HeldOut::None => {}
    }
    let fit_all = |convs: &[NumberedConversation], path: &Path| {
        tokenize_and_fit(
            convs,
            path,
            template,
            tokenizer,
            opts.loss_on,
            opts.max_seq_len,
        )
    };
    let (train_examples, fit) = fit_all(&convs, train)?;
    let (validation, validation_fit) = fit_all(&val_convs, val_path)?;
    Ok(PreparedData {
        train: train_examples,
        validation,
        fit,
        validation_fit,
    })
}

/// Tokenized preference pairs for a DPO run.
#[derive(Debug, Clone)]
pub struct PreparedPairs {
    /// The training file's shape.
    pub format: Format,
    pub train: Vec<TokenizedPair>,
    pub validation: Vec<TokenizedPair>,
    /// How the training pairs fitted.
    pub fit: FitReport,
    pub validation_fit: FitReport,
}

/// [`prepare_dataset`] for preference pairs: reads `train` (any of the pair shapes) and the
/// held-out pairs, tokenizes them with the chat template and fits each pair into
/// `opts.max_seq_len` per sequence; errors name the file and line.
pub fn prepare_pairs(
    train: &Path,
    held_out: HeldOut,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    opts: &PrepareOptions,
) -> Result<PreparedPairs> {
    let (format, mut pairs) = read_pairs(train)?;
    let mut val_pairs = Vec::new();
    let mut val_path = train;
    match held_out {
        HeldOut::File(path) => {
            val_path = path;
            val_pairs = read_pairs(path)?.1;
        }
        HeldOut::Fraction(fraction) => {
            let groups = SplitGroups::read(train)?;
            (pairs, val_pairs) = split_validation(pairs, &groups, fraction, opts.split_seed);
        }
        HeldOut::None => {}
    }
    let fit_all = |pairs: &[NumberedPair], path: &Path| {
        tokenize_and_fit_pairs(pairs, path, template, tokenizer, opts.max_seq_len)
    };
    let (train_pairs, fit) = fit_all(&pairs, train)?;
    let (validation, validation_fit) = fit_all(&val_pairs, val_path)?;
    Ok(PreparedPairs {
        format,
        train: train_pairs,
        validation,
        fit,
        validation_fit,
    })
}

/// Refuses conversations whose every reply the loss trains on (per `loss_on`) is empty or
/// blank: an adapter trained on them learns only to end its turn at once.
fn refuse_empty_replies(
    convs: &[NumberedConversation],
    path: &Path,
    loss_on: LossOn,
) -> Result<()> {
    let trained: Vec<&Message> = match loss_on {
        // Every token is a target, the prompts' too.
        LossOn::All => return Ok(()),
        LossOn::LastAssistant => convs
            .iter()
            .filter_map(|(_, c)| c.messages.iter().rev().find(|m| m.is_trained_assistant()))
            .collect(),
        LossOn::AllAssistant => convs
            .iter()
            .flat_map(|(_, c)| c.messages.iter().filter(|m| m.is_trained_assistant()))
            .collect(),
    };
    // With no trained reply at all, tokenizing names the first line at fault.
    if trained.is_empty() || trained.iter().any(|m| !m.content.trim().is_empty()) {
        return Ok(());
    }
    Err(Error::NoUsableData {
        path: path.to_path_buf(),
        msg: format!(
            "every reply the loss trains on is empty ({} in {} conversations, loss_on = {loss_on}); \
             the adapter would learn to say nothing",
            trained.len(),
            convs.len()
        ),
    })
}

/// Splits `fraction` of the (line-numbered) conversations (or pairs) off as validation, at least one,
/// chosen by a shuffle seeded from `seed`; both parts keep file order. Lines that `groups` gives
/// the same `conversation_id` land on the same side; a line it lacks is a group of its own.
pub fn split_validation<T>(
    items: Vec<Numbered<T>>,
    groups: &SplitGroups,
    fraction: f64,
    seed: u64,
) -> (Vec<Numbered<T>>, Vec<Numbered<T>>) {
    let keys: Vec<String> = items.iter().map(|(line, _)| groups.key(*line)).collect();
    let held_out = validation_mask(&keys, fraction, seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (item, out) in items.into_iter().zip(held_out) {
        if out {
            validation.push(item);
        } else {
            train.push(item);
        }
    }
    (train, validation)
}

/// The `conversation_id` of each line of a dataset that has one: lines sharing it are one
/// conversation, split together (by training's `data.validation` and by `data split`).
#[derive(Debug, Clone, Default)]
pub struct SplitGroups(std::collections::HashMap<usize, String>);

impl SplitGroups {
    /// Reads every line's top-level `conversation_id` (a string or a number).
    pub fn read(path: &Path) -> Result<Self> {
        let mut ids = std::collections::HashMap::new();
        for (line, obj) in crate::data::formats::json_lines(path)? {
            match obj.get("conversation_id") {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => {
                    ids.insert(line, s.clone());
                }
                Some(serde_json::Value::Number(n)) => {
                    ids.insert(line, n.to_string());
                }
                Some(_) => {
                    return Err(Error::Dataset {
                        path: path.to_path_buf(),
                        line,
                        msg: "conversation_id: expected a string or a number".into(),
                    })
                }
            }
        }
        Ok(SplitGroups(ids))
    }

    /// The group of `line`: its `conversation_id`, or the line alone.
    pub fn key(&self, line: usize) -> String {
        self.0
            .get(&line)
            .map_or_else(|| format!("\0line {line}"), |id| format!("id {id}"))
    }

    /// How many distinct `conversation_id`s there are (0 when the file has none).
    pub fn conversations(&self) -> usize {
        self.0
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}

/// Which items are held out for validation, when items sharing a key (a `conversation_id`) must
/// land on the same side: the distinct keys are shuffled with a stream seeded from `seed`, and
/// groups are taken from the end of that order until they hold `round(len * fraction)` items (at
/// least one). With every key distinct this is exactly the split training makes
/// ([`split_validation`]).
pub fn validation_mask<K: std::hash::Hash + Eq>(keys: &[K], fraction: f64, seed: u64) -> Vec<bool> {
    let mut group_of = Vec::with_capacity(keys.len());
    let mut sizes: Vec<usize> = Vec::new();
    let mut index: std::collections::HashMap<&K, usize> = std::collections::HashMap::new();
    for key in keys {
        let g = *index.entry(key).or_insert_with(|| {
            sizes.push(0);
            sizes.len() - 1
        });
        sizes[g] += 1;
        group_of.push(g);
    }
    // A stream of its own, apart from the epoch shuffles that use `seed` as given.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.shuffle(&mut rng);
    let n_val = ((keys.len() as f64) * fraction).round().max(1.0) as usize;
    let mut held = vec![false; sizes.len()];
    let mut taken = 0;
    for &g in order.iter().rev() {
        if taken >= n_val {
            break;
        }
        held[g] = true;
        taken += sizes[g];
    }
    group_of.into_iter().map(|g| held[g]).collect()
}

/// Tokenizes conversations and fits them to `max_len`; errors name `path` and the line.
pub fn tokenize_and_fit(
    convs: &[NumberedConversation],
    path: &Path,
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    loss_on: LossOn,
    max_len: usize,
) -> Result<(Vec<TokenizedExample>, FitReport)> {
    let mut out = Vec::with_capacity(convs.len());
    let mut report = FitReport::default();
    for (line, c) in convs {
        let ex = tokenize_line(c, path, *line, template, tokenizer, loss_on)?;
        match fit_to_length(&ex, max_len) {
            Fit::Kept(e) => {
                report.kept += 1;
                out.push(e)
            }
            Fit::Truncated(e) => {
                report.truncated += 1;
                out.push(e)
            }
            Fit::Dropped => report.dropped += 1,
        }
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TokenizedExample;
    use crate::data::{Message, Role};

    fn ex(len: usize, targets: std::ops::Range<usize>) -> TokenizedExample {
        TokenizedExample::synthetic(len, targets)
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
    fn a_file_of_empty_replies_is_refused() {
        let conv = |reply: &str| Conversation {
            messages: vec![
                Message::new(Role::User, "hi"),
                Message::new(Role::Assistant, reply),
            ],
        };
        let path = Path::new("empty.jsonl");
        let empty = vec![(1, conv("")), (2, conv(" \n"))];
        let e = refuse_empty_replies(&empty, path, LossOn::LastAssistant).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, Error::NoUsableData { .. })
                && msg.starts_with("empty.jsonl: every reply")
                && msg.contains("2 in 2 conversations"),
            "{msg}"
        );
        assert!(refuse_empty_replies(&empty, path, LossOn::AllAssistant).is_err());
        assert!(refuse_empty_replies(&empty, path, LossOn::All).is_ok());
        let one = vec![(1, conv("")), (2, conv("ok"))];
        assert!(refuse_empty_replies(&one, path, LossOn::LastAssistant).is_ok());
    }

    #[test]
    fn validation_split_is_seeded_and_keeps_file_order() {
        let convs: Vec<NumberedConversation> = (1..=10)
            .map(|line| {
                let msg = Message::new(Role::User, format!("{line}"));
                (
                    line,
                    Conversation {
                        messages: vec![msg],
                    },
                )
            })
            .collect();
        let (train, val) = split_validation(convs.clone(), &SplitGroups::default(), 0.25, 42);
        let lines = |v: &[NumberedConversation]| v.iter().map(|(l, _)| *l).collect::<Vec<_>>();
        assert_eq!(val.len(), 3);
        assert_eq!(train.len() + val.len(), 10);
        assert!(lines(&train).is_sorted() && lines(&val).is_sorted());
        let (train2, val2) = split_validation(convs.clone(), &SplitGroups::default(), 0.25, 42);
        assert_eq!((lines(&train), lines(&val)), (lines(&train2), lines(&val2)));
        // At least one conversation is held out, however small the fraction.
        assert_eq!(
            split_validation(convs.clone(), &SplitGroups::default(), 0.01, 42)
                .1
                .len(),
            1
        );
        // The split before groups existed: shuffle, then hold out the last ones.
        let mut shuffled = convs.clone();
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(42 ^ 0x5eed));
        let mut old: Vec<usize> = shuffled[7..].iter().map(|(l, _)| *l).collect();
        old.sort();
        assert_eq!(lines(&val), old);
    }

    #[test]
    fn training_split_keeps_a_conversation_id_on_one_side() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chats.jsonl");
        let lines: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    r#"{{"conversation_id": {}, "messages": [{{"role": "user", "content": "q{i}"}}, {{"role": "assistant", "content": "a{i}"}}]}}"#,
                    i / 4
                )
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let groups = SplitGroups::read(&path).unwrap();
        assert_eq!(groups.conversations(), 10);
        let convs = crate::data::dataset::read_jsonl_numbered(&path).unwrap();
        let (train, val) = split_validation(convs, &groups, 0.25, 9);
        // Whole groups of four are taken until at least a quarter is held out.
        assert_eq!((train.len(), val.len()), (28, 12));
        let conv_of = |v: &[NumberedConversation]| {
            v.iter()
                .map(|(line, _)| (line - 1) / 4)
                .collect::<std::collections::HashSet<_>>()
        };
        assert!(conv_of(&train).is_disjoint(&conv_of(&val)));
    }

    #[test]
    fn groups_stay_on_one_side() {
        let keys = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "g"];
        for seed in 0..20 {
            let mask = validation_mask(&keys, 0.3, seed);
            for (i, k) in keys.iter().enumerate() {
                for (j, k2) in keys.iter().enumerate() {
                    if k == k2 {
                        assert_eq!(mask[i], mask[j], "seed {seed}");
                    }
                }
            }
            assert!(mask.iter().filter(|m| **m).count() >= 3);
        }
    }
}
