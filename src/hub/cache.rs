//! The Hub cache, laid out as `huggingface_hub` (`file_download.py`) lays it out, so that its
//! downloads and ours are the same files:
//!
//! ```text
//! <cache>/models--org--name/blobs/<etag>                       a file's content, named by its ETag
//! <cache>/models--org--name/blobs/<etag>.incomplete           a download in progress: never read
//! <cache>/models--org--name/snapshots/<commit>/<file>         a link to ../../blobs/<etag>
//! <cache>/models--org--name/refs/<revision>                   the commit a branch or tag was at
//! <cache>/models--org--name/.no_exist/<commit>/<file>         an empty file: the repo has no <file>
//! <cache>/.locks/models--org--name/<etag>.lock                held while a blob is downloaded
//! ```
//!
//! A blob appears only by renaming a complete, checked `.incomplete` file, and a snapshot link
//! only after its blob; a ref is written once every file of the model is linked. So whatever
//! this module finds through a ref is whole.

use std::path::{Path, PathBuf};

use super::spec::{is_commit, HubSpec};
use crate::{Error, Result};

/// A Hub cache folder (`HF_HUB_CACHE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    /// The cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache { root: root.into() }
    }

    /// The cache folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--org--name`.
    pub fn repo_dir(&self, spec: &HubSpec) -> PathBuf {
        self.root.join(spec.cache_folder())
    }

    /// Where a file whose ETag is `etag` is kept.
    pub fn blob(&self, spec: &HubSpec, etag: &str) -> PathBuf {
        self.repo_dir(spec).join("blobs").join(etag)
    }

    /// Where that file is written while it downloads.
    pub fn incomplete(&self, spec: &HubSpec, etag: &str) -> PathBuf {
        self.repo_dir(spec)
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    /// The lock file held while that file downloads (the one `huggingface_hub` takes too).
    pub fn lock_path(&self, spec: &HubSpec, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(spec.cache_folder())
            .join(format!("{etag}.lock"))
    }

    /// The snapshot folder of `commit`: the model folder a load reads.
    pub fn snapshot_dir(&self, spec: &HubSpec, commit: &str) -> PathBuf {
        self.repo_dir(spec).join("snapshots").join(commit)
    }

    /// The file that holds the commit the spec's revision was at.
    pub fn ref_path(&self, spec: &HubSpec) -> PathBuf {
        self.repo_dir(spec).join("refs").join(&spec.revision)
    }

    fn no_exist(&self, spec: &HubSpec, commit: &str, file: &str) -> PathBuf {
        self.repo_dir(spec)
            .join(".no_exist")
            .join(commit)
            .join(file)
    }

    /// The commit the spec's revision names in the cache: itself for a commit hash, else the
    /// commit its ref holds. A revision with neither a ref nor a snapshot of its own name is
    /// not cached.
    pub fn commit_of(&self, spec: &HubSpec) -> Option<String> {
        if spec.revision_is_commit() {
            return Some(spec.revision.clone());
        }
        if let Ok(text) = std::fs::read_to_string(self.ref_path(spec)) {
            let commit = text.trim();
            if !commit.is_empty() && !commit.contains(['/', '\\']) && commit != ".." {
                return Some(commit.to_string());
            }
        }
        // A snapshot named after the revision itself (a short hash, or a hand-made cache).
        self.snapshot_dir(spec, &spec.revision)
            .is_dir()
            .then(|| spec.revision.clone())
    }

    /// Records that `commit` of the repo has the revision `spec.revision` points at.
    pub fn write_ref(&self, spec: &HubSpec, commit: &str) -> Result<()> {
        if spec.revision == commit || is_commit(&spec.revision) {
            return Ok(());
        }
        crate::fsutil::write_atomic(&self.ref_path(spec), commit.as_bytes())
    }

    /// Records that `commit` has no `file`, so that later runs need not ask again.
    pub fn mark_absent(&self, spec: &HubSpec, commit: &str, file: &str) {
        let path = self.no_exist(spec, commit, file);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::File::create(path);
    }

    /// Whether an earlier download found `commit` to have no `file`.
    pub fn known_absent(&self, spec: &HubSpec, commit: &str, file: &str) -> bool {
        self.no_exist(spec, commit, file).is_file()
    }

    /// Makes `snapshots/<commit>/<file>` point at the blob of `etag`: a relative symlink, as
    /// `huggingface_hub` makes it (a copy where symlinks are not available).
    pub fn link(&self, spec: &HubSpec, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.snapshot_dir(spec, commit).join(file);
        let blob = self.blob(spec, etag);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if std::fs::symlink_metadata(&pointer).is_ok() {
            if same_file(&pointer, &blob) {
                return Ok(pointer);
            }
            std::fs::remove_file(&pointer).map_err(|e| Error::io(&pointer, e))?;
        }
        make_link(&blob, &pointer, file).map_err(|e| Error::io(&pointer, e))?;
        Ok(pointer)
    }

    /// The snapshot the spec's revision names, when the cache holds all of the model: its
    /// `config.json` and its weights. `Err` says what is missing.
    pub fn complete_snapshot(&self, spec: &HubSpec) -> std::result::Result<PathBuf, String> {
        let Some(commit) = self.commit_of(spec) else {
            return Err(format!(
                "no ref `{}` in {}",
                spec.revision,
                self.repo_dir(spec).display()
            ));
        };
        let dir = self.snapshot_dir(spec, &commit);
        match missing_model_files(&dir) {
            missing if missing.is_empty() => Ok(dir),
            missing => Err(format!("{} lacks {}", dir.display(), missing.join(", "))),
        }
    }
}

