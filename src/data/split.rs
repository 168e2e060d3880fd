//! `data split`: a file into `<stem>.train.jsonl` and `<stem>.valid.jsonl`, with the trainer's own
//! seeded choice ([`crate::data::prepare::validation_mask`]), so a seed gives the split that
//! `data.validation = <fraction>` makes. Lines sharing a top-level `conversation_id` stay
//! together. Lines are copied byte for byte, whatever their format.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::formats::json_lines;
use crate::data::prepare::{validation_mask, SplitGroups};
use crate::fsutil::{check_new_file, write_atomic};
use crate::{Error, Result};

/// What a split wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub train: PathBuf,
    pub valid: PathBuf,
    pub train_lines: usize,
    pub valid_lines: usize,
    /// Distinct `conversation_id`s, when the lines have them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversations: Option<usize>,
}

/// The two paths a split of `input` writes, in `out_dir` or beside it.
pub fn split_paths(input: &Path, out_dir: Option<&Path>) -> (PathBuf, PathBuf) {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let dir = out_dir
        .map(Path::to_path_buf)
        .or_else(|| input.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    (
        dir.join(format!("{stem}.train.jsonl")),
        dir.join(format!("{stem}.valid.jsonl")),
    )
}

/// Splits `input`, holding out `fraction` of its lines (at least one) chosen with `seed`.
/// Existing outputs are replaced only with `force`.
pub fn split_file(
    input: &Path,
    fraction: f64,
    seed: u64,
    out_dir: Option<&Path>,
    force: bool,
) -> Result<SplitReport> {
    let (train, valid) = split_paths(input, out_dir);
    for p in [&train, &valid] {
        check_new_file(p, force)?;
    }
    let objects = json_lines(input)?;
    let groups = SplitGroups::read(input)?;
    let ids: Vec<String> = objects.iter().map(|(line, _)| groups.key(*line)).collect();
    let held = validation_mask(&ids, fraction, seed);
    if held.iter().all(|h| *h) {
        return Err(Error::NoUsableData {
            path: input.to_path_buf(),
            msg: format!(
                "holding out {fraction} leaves nothing to train on ({} lines)",
                ids.len()
            ),
        });
    }
    let bytes = std::fs::read(input).map_err(|e| Error::io(input, e))?;
    let raw: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let (mut train_text, mut valid_text) = (Vec::new(), Vec::new());
    for ((line, _), out) in objects.iter().zip(&held) {
        let text = raw[line - 1];
        let text = if *line == 1 {
            text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text)
        } else {
            text
        };
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let target = if *out {
            &mut valid_text
        } else {
            &mut train_text
        };
        target.extend_from_slice(text);
        target.push(b'\n');
    }
    write_atomic(&train, &train_text)?;
    write_atomic(&valid, &valid_text)?;
    let conversations = Some(groups.conversations()).filter(|n| *n > 0);
    Ok(SplitReport {
        train,
        valid,
        train_lines: held.iter().filter(|h| !**h).count(),
        valid_lines: held.iter().filter(|h| **h).count(),
        conversations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn conversations_do_not_leak_across_the_split() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("chats.jsonl");
        let lines: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"conversation_id": "c{}", "messages": [{{"role": "user", "content": "{i}"}}]}}"#, i / 4))
            .collect();
        std::fs::write(&input, lines.join("\n")).unwrap();
        let r = split_file(&input, 0.25, 3, None, false).unwrap();
        assert_eq!(r.train_lines + r.valid_lines, 40);
        assert_eq!(r.conversations, Some(10));
        assert!(
            r.valid_lines >= 10 && r.valid_lines.is_multiple_of(4),
            "{r:?}"
        );
        let ids = |p: &Path| -> std::collections::BTreeSet<String> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["conversation_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert!(ids(&r.train).is_disjoint(&ids(&r.valid)));
        let again = split_file(&input, 0.25, 3, None, false).unwrap_err();
        assert!(matches!(again, Error::WouldReplace { .. }), "{again}");
        let forced = split_file(&input, 0.25, 3, None, true).unwrap();
        assert_eq!(forced.valid_lines, r.valid_lines);
    }
}
