//! An on-disk cache of chat replies keyed by the request, so a re-run does not pay twice.
//!
//! The key is the SHA-256 of the request as sent (endpoint, model, messages, options),
//! never of a header, so two runs with different keys share entries. Entries are
//! written atomically; an unreadable entry is treated as a miss.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::Result;
use crate::fsutil::write_atomic;

/// A directory of cached replies.
#[derive(Debug, Clone)]
pub struct ResponseCache {
    dir: PathBuf,
}

impl ResponseCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResponseCache { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a request: hex SHA-256 of `endpoint` and the JSON body.
    pub fn key(endpoint: &str, body: &serde_json::Value) -> String {
        let mut hasher = Sha256::new();
        hasher.update(endpoint.as_bytes());
        hasher.update([0u8]);
        hasher.update(body.to_string().as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in hasher.finalize() {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }

    fn path(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("xx");
        self.dir.join(shard).join(format!("{key}.json"))
    }

    /// The cached value for `key`, if present and readable.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e}");
                None
            }
        }
    }

    /// Stores `value` under `key`.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| {
            super::error::ProviderError::Config(format!("cache entry cannot be serialized: {e}"))
        })?;
        Ok(write_atomic(&self.path(key), &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_depend_on_every_part_of_the_request() {
        let a = ResponseCache::key(
            "http://x/v1/chat/completions",
            &json!({"model": "m", "temperature": 0}),
        );
        let b = ResponseCache::key(
            "http://x/v1/chat/completions",
            &json!({"model": "m", "temperature": 1}),
        );
        let c = ResponseCache::key(
            "http://y/v1/chat/completions",
            &json!({"model": "m", "temperature": 0}),
        );
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            ResponseCache::key(
                "http://x/v1/chat/completions",
                &json!({"model": "m", "temperature": 0})
            )
        );
    }

    #[test]
    fn round_trip_and_corrupt_entries_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResponseCache::new(dir.path());
        let key = ResponseCache::key("e", &json!({}));
        assert_eq!(cache.get::<String>(&key), None);
        cache.put(&key, &"hello".to_string()).unwrap();
        assert_eq!(cache.get::<String>(&key).as_deref(), Some("hello"));
        std::fs::write(cache.path(&key), b"{not json").unwrap();
        assert_eq!(cache.get::<String>(&key), None);
    }
}
