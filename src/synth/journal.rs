//! Append-only JSONL outputs that survive a crash: each item is one line written with a single
//! `write` to a file opened for appending, and one file of a run (the detailed file of `synth`,
//! the records of `process`) is its commit log. An item counts as done once its line there is
//! complete; the lines other files derive from it (the training rows) are written just before
//! it. On reopening, a last line without its newline (a crash mid-write) is cut off, and a
//! derived file that does not hold exactly what the log implies is rewritten from the log, so
//! a kill at any point leaves no half line, no duplicate and no lost item.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// A JSONL file open for appending whole lines.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens `path` for appending (creating it and its folder), after cutting off a partial last
    /// line; returns the complete lines read as JSON. A complete line that is not JSON is an
    /// error naming it: the file is not one this tool wrote.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Value>)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                "{}: cutting off an unfinished last line ({} bytes) left by an interrupted run",
                path.display(),
                bytes.len() - complete
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            file.set_len(complete as u64)
                .map_err(|e| Error::io(path, e))?;
        }
        let mut values = Vec::new();
        for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value = serde_json::from_slice(line).map_err(|e| Error::Dataset {
                path: path.to_path_buf(),
                line: i + 1,
                msg: format!("not a line this tool wrote ({e}); move the file or give --force"),
            })?;
            values.push(value);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            values,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one value as a line, in one write.
    pub fn append<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let mut line = serde_json::to_string(value).map_err(|e| Error::Json {
            what: self.path.display().to_string(),
            source: e,
        })?;
        line.push('\n');
        self.append_line(&line)
    }

    /// Appends text that is already one line ending in `\n`.
    pub fn append_line(&mut self, line: &str) -> Result<()> {
        debug_assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the file to disk (at the end of a run).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// Opens a derived file for appending after making it hold exactly `lines` (each without its
/// newline): left alone when it does, rewritten atomically when it does not (the lines an
/// interrupted item wrote before its commit, or a file edited by hand).
pub fn open_derived(path: &Path, lines: &[String]) -> Result<Journal> {
    let mut expected = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        expected.push_str(l);
        expected.push('\n');
    }
    let current = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(path, e)),
    };
    if current.as_deref() != Some(expected.as_bytes()) && (current.is_some() || !lines.is_empty()) {
        if current.is_some() {
            tracing::info!(
                "{}: rewritten from the committed items ({} lines)",
                path.display(),
                lines.len()
            );
        }
        write_atomic(path, expected.as_bytes())?;
    }
    Ok(Journal::open(path)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_partial_last_line_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let (mut j, values) = Journal::open(&path).unwrap();
        assert_eq!(values, vec![json!({"a": 1}), json!({"b": 2})]);
        j.append(&json!({"d": 4})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n"
        );
        std::fs::write(&path, "{\"a\":1}\nnot json\n").unwrap();
        let e = Journal::open(&path).unwrap_err().to_string();
        assert!(e.contains("log.jsonl:2: not a line this tool wrote"), "{e}");
    }

    #[test]
    fn a_derived_file_is_made_to_match_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        let lines = vec!["{\"x\":1}".to_string(), "{\"x\":2}".to_string()];
        // An extra line from an item that never committed, then a missing one.
        std::fs::write(&path, "{\"x\":1}\n{\"x\":2}\n{\"x\":3}\n").unwrap();
        let mut j = open_derived(&path, &lines).unwrap();
        j.append_line("{\"x\":9}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"x\":1}\n{\"x\":2}\n{\"x\":9}\n"
        );
        std::fs::write(&path, "{\"x\":1}\n").unwrap();
        open_derived(&path, &lines).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"x\":1}\n{\"x\":2}\n"
        );
    }
}
