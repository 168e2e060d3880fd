//! Where a model comes from: a Hugging Face folder, a GGUF file, or a hub id resolved
//! through the local hf-hub cache (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`),
//! laid out as `huggingface_hub` writes it: `models--org--name/{refs/main, snapshots/<rev>/}`.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A resolved model location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder with `config.json`, safetensors and `tokenizer.json`.
    HfDir(PathBuf),
    /// A single `.gguf` file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// Resolves a user's `--model` value.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::HfDir(path.to_path_buf()));
        }
        if path.is_file() {
            if spec.to_ascii_lowercase().ends_with(".gguf") {
                return Ok(ModelSource::Gguf(path.to_path_buf()));
            }
            return Err(Error::model(
                path,
                "a model file must be a .gguf; for safetensors give the folder that holds config.json",
            ));
        }
        if spec.to_ascii_lowercase().ends_with(".gguf")
            || spec.starts_with('.')
            || spec.starts_with('/')
        {
            return Err(Error::model(path, "no such file or folder"));
        }
        if looks_like_hub_id(spec) {
            return resolve_hub_id(spec, &hub_cache_dir()).map(ModelSource::HfDir);
        }
        Err(Error::model(
            path,
            "no such file or folder, and not a hub id of the form org/name",
        ))
    }
}

fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty())
}

/// The hf-hub cache folder, as `huggingface_hub` chooses it.
pub fn hub_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

/// Finds `org/name[@revision]` in a hub cache; the hub itself is never contacted.
pub fn resolve_hub_id(spec: &str, cache: &Path) -> Result<PathBuf> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (spec, "main"),
    };
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let not_cached = || {
        Error::model(
            &repo,
            format!(
                "model `{id}` is not in the local Hugging Face cache ({}) and the hub is not \
                 reachable from here; download it on a connected machine (huggingface-cli download {id}) \
                 and copy the cache, or pass a local folder or .gguf file",
                cache.display()
            ),
        )
    };
    if !repo.is_dir() {
        return Err(not_cached());
    }
    let ref_file = repo.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snap = repo.join("snapshots").join(&commit);
    if !snap.join("config.json").is_file() {
        return Err(not_cached());
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc\n").unwrap();
        std::fs::write(repo.join("snapshots/abc/config.json"), "{}").unwrap();
        let p = resolve_hub_id("org/tiny", tmp.path()).unwrap();
        assert_eq!(p, repo.join("snapshots/abc"));
        let err = resolve_hub_id("org/other", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the local Hugging Face cache"), "{err}");
    }
}
