//! The layers of `src/`, stated once: a module may use the modules below it, never one above.
//!
//! [`LAYERS`] places every module, from the bottom up; the test reads each source file's
//! `crate::` (and, in the binary, `lora_train::`) paths and fails on an upward or sideways one.

use std::path::{Path, PathBuf};

/// From the bottom up. A file belongs to the longest entry its module path starts with, so
/// `eval` can later be split into its scoring (here, below `train`) and a harness above
/// `providers`. Entries on one line are independent of each other.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["testutil", "fsutil", "alloc", "threads", "net"],
    &["hub"],
    &["data"],
    &["registry"],
    &["gemm"],
    &["autograd"],
    &["kernels"],
    &["quant"],
    &["lora"],
    &["config"],
    &["device"],
    &["model"],
    &["generate"],
    &["eval"],
    &["export"],
    &["train"],
    &["providers", "bench"],
    &["harness"],
    &["deploy"],
    &["synth", "serve"],
    &["cli"],
];

/// The layer and entry a module path (`eval::score`) belongs to.
fn place(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (layer, entries) in LAYERS.iter().enumerate() {
        for entry in entries.iter() {
            let inside = module == *entry || module.starts_with(&format!("{entry}::"));
            if inside && best.is_none_or(|(_, b)| entry.len() > b.len()) {
                best = Some((layer, entry));
            }
        }
    }
    best
}

/// A source file's module path: `src/eval/score.rs` -> `eval::score`; the binary's own files
/// (`main.rs`, `cli/`) are `cli`.
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [only] if only == "lib" => None,
        [only] if only == "main" => Some("cli".into()),
        _ => Some(parts.join("::")),
    }
}

/// The module paths a file's code names through `root::` (`crate` or `lora_train`), comments
/// left out. `root::{a::b, Error}` gives `a::b` and `error` (the crate root re-exports
/// `Error` and `Result` from `error`).
fn uses(text: &str, root: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].ends_with(':') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let prefix = format!("{root}::");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find(&prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top(&group[..end]) {
                out.push(path_of(item.trim()));
            }
        } else {
            out.push(path_of(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// `a::b::C ...` -> `a::b`; a capitalized root item (`Error`, `Result`) -> `error`.
fn path_of(text: &str) -> String {
    let mut segs = Vec::new();
    for seg in text.split("::") {
        let name: String = seg
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_uppercase()) || name == "self" {
            break;
        }
        segs.push(name);
        if seg.len() != segs.last().map_or(0, String::len) {
            break;
        }
    }
    if segs.is_empty() && text.starts_with(|c: char| c.is_uppercase()) {
        return "error".into();
    }
    segs.join("::")
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

/// `a::{b, c}, d` -> [`a::{b, c}`, `d`]: the top-level items of a use group.
fn split_top(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// Every broken rule among `files` (path under `src/`, text): unplaced modules, and uses of a
/// module in a higher layer or of another entry in the same one.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, text) in files {
        let Some(module) = module_of(rel) else {
            continue;
        };
        let Some((layer, entry)) = place(&module) else {
            bad.push(format!(
                "{}: module `{module}` has no place in LAYERS",
                rel.display()
            ));
            continue;
        };
        let in_binary = entry == "cli";
        let root = if in_binary { "lora_train" } else { "crate" };
        for used in uses(text, root) {
            let Some((used_layer, used_entry)) = place(&used) else {
                bad.push(format!(
                    "{}: uses `{used}`, which has no place in LAYERS",
                    rel.display()
                ));
                continue;
            };
            if used_layer > layer || (used_layer == layer && used_entry != entry) {
                bad.push(format!(
                    "{}: `{module}` (layer {layer}) uses `{used}` (layer {used_layer})",
                    rel.display()
                ));
            }
        }
    }
    bad
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
        }
    }
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &src, &mut files);
    assert!(files.len() > 50, "{} files", files.len());
    let bad = violations(&files);
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn an_upward_or_sideways_use_is_reported() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let files = [
        file(
            "data/mask.rs",
            "use crate::{Error, Result};\nuse crate::fsutil::write_atomic;\n",
        ),
        file(
            "quant/nf4.rs",
            "use crate::{kernels::nf4::X, model::{a, b}};\n",
        ),
        file(
            "fsutil.rs",
            "// see crate::train for callers\nfn f() { crate::alloc::tune(); }\n",
        ),
        file(
            "cli/train.rs",
            "use lora_train::train::Trainer;\nuse crate::cli::x;\n",
        ),
        file("brand_new.rs", ""),
    ];
    let bad = violations(&files);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(
        bad[0].contains("`quant::nf4` (layer 8) uses `model` (layer 12)"),
        "{}",
        bad[0]
    );
    assert!(
        bad[1].contains("`fsutil` (layer 1) uses `alloc::tune` (layer 1)"),
        "{}",
        bad[1]
    );
    assert!(
        bad[2].contains("`brand_new` has no place in LAYERS"),
        "{}",
        bad[2]
    );
}
