//! Atomic file and folder writes: write beside the target under a name unique to the write,
//! then rename over it, so a crash or Ctrl-C never leaves a half-written file where a good
//! one was. Output folders are replaced only when they hold nothing but what their writer
//! writes ([`Artifact`]), or when the user forces it: an output path never destroys files
//! the user did not ask to replace.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The tool's own folder for state that outlives a run (hosted job records): `LORA_TRAIN_HOME`,
/// else `~/.lora-train`. `None` when neither is set.
pub fn home() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("LORA_TRAIN_HOME") {
        return Some(PathBuf::from(dir));
    }
    var("HOME")
        .or_else(|| var("USERPROFILE"))
        .map(|home| PathBuf::from(home).join(".lora-train"))
}

/// Lower-case hex of `bytes` (a digest).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// A temporary path in the same folder as `target` (same filesystem, so the rename is atomic),
/// unique to this write: the process id and a counter, never a guessable sibling.
pub fn temp_path_for(target: &Path) -> PathBuf {
    unique_sibling(target, "tmp")
}

/// Writes `bytes` to `path` atomically: a temp file beside it, synced to disk, then renamed
/// over it; the temp file is removed when anything fails. Creates the parent folder. An error
/// names `path`, never the temp file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let temp = temp_path_for(path);
    let written = fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&temp, path));
    renamed.map_err(|e| {
        let _ = fs::remove_file(&temp);
        Error::io(path, e)
    })
}

/// An output folder of one kind (an adapter, a merged model, a checkpoint) and the names of
/// the files its writer puts there. A folder that holds nothing else is ours to replace; any
/// other content is the user's (or another kind's) and is replaced only when asked (`force`).
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    /// What the folder is, for messages: "an adapter folder".
    pub what: &'static str,
    /// The plain files a folder of this kind holds.
    pub files: &'static [&'static str],
    /// The subfolders it holds (their content is its own too).
    pub folders: &'static [&'static str],
}

impl Artifact {
    /// Whether `path` may be written as this artifact: it does not exist, is an empty folder,
    /// holds only this kind's files, or `force` is set. Else [`Error::WouldReplace`], naming
    /// the path and what was found there.
    pub fn check(&self, path: &Path, force: bool) -> Result<()> {
        if force {
            return Ok(());
        }
        match self.foreign_content(path)? {
            None => Ok(()),
            Some(why) => Err(Error::WouldReplace {
                path: path.to_path_buf(),
                why,
            }),
        }
    }

