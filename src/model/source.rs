//! Where a model comes from: a Hugging Face folder, a GGUF file, or a Hub repo
//! `org/name[@revision]`, whose snapshot folder in the Hub cache [`crate::hub`] finds or
//! downloads (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`, laid out as
//! `huggingface_hub` writes it: `models--org--name/{blobs, refs, snapshots/<commit>/}`).

use std::path::{Path, PathBuf};

use crate::error::HubFailure;
use crate::hub::{self, HubCache, HubSettings, HubSpec};
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
        if let Some(hub_spec) = HubSpec::parse(spec) {
            return resolve_hub(spec, &hub_spec, &HubSettings::from_env()).map(ModelSource::HfDir);
        }
        Err(Error::model(
            path,
            "no such local file or folder, and not a Hub repo id (org/name[@revision])",
        ))
    }
}

/// The snapshot folder of a Hub spec, downloaded into the cache when it is not there (see
/// [`crate::hub`]). When the spec names nothing on the Hub either, the error says both.
pub fn resolve_hub(spec: &str, hub_spec: &HubSpec, settings: &HubSettings) -> Result<PathBuf> {
    match hub::snapshot(hub_spec, settings) {
        Ok(snapshot) => Ok(snapshot.dir),
        Err(Error::Hub { kind, msg })
            if matches!(
                kind,
                HubFailure::RepoNotFound | HubFailure::NotCached | HubFailure::Unreachable
            ) =>
        {
            Err(Error::Hub {
                kind,
                msg: format!("no such local file or folder `{spec}`, and {msg}"),
            })
        }
        Err(e) => Err(e),
    }
}

/// The Hub cache folder, as `huggingface_hub` chooses it: `HF_HUB_CACHE`, else `HF_HOME/hub`,
/// else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    HubSettings::from_env().cache.root().to_path_buf()
}

/// Finds `org/name[@revision]` complete in the hub cache at `cache`; the Hub itself is never
/// contacted.
pub fn resolve_hub_id(spec: &str, cache: &Path) -> Result<PathBuf> {
    let Some(hub_spec) = HubSpec::parse(spec) else {
        return Err(Error::model(
            spec,
            "not a Hub repo id (org/name[@revision])",
        ));
    };
    HubCache::new(cache)
        .complete_snapshot(&hub_spec)
        .map_err(|missing| Error::Hub {
            kind: HubFailure::NotCached,
            msg: format!(
                "`{spec}` is not in the Hub cache {}: {missing}",
                cache.display()
            ),
        })
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
        let err = resolve_hub_id("org/tiny", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks model.safetensors"), "{err}");
        std::fs::write(repo.join("snapshots/abc/model.safetensors"), "").unwrap();
        let p = resolve_hub_id("org/tiny", tmp.path()).unwrap();
        assert_eq!(p, repo.join("snapshots/abc"));
        let err = resolve_hub_id("org/other", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not in the Hub cache"), "{err}");
    }

    #[test]
    fn a_name_that_is_neither_a_path_nor_a_repo_says_both() {
        let tmp = tempfile::tempdir().unwrap();
        let mut settings = HubSettings::from_vars(|_| None);
        settings.cache = HubCache::new(tmp.path());
        settings.offline = true;
        let spec = HubSpec::parse("models/foo").unwrap();
        let err = resolve_hub("models/foo", &spec, &settings)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no such local file or folder `models/foo`, and `models/foo` is not in the Hub cache"),
            "{err}"
        );
        let err = ModelSource::resolve("./nope/model")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file or folder"), "{err}");
    }
}
