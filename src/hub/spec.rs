//! `org/name[@revision]`: which repo, and which branch, tag or commit of it.

use std::fmt;

/// A model repo on the Hub and a revision of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit; `main` when the spec names none.
    pub revision: String,
}

impl HubSpec {
    /// Parses `org/name` or `org/name@revision`; `None` when `text` is not of that form.
    ///
    /// A repo id follows `huggingface_hub.utils.validate_repo_id`: letters, digits, `-`, `_`
    /// and `.`, neither part starting or ending with `-` or `.`, no `--` or `..`, at most 96
    /// characters, no `.git` at the end. A revision may hold `/` (`refs/pr/1`) but no empty,
    /// `.` or `..` segment, since it also names a file under the cache's `refs/`.
    pub fn parse(text: &str) -> Option<Self> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (text, None),
        };
        let (org, name) = repo.split_once('/')?;
        if repo.len() > 96 || !valid_part(org) || !valid_part(name) || name.ends_with(".git") {
            return None;
        }
        let revision = match revision {
            None => "main".to_string(),
            Some(r) if valid_revision(r) => r.to_string(),
            Some(_) => return None,
        };
        Some(HubSpec {
            repo: repo.to_string(),
            revision,
        })
    }

    /// Whether the revision is a full commit hash, which never moves: a cached snapshot of it
    /// needs no request to the Hub.
    pub fn revision_is_commit(&self) -> bool {
        is_commit(&self.revision)
    }

    /// `models--org--name`, the repo's folder in the cache.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl fmt::Display for HubSpec {
    /// `org/name`, with `@revision` unless it is `main`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == "main" {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// A full git commit hash: 40 lower-case hex digits.
pub fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !part.starts_with(['-', '.'])
        && !part.ends_with(['-', '.'])
        && !part.contains("--")
        && !part.contains("..")
}

fn valid_revision(revision: &str) -> bool {
    !revision.is_empty()
        && revision.len() <= 255
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && revision
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_revisions() {
        let s = HubSpec::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(s.repo, "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(s.revision, "main");
        assert_eq!(s.to_string(), "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(
            s.cache_folder(),
            "models--HuggingFaceTB--SmolLM2-135M-Instruct"
        );
        assert!(!s.revision_is_commit());

        let s = HubSpec::parse("google/gemma-3-1b-it@v1.0").unwrap();
        assert_eq!(
            (s.repo.as_str(), s.revision.as_str()),
            ("google/gemma-3-1b-it", "v1.0")
        );
        assert_eq!(s.to_string(), "google/gemma-3-1b-it@v1.0");
        let s = HubSpec::parse("org/m@refs/pr/1").unwrap();
        assert_eq!(s.revision, "refs/pr/1");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert!(HubSpec::parse(&format!("org/m@{commit}"))
            .unwrap()
            .revision_is_commit());
        assert!(!is_commit(&commit.to_uppercase()));
    }

    #[test]
    fn what_is_not_a_hub_id() {
        for bad in [
            "gpt2",
            "a/b/c",
            "/abs/path",
            "./rel/dir",
            "org/",
            "/name",
            "org/na me",
            "org/-name",
            "org/name.",
            "org--x/name",
            "org/a..b",
            "org/name.git",
            "org/name@",
            "org/name@../../x",
            "org/name@a//b",
            "org/name@a b",
            "C:\\models/x",
        ] {
            assert!(HubSpec::parse(bad).is_none(), "{bad}");
        }
        assert!(HubSpec::parse(&format!("org/{}", "x".repeat(96))).is_none());
    }
}
