//! The job file before serde: its table, the line of every key, and the `--set` overrides.
//!
//! Keys are addressed by dotted paths (`train.lr`, `eval.check.0.kind`) through the schema tree,
//! so errors name the file and line (or the `--set` argument) of the key at fault, and `--set`
//! reaches nested tables and arrays of tables the same way it reaches `train.lr`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::schema::{check_kind, describe, Key, KeyKind};
use super::suggest::{nearest_key, unknown_key_msg, unknown_section_msg};
use crate::{Error, KeyAt, Result};

/// The parsed job file: the table, where each key was written, and the overrides.
pub(super) struct Document<'a> {
    path: &'a Path,
    /// The schema's root: the job file's tables.
    keys: &'static [Key],
    pub(super) table: toml::Table,
    /// Dotted key path → 1-based line in the file.
    lines: HashMap<String, usize>,
    /// Dotted key path → the `--set` argument that last set it.
    overridden: HashMap<String, String>,
}

impl<'a> Document<'a> {
    pub(super) fn parse(text: &str, path: &'a Path, keys: &'static [Key]) -> Result<Self> {
        let syntax = |e: toml::de::Error| Error::JobFile {
            file: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            msg: e.message().trim_end().to_string(),
        };
        let spanned = toml::de::DeTable::parse(text).map_err(syntax)?;
        let mut lines = HashMap::new();
        record_lines(text, spanned.get_ref(), "", &mut lines);
        let table = toml::from_str::<toml::Table>(text).map_err(syntax)?;
        Ok(Document {
            path,
            keys,
            table,
            lines,
            overridden: HashMap::new(),
        })
    }

    /// Whether `key` was set with `--set`.
    pub(super) fn is_overridden(&self, key: &str) -> bool {
        self.overridden.contains_key(key)
    }

    /// An error about `key`, located at its `--set` override, its line, or its nearest
    /// enclosing table's line.
    pub(super) fn error_at(&self, key: &str, msg: &str) -> Error {
        Error::JobKey {
            file: Some(self.path.to_path_buf()),
            at: self.place_of(key),
            key: key.to_string(),
            msg: msg.to_string(),
        }
    }

    /// Where `key` was written: its `--set` override, its line, or its nearest enclosing
    /// table's line.
    fn place_of(&self, key: &str) -> KeyAt {
        if let Some(arg) = self.overridden.get(key) {
            return KeyAt::Set(arg.clone());
        }
        let mut at = key;
        loop {
            if let Some(&line) = self.lines.get(at) {
                return KeyAt::Line(line);
            }
            match at.rsplit_once('.') {
                Some((parent, _)) => at = parent,
                None => return KeyAt::Unknown,
            }
        }
    }

