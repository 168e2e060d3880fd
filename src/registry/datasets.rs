//! Datasets: each file a run read or a data tool wrote, by path and sha256, with its format,
//! row count and where it came from (the command that wrote it, or the job that read it).
//! The same file with the same content is one row, however often it is used.

use std::path::Path;

use rusqlite::{params, Row};
use serde::Serialize;

use super::{now, Registry, RegistryError, Result};

/// A dataset to record.
#[derive(Debug, Clone, Default)]
pub struct NewDataset {
    pub path: String,
    pub sha256: String,
    pub format: Option<String>,
    pub rows: Option<i64>,
    pub provenance: Option<String>,
}

impl NewDataset {
    /// A JSONL file as a dataset: its absolute path, sha256, rows (non-empty lines) and the
    /// format its first record shows (`None` when no format fits).
    pub fn from_file(path: &Path, provenance: Option<String>) -> Result<NewDataset> {
        let bytes = std::fs::read(path).map_err(|source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = crate::fsutil::sha256_hex(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let format = lines
            .clone()
            .next()
            .and_then(|l| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(l).ok()
            })
            .and_then(|obj| crate::data::formats::Format::detect(&obj))
            .map(|(f, _)| f.name().to_string());
        let rows = lines.by_ref().count() as i64;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(NewDataset {
            path: path.to_string_lossy().into_owned(),
            sha256,
            format,
            rows: Some(rows),
            provenance,
        })
    }
}

/// A dataset row.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub id: i64,
    pub path: String,
    pub sha256: String,
    pub format: Option<String>,
    pub rows: Option<i64>,
    pub provenance: Option<String>,
    pub created_at: String,
}

fn from_row(r: &Row) -> rusqlite::Result<Dataset> {
    Ok(Dataset {
        id: r.get(0)?,
        path: r.get(1)?,
        sha256: r.get(2)?,
        format: r.get(3)?,
        rows: r.get(4)?,
        provenance: r.get(5)?,
        created_at: r.get(6)?,
    })
}

impl Registry {
    /// Records a dataset (once per path and content); returns its id.
    pub fn record_dataset(&self, d: &NewDataset) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO datasets (path, sha256, format, rows, provenance, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (path, sha256) DO UPDATE SET \
                 format = COALESCE(?3, format), rows = COALESCE(?4, rows)",
                params![d.path, d.sha256, d.format, d.rows, d.provenance, now()],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .query_row(
                "SELECT id FROM datasets WHERE path = ?1 AND sha256 = ?2",
                params![d.path, d.sha256],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Dataset `id`.
    pub fn dataset(&self, id: i64) -> Result<Dataset> {
        self.one(
            "SELECT id, path, sha256, format, rows, provenance, created_at FROM datasets \
                 WHERE id = ?1",
            [id],
            from_row,
            "dataset",
            id,
        )
    }

    /// Every dataset, newest first.
    pub fn datasets(&self) -> Result<Vec<Dataset>> {
        self.all(
            "SELECT id, path, sha256, format, rows, provenance, created_at FROM datasets \
                 ORDER BY id DESC",
            [],
            from_row,
        )
    }
}