    /// Why `path` is not this kind of artifact (a file, a link, a name it does not write), or
    /// `None` when it is absent, empty or ours.
    pub fn foreign_content(&self, path: &Path) -> Result<Option<String>> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        if meta.file_type().is_symlink() {
            return Ok(Some(format!("is a symbolic link, not {}", self.what)));
        }
        if !meta.is_dir() {
            return Ok(Some(format!("is a file, not {}", self.what)));
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(|e| Error::io(path, e))? {
            let entry = entry.map_err(|e| Error::io(path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(|e| Error::io(path, e))?;
            let plain = kind.is_file();
            let ours = if plain {
                self.files.contains(&name.as_str())
            } else {
                kind.is_dir() && self.folders.contains(&name.as_str())
            };
            if !ours {
                names.push(if plain { name } else { format!("{name}/") });
            }
        }
        if names.is_empty() {
            return Ok(None);
        }
        names.sort();
        let more = match names.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        Ok(Some(format!(
            "holds `{}`{more}, which {} written by lora-train does not",
            names[0], self.what
        )))
    }

    /// Writes the folder `dir`: checks it (see [`Artifact::check`]), fills a temp folder
    /// beside it with `fill`, then swaps that in. What was at `dir` is renamed to a name unique
    /// to this write and removed only once the new folder is in place, so a failure leaves it
    /// as it was; no other path is touched. Errors name `dir`, never the temp folder.
    pub fn write(
        &self,
        dir: &Path,
        force: bool,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        self.check(dir, force)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = temp_path_for(dir);
        fs::create_dir(&tmp).map_err(|e| Error::io(dir, e))?;
        if let Err(e) = fill(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(retarget(e, &tmp, dir));
        }
        swap_in(&tmp, dir)
    }
}

/// Moves the finished temp folder `tmp` to `dir`, replacing what is there.
fn swap_in(tmp: &Path, dir: &Path) -> Result<()> {
    // A rename cannot replace a non-empty folder (nor a file with a folder): move the old one
    // aside under a name unique to this write first.
    let old = match fs::symlink_metadata(dir) {
        Ok(meta) => {
            let aside = unique_sibling(dir, "old");
            if let Err(e) = fs::rename(dir, &aside) {
                let _ = fs::remove_dir_all(tmp);
                return Err(Error::io(dir, e));
            }
            Some((aside, meta.is_dir()))
        }
        Err(_) => None,
    };
    if let Err(e) = fs::rename(tmp, dir) {
        if let Some((aside, _)) = &old {
            let _ = fs::rename(aside, dir);
        }
        let _ = fs::remove_dir_all(tmp);
        return Err(Error::io(dir, e));
    }
    if let Some((aside, is_dir)) = old {
        // `remove_dir_all` does not follow links inside; a link itself is removed as a file.
        let removed = if is_dir {
            fs::remove_dir_all(&aside)
        } else {
            fs::remove_file(&aside)
        };
        if let Err(e) = removed {
            tracing::warn!(
                "{} is written; the replaced copy at {} could not be removed: {e}",
                dir.display(),
                aside.display()
            );
        }
    }
    Ok(())
}

/// `e` with paths inside `tmp` moved to `dir`: what the user asked for is what errors name.
fn retarget(e: Error, tmp: &Path, dir: &Path) -> Error {
    let fix = |p: PathBuf| match p.strip_prefix(tmp) {
        Ok(rest) if rest.as_os_str().is_empty() => dir.to_path_buf(),
        Ok(rest) => dir.join(rest),
        Err(_) => p,
    };
    match e {
        Error::Io { path, source } => Error::Io {
            path: fix(path),
            source,
        },
        Error::Model { path, msg } => Error::Model {
            path: fix(path),
            msg: msg.replace(&tmp.display().to_string(), &dir.display().to_string()),
        },
        other => other,
    }
}

/// A hidden sibling of `target` unique to this process and write: `.{name}.{tag}-{pid}-{n}`.
fn unique_sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.{tag}-{}-{unique}", std::process::id()))
}

/// Whether a single output file may be written at `path`: it does not exist, or `force` is
/// set. A file's content cannot tell whose it is, so an existing one is never replaced
/// unasked. A folder there is refused even with `force`.
pub fn check_new_file(path: &Path, force: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(meta) if meta.is_dir() => Err(Error::io(
            path,
            std::io::Error::other("is a folder, where a file is to be written"),
        )),
        Ok(_) if force => Ok(()),
        Ok(_) => Err(Error::WouldReplace {
            path: path.to_path_buf(),
            why: "already exists".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub/record.json");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("record.json")]);
    }

    #[test]
    fn a_failed_write_names_the_target_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should go: the rename fails.
        let target = dir.path().join("taken");
        fs::create_dir_all(target.join("inside")).unwrap();
        let err = write_atomic(&target, b"x").unwrap_err().to_string();
        assert!(err.starts_with(&target.display().to_string()), "{err}");
        assert!(!err.contains(".tmp-"), "{err}");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    const KIND: Artifact = Artifact {
        what: "a test folder",
        files: &["a.json", "b.bin"],
        folders: &["cache"],
    };

    /// The names in `dir`, sorted (fsutil sits beside testutil, so it keeps its own).
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn fill_a(tmp: &Path) -> Result<()> {
        fs::write(tmp.join("a.json"), "new").map_err(|e| Error::io(tmp.join("a.json"), e))
    }

    #[test]
    fn an_artifact_folder_of_ours_is_replaced_and_nothing_else_is_left() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        KIND.write(&dir, false, |tmp| {
            fs::write(tmp.join("a.json"), "old").unwrap();
            fs::write(tmp.join("b.bin"), "old").unwrap();
            Ok(())
        })
        .unwrap();
        KIND.write(&dir, false, fill_a).unwrap();
        assert_eq!(names(&dir), ["a.json"]);
        assert_eq!(fs::read_to_string(dir.join("a.json")).unwrap(), "new");
        assert_eq!(names(root.path()), ["out"]);
        // An empty folder is no one's.
        let empty = root.path().join("empty");
        fs::create_dir(&empty).unwrap();
        KIND.write(&empty, false, fill_a).unwrap();
    }

    #[test]
    fn foreign_content_is_refused_by_name_and_left_intact_unless_forced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a.json"), "mine").unwrap();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = KIND.write(&dir, false, fill_a).unwrap_err();
        assert!(matches!(err, Error::WouldReplace { ref path, .. } if *path == dir));
        let text = err.to_string();
        assert!(text.starts_with(&dir.display().to_string()), "{text}");
        assert!(
            text.contains("`notes.txt` and 1 more") && text.contains("--force"),
            "{text}"
        );
        assert_eq!(names(&dir), ["a.json", "notes.txt", "sub"]);
        assert_eq!(fs::read_to_string(dir.join("a.json")).unwrap(), "mine");
        // A plain file where the folder should go.
        let file = root.path().join("file");
        fs::write(&file, "mine").unwrap();
        let text = KIND.write(&file, false, fill_a).unwrap_err().to_string();
        assert!(
            text.contains("is a file") && text.contains("--force"),
            "{text}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "mine");
        // Forced, both are replaced, and nothing is left beside them.
        KIND.write(&dir, true, fill_a).unwrap();
        KIND.write(&file, true, fill_a).unwrap();
        assert_eq!(names(&dir), ["a.json"]);
        assert_eq!(names(&file), ["a.json"]);
        assert_eq!(names(root.path()), ["file", "out"]);
        // A subfolder the kind writes is its own; a file of that name is not.
        let kinded = root.path().join("kinded");
        fs::create_dir_all(kinded.join("cache")).unwrap();
        fs::write(kinded.join("b.bin"), "x").unwrap();
        assert_eq!(KIND.foreign_content(&kinded).unwrap(), None);
        fs::remove_dir_all(kinded.join("cache")).unwrap();
        fs::write(kinded.join("cache"), "x").unwrap();
        let why = KIND.foreign_content(&kinded).unwrap().unwrap();
        assert!(why.contains("`cache`"), "{why}");
    }

    #[test]
    fn temp_names_are_unique_and_guessable_siblings_are_never_touched() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let a = temp_path_for(&dir);
        let b = temp_path_for(&dir);
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(root.path()));
        // What an older version used as its temp and backup names: someone else's now.
        for sibling in ["out.old", ".out.tmp"] {
            fs::create_dir(root.path().join(sibling)).unwrap();
            fs::write(root.path().join(sibling).join("keep"), "mine").unwrap();
        }
        KIND.write(&dir, false, fill_a).unwrap();
        KIND.write(&dir, false, fill_a).unwrap();
        assert_eq!(names(root.path()), [".out.tmp", "out", "out.old"]);
        for sibling in ["out.old", ".out.tmp"] {
            assert_eq!(names(&root.path().join(sibling)), ["keep"]);
        }
    }

    #[test]
    fn a_failed_fill_keeps_the_old_folder_and_names_the_target() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        KIND.write(&dir, false, fill_a).unwrap();
        let err = KIND
            .write(&dir, false, |tmp| {
                fs::write(tmp.join("b.bin"), "half").unwrap();
                // A write into a folder that is not there: an I/O error on a temp path.
                let bad = tmp.join("missing/b.bin");
                fs::write(&bad, "x").map_err(|e| Error::io(&bad, e))
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&dir.join("missing/b.bin").display().to_string()),
            "{err}"
        );
        assert!(!err.contains(".tmp-"), "{err}");
        assert_eq!(names(root.path()), ["out"]);
        assert_eq!(names(&dir), ["a.json"]);
        assert_eq!(fs::read_to_string(dir.join("a.json")).unwrap(), "new");
    }

    #[test]
    fn a_new_file_never_replaces_an_existing_one_unasked() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("x.tar.zst");
        check_new_file(&file, false).unwrap();
        fs::write(&file, "mine").unwrap();
        let err = check_new_file(&file, false).unwrap_err();
        assert!(matches!(err, Error::WouldReplace { .. }), "{err}");
        check_new_file(&file, true).unwrap();
        assert!(check_new_file(root.path(), true).is_err());
    }
}