    /// Applies one `--set path=value`; `path` names a key through the schema's tables, with
    /// an index for a list of tables (`eval.check.0.kind`; the next free index appends one).
    pub(super) fn apply_override(&mut self, raw: &str) -> Result<()> {
        let path = self.path;
        let fail = |msg: String| Error::JobKey {
            file: Some(path.to_path_buf()),
            at: KeyAt::Set(raw.to_string()),
            key: raw
                .split_once('=')
                .map_or(raw, |(k, _)| k)
                .trim()
                .to_string(),
            msg,
        };
        let Some((key, value)) = raw.split_once('=') else {
            return Err(fail("expected section.key=value".into()));
        };
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').collect();
        let value = parse_override_value(value.trim());
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            let hint = nearest_key(self.keys, None, key)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(fail(format!(
                "expected section.key=value, got key `{key}`{hint}"
            )));
        }
        let root = self.keys;
        let mut schema: Option<&'static [Key]> = Some(root);
        let mut table = &mut self.table;
        let mut i = 0;
        while i + 1 < parts.len() {
            let (part, here) = (parts[i], parts[..i].join("."));
            let kind = match schema {
                // Inside a free table ([hosted]): any path, made of tables.
                None => KeyKind::FreeTable,
                Some(keys) => match keys.iter().find(|k| k.name == part) {
                    Some(found) => found.kind,
                    None if i == 0 => return Err(fail(unknown_section_msg(root, part))),
                    None => return Err(fail(unknown_key_msg(root, &here, keys, part))),
                },
            };
            let full = parts[..=i].join(".");
            let entry = table.entry(part.to_string()).or_insert_with(|| match kind {
                KeyKind::Tables(_) | KeyKind::FreeTables => toml::Value::Array(Vec::new()),
                _ => toml::Value::Table(toml::Table::new()),
            });
            match kind {
                KeyKind::Table(_) | KeyKind::FreeTable => {
                    schema = match kind {
                        KeyKind::Table(sub) => Some(sub),
                        _ => None,
                    };
                    let toml::Value::Table(t) = entry else {
                        return Err(fail(format!("`{full}` in the file is not a table")));
                    };
                    table = t;
                    i += 1;
                }
                KeyKind::Tables(_) | KeyKind::FreeTables => {
                    let sub = match kind {
                        KeyKind::Tables(sub) => Some(sub),
                        _ => None,
                    };
                    let toml::Value::Array(items) = entry else {
                        return Err(fail(format!(
                            "`{full}` in the file is not a list of tables"
                        )));
                    };
                    let n = match parts[i + 1].parse::<usize>() {
                        Ok(n) if i + 2 < parts.len() => n,
                        _ => {
                            return Err(fail(format!(
                                "`{full}` is a list of tables: address a key of one by its index, as `{full}.0.<key>=...`"
                            )))
                        }
                    };
                    if n > items.len() {
                        return Err(fail(format!(
                            "`{full}` has {} entries, so index {n} would leave a gap",
                            items.len()
                        )));
                    }
                    if n == items.len() {
                        items.push(toml::Value::Table(toml::Table::new()));
                    }
                    let toml::Value::Table(t) = &mut items[n] else {
                        return Err(fail(format!("`{full}.{n}` in the file is not a table")));
                    };
                    schema = sub;
                    table = t;
                    i += 2;
                }
                _ => return Err(fail("expected section.key=value".into())),
            }
        }
        let name = parts[parts.len() - 1];
        if let Some(keys) = schema {
            if !keys.iter().any(|k| k.name == name) {
                let here = parts[..parts.len() - 1].join(".");
                return Err(fail(unknown_key_msg(root, &here, keys, name)));
            }
        }
        table.insert(name.to_string(), value);
        self.overridden.insert(key.to_string(), raw.to_string());
        Ok(())
    }

    /// Rejects unknown tables and keys and values of the wrong type (in file order), then
    /// missing required tables and keys.
    pub(super) fn check_keys(&self) -> Result<()> {
        self.check_types(self.keys, &self.table, "")?;
        self.check_required(self.keys, Some(&self.table), "")
    }

    fn check_types(&self, keys: &'static [Key], table: &toml::Table, prefix: &str) -> Result<()> {
        let mut entries: Vec<(String, &toml::Value)> = table
            .iter()
            .map(|(name, value)| (join_path(prefix, name), value))
            .collect();
        entries.sort_by_key(|(full, _)| self.line(full));
        for (full, value) in entries {
            let name = full.rsplit('.').next().unwrap_or(&full);
            let Some(key) = keys.iter().find(|k| k.name == name) else {
                let msg = if prefix.is_empty() && value.is_table() {
                    unknown_section_msg(self.keys, name)
                } else if prefix.is_empty() {
                    let hint = nearest_key(self.keys, None, name)
                        .map(|k| format!(" (did you mean `{k}`?)"))
                        .unwrap_or_default();
                    format!("unknown key `{name}`{hint}")
                } else {
                    unknown_key_msg(self.keys, prefix, keys, name)
                };
                return Err(self.error_at(&full, &msg));
            };
            if let (true, KeyKind::Table(_) | KeyKind::FreeTable) = (prefix.is_empty(), key.kind) {
                if !value.is_table() {
                    let msg = format!(
                        "`{full}` must be a table ([{full}]), found {}",
                        describe(value)
                    );
                    return Err(self.error_at(&full, &msg));
                }
            }
            if let Err(e) = check_kind(key.kind, value) {
                return Err(self.error_at(&full, &e.message(&full)));
            }
            match (key.kind, value) {
                (KeyKind::Table(sub), toml::Value::Table(t)) => self.check_types(sub, t, &full)?,
                (KeyKind::Tables(sub), toml::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(t) = item {
                            self.check_types(sub, t, &format!("{full}.{i}"))?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_required(
        &self,
        keys: &'static [Key],
        table: Option<&toml::Table>,
        prefix: &str,
    ) -> Result<()> {
        for key in keys {
            let full = join_path(prefix, key.name);
            let value = table.and_then(|t| t.get(key.name));
            match (value, key.kind) {
                (None, KeyKind::Table(_) | KeyKind::FreeTable) if key.required => {
                    let at = if prefix.is_empty() { key.name } else { prefix };
                    return Err(self.error_at(at, &format!("missing section `[{full}]`")));
                }
                (None, _) if key.required => {
                    let at = if prefix.is_empty() { key.name } else { prefix };
                    return Err(self.error_at(at, &format!("missing key `{full}`")));
                }
                (Some(toml::Value::Table(t)), KeyKind::Table(sub)) => {
                    self.check_required(sub, Some(t), &full)?
                }
                (Some(toml::Value::Array(items)), KeyKind::Tables(sub)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check_required(sub, item.as_table(), &format!("{full}.{i}"))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The dotted path of every key the file or `--set` wrote, down to the schema's leaves (the
    /// content of a free table or a list of tables counts as written under its own key).
    pub(super) fn written(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        collect_written(self.keys, &self.table, "", &mut out);
        out
    }

    fn line(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(usize::MAX)
    }
}

fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn collect_written(keys: &[Key], table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (name, value) in table {
        let full = join_path(prefix, name);
        match (keys.iter().find(|k| k.name == name).map(|k| k.kind), value) {
            (Some(KeyKind::Table(sub)), toml::Value::Table(t)) => {
                collect_written(sub, t, &full, out)
            }
            _ => {
                out.insert(full);
            }
        }
    }
}

/// Records the line of every key under `table`, by dotted path (array items by index).
fn record_lines(
    text: &str,
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    lines: &mut HashMap<String, usize>,
) {
    for (key, value) in table.iter() {
        let full = join_path(prefix, key.get_ref());
        lines.insert(full.clone(), line_of(text, key.span().start));
        record_value_lines(text, value.get_ref(), value.span().start, &full, lines);
    }
}

fn record_value_lines(
    text: &str,
    value: &toml::de::DeValue<'_>,
    start: usize,
    full: &str,
    lines: &mut HashMap<String, usize>,
) {
    match value {
        toml::de::DeValue::Table(t) => record_lines(text, t, full, lines),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{full}.{i}");
                let item_start = if item.span().is_empty() {
                    start
                } else {
                    item.span().start
                };
                lines.insert(at.clone(), line_of(text, item_start));
                record_value_lines(text, item.get_ref(), item_start, &at, lines);
            }
        }
        _ => {}
    }
}

/// `--set` values: a TOML value when the text parses as one (`3`, `1e-4`, `true`, `"x"`,
/// `["q_proj"]`), otherwise the text itself as a string (`cosine`, `../data/train.jsonl`).
fn parse_override_value(text: &str) -> toml::Value {
    if let Ok(mut table) = toml::from_str::<toml::Table>(&format!("v = {text}")) {
        if table.len() == 1 {
            match table.remove("v") {
                Some(toml::Value::Datetime(_)) | None => {}
                Some(value) => return value,
            }
        }
    }
    toml::Value::String(text.to_string())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
