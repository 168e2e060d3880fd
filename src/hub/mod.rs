//! Models from the Hugging Face Hub: `org/name[@revision]` becomes a snapshot folder in the
//! standard cache (`cache.rs`), downloading what the cache lacks: `config.json`, the tokenizer
//! files ([`TOKENIZER_FILES`], each when the repo has it) and the safetensors weights
//! (`model.safetensors`, or `model.safetensors.index.json` and every shard its `weight_map`
//! lists). Later runs, and Python's `huggingface_hub`, find them there.
//!
//! The environment, as `huggingface_hub` reads it ([`HubSettings::from_env`]): `HF_ENDPOINT`
//! (default `https://huggingface.co`), `HF_TOKEN` (else the token file `huggingface-cli login`
//! writes; sent as a bearer token to the endpoint only, never printed or logged),
//! `HF_HUB_OFFLINE` (no request at all: the cache or an error), and `HF_HUB_CACHE`, else
//! `HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//!
//! A partial download is never cached: bytes go to `blobs/<etag>.incomplete`, which is resumed
//! with a range request by the next attempt (or the next run), checked against the announced
//! size and, for LFS files, the SHA-256 their ETag is, and only then renamed to its blob.
//!
//! **Why not the `hf-hub` crate.** Nothing in the dependency tree pulls it in (candle 0.11 does
//! not), and its blocking API (0.4 on ureq 2, 0.5 on ureq 3; 1.x is async on reqwest and tokio)
//! breaks rules this module must keep: it never reads `HF_TOKEN` (only the token file),
//! `HF_HUB_CACHE` or `HF_HUB_OFFLINE`; a 401 or 404 comes back as a bare status, so a gated
//! repo, a missing repo and a missing file cannot be told apart (the Hub says which in
//! `X-Error-Code`); it checks neither the size nor the SHA-256 of what it downloaded, and
//! appends a `200` reply to a resumed partial file when a server ignores the range. So this
//! module speaks the resolve protocol itself (`client.rs`) on the stack the providers' transport
//! uses: `ureq` 3, the retry policy of [`crate::net::retry`] and the never-printed keys of
//! [`crate::net::secret`], which moved below the model layer for it.

mod cache;
mod client;
mod spec;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

pub use cache::{missing_model_files, shard_names, HubCache};
pub use spec::HubSpec;

use crate::error::HubFailure;
use crate::net::retry::RetryPolicy;
use crate::net::secret::ApiKey;
use crate::{Error, Result};
use client::{Client, Remote, Target};

/// The Hub `huggingface_hub` talks to unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The files besides `config.json` and the weights that a model folder may hold and
/// `model::load` reads: the tokenizer, its config and chat template, and the generation config.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
];

const INDEX: &str = "model.safetensors.index.json";

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The Hub's base URL, no trailing `/`.
    pub endpoint: String,
    /// The token sent to the endpoint.
    pub token: Option<ApiKey>,
    /// The cache the snapshot lands in.
    pub cache: HubCache,
    /// No request at all: the cache, or an error.
    pub offline: bool,
    /// Draw a progress bar per file on a terminal.
    pub progress: bool,
    /// Retries of failed requests and of interrupted downloads (an attempt that brought new
    /// bytes starts the count again).
    pub retry: RetryPolicy,
}

impl HubSettings {
    /// The settings the environment gives, as `huggingface_hub` (`constants.py`) reads them.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any source of variables; an empty value counts as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = || {
            var("HOME")
                .or_else(|| var("USERPROFILE"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home().join(".cache"))
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .and_then(ApiKey::new);
        let truthy = |name: &str| {
            var(name).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_uppercase().as_str(),
                    "1" | "ON" | "YES" | "TRUE"
                )
            })
        };
        HubSettings {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim()
                .trim_end_matches('/')
                .to_string(),
            token,
            cache: HubCache::new(cache),
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            progress: true,
            retry: RetryPolicy {
                max_retries: 3,
                ..RetryPolicy::default()
            },
        }
    }
}

/// A model's snapshot in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The model folder: `<cache>/models--org--name/snapshots/<commit>`.
    pub dir: PathBuf,
    /// The commit it holds.
    pub commit: String,
    /// Bytes downloaded by this call (0: everything was cached).
    pub downloaded: u64,
}

