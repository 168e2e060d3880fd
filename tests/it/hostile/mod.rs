//! Hostile and careless use of the real binary, one module per root cause: every case asserts
//! the exit code, one clear `error:` line, and that the files it was pointed at are
//! byte-identical afterwards.

mod inputs;
mod outputs;
mod runs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// Every file under some paths, with its bytes, to compare after a command ran.
pub struct Snapshot(BTreeMap<PathBuf, Vec<u8>>);

impl Snapshot {
    /// Reads every file under each path (a file, or a folder walked recursively); a missing
    /// path records nothing, so a command that creates it shows up as a change.
    pub fn of(paths: &[&Path]) -> Self {
        let mut files = BTreeMap::new();
        for p in paths {
            collect(p, &mut files);
        }
        Snapshot(files)
    }

    /// Panics with the first difference when the files under `paths` differ from this snapshot.
    pub fn assert_unchanged(&self, paths: &[&Path]) {
        let now = Snapshot::of(paths);
        for (path, bytes) in &self.0 {
            match now.0.get(path) {
                None => panic!("{} was removed", path.display()),
                Some(b) if b != bytes => panic!("{} was changed", path.display()),
                Some(_) => {}
            }
        }
        for path in now.0.keys() {
            assert!(self.0.contains_key(path), "{} was created", path.display());
        }
    }
}

fn collect(path: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, files);
        }
    } else {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        files.insert(path.to_path_buf(), bytes);
    }
}

/// Runs `cmd` (logging off), expects exit `code` and no panic, and returns its one `error:`
/// line: stderr must hold exactly one non-empty line, starting with `error: `.
pub fn fails_with(cmd: &mut Command, code: i32) -> String {
    let out = cmd
        .env("RUST_LOG", "off")
        .output()
        .expect("lora-train runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn a_snapshot_sees_a_changed_a_removed_and_a_created_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("a"), "1").unwrap();
    std::fs::write(dir.join("b"), "2").unwrap();
    let snap = Snapshot::of(&[dir]);
    snap.assert_unchanged(&[dir]);
    std::fs::write(dir.join("a"), "changed").unwrap();
    let changed = std::panic::catch_unwind(|| snap.assert_unchanged(&[dir]));
    assert!(changed.is_err());
    std::fs::write(dir.join("a"), "1").unwrap();
    std::fs::remove_file(dir.join("b")).unwrap();
    assert!(std::panic::catch_unwind(|| snap.assert_unchanged(&[dir])).is_err());
    std::fs::write(dir.join("b"), "2").unwrap();
    std::fs::write(dir.join("c"), "3").unwrap();
    assert!(std::panic::catch_unwind(|| snap.assert_unchanged(&[dir])).is_err());
}