/// What a model folder lacks to be loaded: `config.json`, and `model.safetensors` or
/// `model.safetensors.index.json` with every shard it lists (a link whose blob is gone counts as
/// missing).
pub fn missing_model_files(dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !dir.join("config.json").is_file() {
        missing.push("config.json".to_string());
    }
    if dir.join("model.safetensors").is_file() {
        return missing;
    }
    let index = dir.join("model.safetensors.index.json");
    match std::fs::read(&index) {
        Ok(bytes) => match shard_names(&bytes, &index) {
            Ok(shards) => {
                missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file()));
            }
            Err(e) => missing.push(format!("a readable model.safetensors.index.json ({e})")),
        },
        Err(_) => missing.push("model.safetensors (or model.safetensors.index.json)".to_string()),
    }
    missing
}

/// The shard files a `model.safetensors.index.json` lists in its `weight_map`, each once, in
/// order. A name that would leave the model folder is refused.
pub fn shard_names(bytes: &[u8], path: &Path) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::model(path, format!("not valid JSON: {e}")))?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(Error::model(path, "no `weight_map` object"));
    };
    let mut names: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(Error::model(
                path,
                format!("weight_map[{tensor:?}] is not a file name"),
            ));
        };
        if !safe_relative(file) {
            return Err(Error::model(
                path,
                format!("weight_map[{tensor:?}] = {file:?} is not a file inside the model folder"),
            ));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(Error::model(path, "`weight_map` lists no shard"));
    }
    Ok(names)
}