/// The snapshot of `spec`, downloading what the cache lacks.
///
/// Offline (`HF_HUB_OFFLINE`), only the cache answers. A commit revision whose snapshot is
/// complete needs no request. Otherwise the Hub is asked which commit the revision is at, and
/// each file that commit's snapshot lacks is downloaded; when the Hub cannot be reached, a
/// complete cached snapshot of the revision is used instead, with a warning.
pub fn snapshot(spec: &HubSpec, settings: &HubSettings) -> Result<Snapshot> {
    let cache = &settings.cache;
    let cached = |dir: PathBuf| Snapshot {
        commit: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dir,
        downloaded: 0,
    };
    if settings.offline {
        return cache
            .complete_snapshot(spec)
            .map(cached)
            .map_err(|missing| Error::Hub {
                kind: HubFailure::NotCached,
                msg: format!(
                    "`{spec}` is not in the Hub cache {} ({missing}), and HF_HUB_OFFLINE forbids \
                     downloading it; run `lora-train download {spec}` where the Hub is reachable",
                    cache.root().display()
                ),
            });
    }
    if spec.revision_is_commit() {
        if let Ok(dir) = cache.complete_snapshot(spec) {
            return Ok(cached(dir));
        }
    }
    match download(spec, settings) {
        Err(Error::Hub {
            kind: HubFailure::Unreachable,
            msg,
        }) => match cache.complete_snapshot(spec) {
            Ok(dir) => {
                tracing::warn!("{msg}; using the cached snapshot {}", dir.display());
                Ok(cached(dir))
            }
            Err(_) => Err(Error::Hub {
                kind: HubFailure::Unreachable,
                msg,
            }),
        },
        other => other,
    }
}

/// Asks the Hub for the revision's commit and downloads every file of the model that the
/// cache lacks; the revision's ref is written once all of them are in.
fn download(spec: &HubSpec, settings: &HubSettings) -> Result<Snapshot> {
    let client = Client::new(
        &settings.endpoint,
        settings.token.clone(),
        settings.retry.clone(),
    );
    let first = Target {
        spec,
        revision: &spec.revision,
        file: "config.json",
    };
    let config = match client.head(&first) {
        Err(Error::Hub {
            kind: HubFailure::FileNotFound,
            ..
        }) => {
            return Err(Error::Hub {
                kind: HubFailure::FileNotFound,
                msg: format!(
                    "Hub repo `{}` has no config.json at revision `{}`: it is not a transformers \
                     model folder that lora-train can load",
                    spec.repo, spec.revision
                ),
            })
        }
        other => other?,
    };
    let mut fetch = Fetch {
        client: &client,
        settings,
        spec,
        commit: config.commit.clone(),
        downloaded: 0,
    };
    tracing::info!(
        "{spec}: commit {} from {}",
        fetch.commit,
        client.endpoint_shown()
    );
    fetch.file("config.json", Some(config))?;
    for name in TOKENIZER_FILES {
        fetch.optional(name)?;
    }
    if !fetch.optional("model.safetensors")? {
        if !fetch.optional(INDEX)? {
            return Err(Error::Hub {
                kind: HubFailure::NoSafetensors,
                msg: format!(
                    "Hub repo `{spec}` has neither model.safetensors nor {INDEX}; lora-train loads \
                     safetensors weights only (not pytorch_model.bin)"
                ),
            });
        }
        let index = fetch.dir().join(INDEX);
        let bytes = std::fs::read(&index).map_err(|e| Error::io(&index, e))?;
        for shard in shard_names(&bytes, &index)? {
            fetch.file(&shard, None)?;
        }
    }
    settings.cache.write_ref(spec, &fetch.commit)?;
    Ok(Snapshot {
        dir: fetch.dir(),
        commit: fetch.commit,
        downloaded: fetch.downloaded,
    })
}

/// The files of one commit, fetched into its snapshot.
struct Fetch<'a> {
    client: &'a Client,
    settings: &'a HubSettings,
    spec: &'a HubSpec,
    commit: String,
    downloaded: u64,
}

