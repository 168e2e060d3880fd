//! DPO's precomputed reference log-probabilities (`dpo.precompute_reference`), kept on disk so
//! that a run again with another `beta`, loss or learning rate does not compute them again.
//!
//! One JSON file in the output folder (`reference-logps.json`, which `--overwrite` leaves in
//! place) maps a key per pair to its `(chosen, rejected)` summed reply log-probabilities. The key
//! is the SHA-256 of what the values depend on: the base weights (each weight file's name, size
//! and modification time), the compute dtype and quantization, the reference (the base, or the
//! init adapter's files' bytes), and the pair as tokens with its reply mask (which the tokenizer
//! and the chat template made from the pair's text). A changed input misses the cache; nothing
//! stale is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{TokenizedExample, TokenizedPair};
use crate::fsutil::write_atomic;
use crate::model::ModelSource;
use crate::{Error, Result};

/// The cache file's name in the output folder.
pub const REFERENCE_CACHE: &str = "reference-logps.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    /// Pair key (hex) → `[chosen, rejected]`.
    entries: BTreeMap<String, [f64; 2]>,
}

/// The cached values of one output folder, for one model and reference.
#[derive(Debug)]
pub struct ReferenceCache {
    path: PathBuf,
    /// What every key of this run starts from: weights, dtype, quantization, reference.
    prefix: Vec<u8>,
    file: CacheFile,
}

impl ReferenceCache {
    /// The cache in `dir` for the reference that `model_key` describes ([`model_key`]); a
    /// missing file is an empty cache, and so is an unreadable one (with a warning: it is
    /// written again).
    pub fn open(dir: &Path, model_key: &str) -> Self {
        let path = dir.join(REFERENCE_CACHE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<CacheFile>(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: not a reference cache ({e}); computing the values again",
                    path.display()
                );
                CacheFile::default()
            }),
            Err(_) => CacheFile::default(),
        };
        Self {
            path,
            prefix: model_key.as_bytes().to_vec(),
            file,
        }
    }

    /// The key of `pair` under this cache's model and reference.
    pub fn key(&self, pair: &TokenizedPair) -> String {
        let mut h = Sha256::new();
        h.update((self.prefix.len() as u64).to_le_bytes());
        h.update(&self.prefix);
        for e in [&pair.chosen, &pair.rejected] {
            hash_example(&mut h, e);
        }
        crate::fsutil::hex(&h.finalize())
    }

    /// The cached values of `pair`.
    pub fn get(&self, pair: &TokenizedPair) -> Option<(f64, f64)> {
        self.file.entries.get(&self.key(pair)).map(|v| (v[0], v[1]))
    }

    pub fn insert(&mut self, pair: &TokenizedPair, value: (f64, f64)) {
        let key = self.key(pair);
        self.file.entries.insert(key, [value.0, value.1]);
    }

    /// Writes the file (atomically).
    pub fn save(&mut self) -> Result<()> {
        self.file.version = 1;
        let text = serde_json::to_vec(&self.file).map_err(|source| Error::Json {
            what: self.path.display().to_string(),
            source,
        })?;
        write_atomic(&self.path, &text)
    }
}

fn hash_example(h: &mut Sha256, e: &TokenizedExample) {
    h.update((e.input_ids.len() as u64).to_le_bytes());
    for (id, target) in e.input_ids.iter().zip(&e.targets) {
        h.update(id.to_le_bytes());
        h.update([*target as u8]);
    }
}

/// What the reference log-probabilities depend on beyond the pair: the base weight files
/// (name, size, modification time), the `settings` they are computed with (dtype,
/// quantization), and the reference adapter's files (`None`: the base model is the reference).
pub fn model_key(source: &ModelSource, settings: &str, reference: Option<&Path>) -> Result<String> {
    let mut key = format!("settings={settings}\n");
    let files: Vec<PathBuf> = match source {
        ModelSource::Gguf(path) => vec![path.clone()],
        ModelSource::HfDir(dir) => {
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            files
        }
    };
    for path in files {
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        key += &format!("weights={} {} {modified}\n", path.display(), meta.len());
    }
    match reference {
        None => key += "reference=base\n",
        Some(dir) => {
            let mut h = Sha256::new();
            for name in ["adapter_config.json", "adapter_model.safetensors"] {
                let path = dir.join(name);
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            key += &format!(
                "reference=adapter sha256:{}\n",
                crate::fsutil::hex(&h.finalize())
            );
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(reply: u32) -> TokenizedPair {
        let ex = |last: u32| TokenizedExample {
            input_ids: vec![1, 2, last],
            targets: vec![false, false, true],
        };
        TokenizedPair {
            chosen: ex(reply),
            rejected: ex(reply + 1),
        }
    }

    #[test]
    fn values_come_back_for_the_same_pair_model_and_reference_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ReferenceCache::open(dir.path(), "base A");
        cache.insert(&pair(3), (-1.25, -2.5));
        cache.save().unwrap();
        let again = ReferenceCache::open(dir.path(), "base A");
        assert_eq!(again.get(&pair(3)), Some((-1.25, -2.5)));
        assert_eq!(again.get(&pair(4)), None);
        assert_eq!(
            ReferenceCache::open(dir.path(), "base B").get(&pair(3)),
            None
        );
        let mut masked = pair(3);
        masked.chosen.targets[1] = true;
        assert_eq!(again.get(&masked), None);
        std::fs::write(dir.path().join(REFERENCE_CACHE), "not json").unwrap();
        assert_eq!(
            ReferenceCache::open(dir.path(), "base A").get(&pair(3)),
            None
        );
    }
}