/// A relative path of plain segments: no `..`, no root, no backslash.
pub fn safe_relative(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && !file.contains(':')
        && file
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn same_file(pointer: &Path, blob: &Path) -> bool {
    match (std::fs::canonicalize(pointer), std::fs::canonicalize(blob)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(unix)]
fn make_link(blob: &Path, pointer: &Path, file: &str) -> std::io::Result<()> {
    // snapshots/<commit>/<file> -> ../../blobs/<etag>, one more `..` per folder in <file>.
    let depth = 2 + file.matches('/').count();
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    std::os::unix::fs::symlink(target, pointer)
}

#[cfg(not(unix))]
fn make_link(blob: &Path, pointer: &Path, _file: &str) -> std::io::Result<()> {
    std::fs::copy(blob, pointer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> HubSpec {
        HubSpec::parse(text).unwrap()
    }

    #[test]
    fn paths_follow_huggingface_hub() {
        let cache = HubCache::new("/c");
        let s = spec("org/tiny@v1");
        assert_eq!(cache.repo_dir(&s), Path::new("/c/models--org--tiny"));
        assert_eq!(
            cache.blob(&s, "e1"),
            Path::new("/c/models--org--tiny/blobs/e1")
        );
        assert_eq!(
            cache.incomplete(&s, "e1"),
            Path::new("/c/models--org--tiny/blobs/e1.incomplete")
        );
        assert_eq!(
            cache.lock_path(&s, "e1"),
            Path::new("/c/.locks/models--org--tiny/e1.lock")
        );
        assert_eq!(
            cache.snapshot_dir(&s, "abc"),
            Path::new("/c/models--org--tiny/snapshots/abc")
        );
        assert_eq!(
            cache.ref_path(&s),
            Path::new("/c/models--org--tiny/refs/v1")
        );
        assert_eq!(
            cache.ref_path(&spec("org/tiny@refs/pr/1")),
            Path::new("/c/models--org--tiny/refs/refs/pr/1")
        );
    }

    #[test]
    fn refs_links_and_completeness() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = HubCache::new(tmp.path());
        let s = spec("org/tiny");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert!(cache.commit_of(&s).is_none());
        assert!(cache
            .complete_snapshot(&s)
            .unwrap_err()
            .contains("no ref `main`"));

        for (etag, body) in [("c0", "{}"), ("w0", "weights")] {
            let blob = cache.blob(&s, etag);
            std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
            std::fs::write(&blob, body).unwrap();
        }
        let config = cache.link(&s, commit, "config.json", "c0").unwrap();
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "{}");
        // Linking again is a no-op; a nested name gets its own folder and deeper link.
        cache.link(&s, commit, "config.json", "c0").unwrap();
        let nested = cache.link(&s, commit, "sub/x.json", "c0").unwrap();
        assert_eq!(std::fs::read_to_string(nested).unwrap(), "{}");

        cache.write_ref(&s, commit).unwrap();
        assert_eq!(cache.commit_of(&s).as_deref(), Some(commit));
        let err = cache.complete_snapshot(&s).unwrap_err();
        assert!(err.contains("model.safetensors"), "{err}");
        cache.link(&s, commit, "model.safetensors", "w0").unwrap();
        assert_eq!(
            cache.complete_snapshot(&s).unwrap(),
            cache.snapshot_dir(&s, commit)
        );
        // A commit revision needs no ref; a blob that disappeared breaks completeness.
        let pinned = spec(&format!("org/tiny@{commit}"));
        assert!(cache.complete_snapshot(&pinned).is_ok());
        std::fs::remove_file(cache.blob(&s, "w0")).unwrap();
        assert!(cache.complete_snapshot(&s).is_err());

        assert!(!cache.known_absent(&s, commit, "chat_template.jinja"));
        cache.mark_absent(&s, commit, "chat_template.jinja");
        assert!(cache.known_absent(&s, commit, "chat_template.jinja"));
    }

    #[test]
    fn shard_lists() {
        let p = Path::new("model.safetensors.index.json");
        let index = br#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        assert_eq!(
            shard_names(index, p).unwrap(),
            vec!["m-1.safetensors", "m-2.safetensors"]
        );
        for bad in [
            br#"{"weight_map":{"a":"../x.safetensors"}}"#.as_slice(),
            br#"{"weight_map":{"a":"/etc/passwd"}}"#,
            br#"{"weight_map":{"a":3}}"#,
            br#"{"weight_map":{}}"#,
            br#"{"metadata":{}}"#,
            b"not json",
        ] {
            assert!(
                shard_names(bad, p).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