impl Fetch<'_> {
    fn dir(&self) -> PathBuf {
        self.settings.cache.snapshot_dir(self.spec, &self.commit)
    }

    /// [`Self::file`] for a file the repo may lack: false when it does.
    fn optional(&mut self, name: &str) -> Result<bool> {
        if self.dir().join(name).is_file() {
            return Ok(true);
        }
        if self
            .settings
            .cache
            .known_absent(self.spec, &self.commit, name)
        {
            return Ok(false);
        }
        match self.file(name, None) {
            Ok(()) => Ok(true),
            Err(Error::Hub {
                kind: HubFailure::FileNotFound,
                ..
            }) => {
                self.settings
                    .cache
                    .mark_absent(self.spec, &self.commit, name);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts `name` of the commit into its snapshot: nothing to do when it is linked already,
    /// a link when its blob is cached, else a download (`head`: what a HEAD already said).
    fn file(&mut self, name: &str, head: Option<Remote>) -> Result<()> {
        let cache = &self.settings.cache;
        if self.dir().join(name).is_file() {
            return Ok(());
        }
        let target = Target {
            spec: self.spec,
            revision: &self.commit,
            file: name,
        };
        let remote = match head {
            Some(remote) => remote,
            None => self.client.head(&target)?,
        };
        let blob = cache.blob(self.spec, &remote.etag);
        if !blob.is_file() {
            self.downloaded += self.fetch_blob(&target, &remote, &blob)?;
        }
        cache.link(self.spec, &self.commit, name, &remote.etag)?;
        Ok(())
    }

    /// Downloads a blob under its lock (another process may be fetching the same file); the
    /// bytes downloaded.
    fn fetch_blob(&self, t: &Target, remote: &Remote, blob: &Path) -> Result<u64> {
        let cache = &self.settings.cache;
        let lock_path = cache.lock_path(self.spec, &remote.etag);
        let part = cache.incomplete(self.spec, &remote.etag);
        for dir in [lock_path.parent(), part.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!("waiting for another process downloading {}", t.file);
                lock.lock().map_err(|e| Error::io(&lock_path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        if blob.is_file() {
            return Ok(0);
        }
        let size = remote
            .size
            .map(|s| format!(" ({})", indicatif::HumanBytes(s)))
            .unwrap_or_default();
        tracing::info!("downloading {}{size}", t.file);
        let bar = self.bar(t.file, remote.size);
        let done = self.client.download(t, remote, &part, &bar);
        bar.finish_and_clear();
        done?;
        std::fs::rename(&part, blob).map_err(|e| Error::io(blob, e))?;
        Ok(std::fs::metadata(blob).map(|m| m.len()).unwrap_or(0))
    }

    fn bar(&self, file: &str, size: Option<u64>) -> ProgressBar {
        if !self.settings.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(size.unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(file.to_string());
        bar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        HubSettings::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_cache_folder_follows_huggingface_hub() {
        let s = settings(&[("HOME", "/home/u")]);
        assert_eq!(s.cache.root(), Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, "https://huggingface.co");
        assert!(!s.offline);
        let s = settings(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache.root(), Path::new("/x/huggingface/hub"));
        let s = settings(&[("HOME", "/home/u"), ("HF_HOME", "/hf")]);
        assert_eq!(s.cache.root(), Path::new("/hf/hub"));
        let s = settings(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]);
        assert_eq!(s.cache.root(), Path::new("/c"));
        let s = settings(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "")]);
        assert_eq!(s.cache.root(), Path::new("/hf/hub"));
    }

    #[test]
    fn endpoint_token_and_offline_switches() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().to_str().unwrap();
        let s = settings(&[("HF_HOME", home), ("HF_ENDPOINT", "http://127.0.0.1:9/")]);
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert!(s.token.is_none());
        std::fs::write(tmp.path().join("token"), "hf_file\n").unwrap();
        let s = settings(&[("HF_HOME", home)]);
        assert_eq!(s.token, ApiKey::new("hf_file"));
        let s = settings(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]);
        assert_eq!(s.token, ApiKey::new("hf_env"));
        assert!(!format!("{s:?}").contains("hf_env"), "{s:?}");
        for (value, offline) in [
            ("1", true),
            ("true", true),
            ("YES", true),
            ("0", false),
            ("", false),
        ] {
            let s = settings(&[("HF_HOME", home), ("HF_HUB_OFFLINE", value)]);
            assert_eq!(s.offline, offline, "{value:?}");
        }
    }

    #[test]
    fn offline_answers_from_the_cache_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(&[("HF_HUB_CACHE", tmp.path().to_str().unwrap())]);
        s.offline = true;
        // An endpoint nothing listens on: a request would fail differently.
        s.endpoint = "http://127.0.0.1:9".into();
        let spec = HubSpec::parse("org/tiny").unwrap();
        let e = snapshot(&spec, &s).unwrap_err();
        assert!(
            matches!(&e, Error::Hub { kind: HubFailure::NotCached, msg } if msg.contains("HF_HUB_OFFLINE")),
            "{e}"
        );
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let blobs = s.cache.repo_dir(&spec).join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("c"), "{}").unwrap();
        std::fs::write(blobs.join("w"), "w").unwrap();
        s.cache.link(&spec, commit, "config.json", "c").unwrap();
        s.cache
            .link(&spec, commit, "model.safetensors", "w")
            .unwrap();
        s.cache.write_ref(&spec, commit).unwrap();
        let snap = snapshot(&spec, &s).unwrap();
        assert_eq!(snap.dir, s.cache.snapshot_dir(&spec, commit));
        assert_eq!((snap.commit.as_str(), snap.downloaded), (commit, 0));
    }
}
