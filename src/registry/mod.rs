//! The registry: one SQLite file that ties runs together. Training jobs and their metrics,
//! model versions with movable aliases (MLflow's and W&B's registries), evaluations with their
//! pairwise comparisons, deployments and datasets. The CLI records every run into it, and
//! `lora-train serve` reads and writes the same file. Several processes share it without
//! MLflow's and Prefect's "database is locked": WAL, a busy timeout, and one connection per
//! process that writes. Migrations are embedded and numbered by `PRAGMA user_version`.

mod datasets;
mod deployments;
mod evaluations;
mod jobs;
mod metrics;
mod models;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use datasets::{Dataset, NewDataset};
pub use deployments::{Deployment, DeploymentAction, NewDeployment};
pub use evaluations::{Comparison, Evaluation, NewComparison, NewEvaluation};
pub use jobs::{
    Backend, Job, JobFilter, JobKind, JobStatus, Method, NewJob, Progress, StatusCounts,
};
pub use metrics::{MetricPoint, MetricsTail};
pub use models::{ModelSummary, ModelVersion, NewModelVersion, VersionRef};

/// The schema, one script per version; `user_version` counts the scripts applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_registry.sql"),
    include_str!("migrations/0002_job_kind.sql"),
];

/// How long a statement waits for another process's write to finish before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// What can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite refused to open the file or to run a statement.
    #[error("registry {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The folder for the file could not be made.
    #[error("registry {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was written by a newer lora-train.
    #[error(
        "registry {}: schema version {found} is newer than this build's {known}; \
         upgrade lora-train, or give another file with --db",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// No row with this id or name.
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },
    /// A change that the row's state does not allow (cancelling a completed job).
    #[error("{0}")]
    Conflict(String),
    /// A value the registry does not accept.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// An open registry: one connection, which this process writes through.
pub struct Registry {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish()
    }
}

impl Registry {
    /// The default file: `$LORA_TRAIN_HOME/registry.db`, else `~/.lora-train/registry.db`.
    pub fn default_path() -> Option<PathBuf> {
        crate::fsutil::home().map(|home| home.join("registry.db"))
    }

    /// Opens (creating it when absent) the registry at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Registry> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| RegistryError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let sql = |source| RegistryError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        let mut registry = Registry {
            conn,
            path: path.to_path_buf(),
        };
        registry.configure()?;
        registry.migrate()?;
        Ok(registry)
    }

    /// A second connection to the same file that only reads (the server's readers).
    pub fn open_reader(path: &Path) -> Result<Registry> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn =
            Connection::open_with_flags(path, flags).map_err(|source| RegistryError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        let registry = Registry {
            conn,
            path: path.to_path_buf(),
        };
        registry
            .conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| registry.err(e))?;
        Ok(registry)
    }

    /// The file this registry lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure(&self) -> Result<()> {
        let c = &self.conn;
        c.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        // WAL lets readers go on while one process writes; it is a property of the file.
        let mode: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                "registry {}: journal mode is {mode}, not WAL (a filesystem without shared memory?)",
                self.path.display()
            );
        }
        c.pragma_update(None, "synchronous", "NORMAL")
            .and_then(|()| c.pragma_update(None, "foreign_keys", "ON"))
            .map_err(|e| self.err(e))
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let path = self.path.clone();
        let err = |source| RegistryError::Sqlite {
            path: path.clone(),
            source,
        };
        // IMMEDIATE: two processes opening a new file at once do not both create the tables.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let found: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if found > known {
            return Err(RegistryError::TooNew {
                path: path.clone(),
                found,
                known,
            });
        }
        for (i, script) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(script).map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Every row `sql` selects, through `from_row`.
    fn all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        from_row: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The row `sql` selects, if any.
    fn first<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        from_row: impl FnOnce(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(sql, params, from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The row `sql` selects, or [`RegistryError::NotFound`] naming `what` and `id`.
    fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        from_row: impl FnOnce(&rusqlite::Row) -> rusqlite::Result<T>,
        what: &'static str,
        id: impl ToString,
    ) -> Result<T> {
        self.first(sql, params, from_row)?
            .ok_or_else(|| RegistryError::NotFound {
                what,
                id: id.to_string(),
            })
    }

    fn err(&self, source: rusqlite::Error) -> RegistryError {
        RegistryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// The current time as the registry writes it (RFC 3339 UTC, milliseconds).
pub(crate) fn now() -> String {
    crate::data::template::utc_now()
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A registry in a fresh temporary folder, kept alive with it.
    pub fn registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("registry.db")).unwrap();
        (dir, reg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_twice_migrates_once_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/registry.db");
        let a = Registry::open(&path).unwrap();
        let b = Registry::open(&path).unwrap();
        let mode: String = b
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = a
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.db");
        let reg = Registry::open(&path).unwrap();
        reg.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(reg);
        let e = Registry::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("schema version 99") && e.contains("upgrade"),
            "{e}"
        );
    }
}
