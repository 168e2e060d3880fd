//! The server's registry connections: one writer (every change goes through it, so this
//! process never races itself for SQLite's write lock) and a few readers, which WAL lets run
//! beside the writer and beside other processes' writes. Calls run on tokio's blocking pool,
//! since a statement may wait out another process's write.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::registry::{Registry, RegistryError};

use super::error::ApiError;

/// Readers kept open; a request takes the first free one.
const READERS: usize = 4;

/// Shared registry access.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Registry>,
    readers: Vec<Mutex<Registry>>,
}

impl Db {
    /// Opens the writer (migrating the file) and the readers.
    pub fn open(path: &Path) -> Result<Db, RegistryError> {
        let writer = Registry::open(path)?;
        let readers = (0..READERS)
            .map(|_| Registry::open_reader(path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Db {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the writer, on the calling thread (the worker's).
    pub fn write_now<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        let guard = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Runs `f` with the writer on the blocking pool.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.write_now(f))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::from)
    }

    /// Runs `f` with a free reader on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let readers = &db.inner.readers;
            let guard = readers
                .iter()
                .find_map(|r| r.try_lock().ok())
                .unwrap_or_else(|| {
                    let i = rand::random_range(0..readers.len());
                    readers[i]
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                });
            f(&guard)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
    }
}
