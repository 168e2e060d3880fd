//! The Hub's resolve protocol over `ureq`, as `huggingface_hub` (`file_download.py`:
//! `get_hf_file_metadata`, `http_get`, `hf_raise_for_status`) speaks it.
//!
//! - `HEAD {endpoint}/{repo}/resolve/{revision}/{file}` with `Accept-Encoding: identity`. The
//!   reply's `X-Repo-Commit` is the commit the revision is at; `X-Linked-Etag` (a large file
//!   kept in LFS or Xet: the SHA-256 of its content) or else `ETag` (the git blob id) names the
//!   content; `X-Linked-Size` or `Content-Length` is its size. A redirect within the endpoint
//!   (a renamed repo) is followed; one to another host (the CDN, for LFS files) is not: the
//!   redirect reply itself carries those headers, and its `Location` is where the bytes are.
//! - `GET` that URL (the CDN's without the token, which goes to the endpoint's own host only),
//!   with `Range: bytes=N-` to resume a partial file. A `200` to a range request restarts from
//!   the first byte, a `416` starts over.
//! - Errors are told apart by `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
//!   `EntryNotFound`, `GatedRepo`), else by status: 401 and 403 as a gated repo, 404 as a missing
//!   file. 408, 429 and 5xx, and transport failures, are retried by [`RetryPolicy`] as the
//!   providers' transport retries them; a download cut off mid-way resumes where it stopped,
//!   and any attempt that brought new bytes resets the count.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::spec::HubSpec;
use crate::error::HubFailure;
use crate::net::lowercase_headers;
use crate::net::retry::{parse_retry_after, status_is_retryable, RetryPolicy, Verdict};
use crate::net::secret::ApiKey;
use crate::net::url::{display_path, encode_path, origin, resolve_location};
use crate::{Error, Result};

/// One file of one revision of a repo.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub spec: &'a HubSpec,
    /// The revision to ask for: the spec's at first, then the commit it resolved to, so that
    /// every file comes from the same commit.
    pub revision: &'a str,
    pub file: &'a str,
}

/// What the Hub said about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The commit the revision is at.
    pub commit: String,
    /// The content's ETag, quotes removed: the name of its blob.
    pub etag: String,
    /// The content's size in bytes, when the Hub said.
    pub size: Option<u64>,
    /// Where to GET the bytes.
    pub url: String,
}

impl Remote {
    /// The SHA-256 the content must have: an LFS file's ETag is that hash in hex.
    pub fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(self.etag.as_str())
    }
}

/// A client of one endpoint, with the token (if any) that goes to it.
pub(crate) struct Client {
    endpoint: String,
    token: Option<ApiKey>,
    agent: ureq::Agent,
    retry: RetryPolicy,
}

/// How one attempt at a download ended.
enum Attempt {
    /// The body ended with the whole file.
    Done,
    /// The attempt ended early (connection cut, short body, retryable status); try again.
    Again {
        why: String,
        server_wait: Option<Duration>,
    },
}

const MAX_REDIRECTS: usize = 5;

impl Client {
    pub fn new(endpoint: &str, token: Option<ApiKey>, retry: RetryPolicy) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("lora-train/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            agent,
            retry,
        }
    }

    /// The endpoint as messages show it: no credentials in its authority.
    pub fn endpoint_shown(&self) -> String {
        let (scheme, rest) = self
            .endpoint
            .split_once("://")
            .unwrap_or(("https", &self.endpoint));
        let rest = match rest.split_once('/') {
            Some((authority, path)) => format!(
                "{}/{path}",
                authority.rsplit('@').next().unwrap_or(authority)
            ),
            None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
        };
        format!("{scheme}://{rest}")
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `text` without the token in it.
    pub fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(token) => token.scrub(text),
            None => text.to_string(),
        }
    }

    fn error(&self, kind: HubFailure, msg: impl AsRef<str>) -> Error {
        Error::Hub {
            kind,
            msg: self.scrub(msg.as_ref()),
        }
    }

    fn resolve_url(&self, t: &Target) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            t.spec.repo,
            encode_path(t.revision, false),
            encode_path(t.file, true)
        )
    }

    fn call(
        &self,
        method: &'static str,
        url: &str,
        range_from: Option<u64>,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("accept-encoding", "identity");
        // The token goes to the endpoint's own server, never to a CDN it redirects to.
        if let Some(token) = &self.token {
            if origin(url) == origin(&self.endpoint) {
                builder = builder.header("authorization", format!("Bearer {}", token.expose()));
            }
        }
        if let Some(from) = range_from.filter(|&n| n > 0) {
            builder = builder.header("range", format!("bytes={from}-"));
        }
        let request = builder.body(()).map_err(ureq::Error::Http)?;
        self.agent.run(request)
    }

    /// Waits before retry number `retry` when the policy allows one; false: give up.
    fn wait(&self, t: &Target, retry: u32, server_wait: Option<Duration>, why: &str) -> bool {
        match self
            .retry
            .verdict(retry, true, server_wait, rand::random::<f64>())
        {
            Verdict::GiveUp => false,
            Verdict::RetryAfter(wait) => {
                tracing::warn!(
                    repo = %t.spec.repo,
                    file = t.file,
                    retry = retry + 1,
                    wait_ms = wait.as_millis() as u64,
                    "{}; retrying",
                    self.scrub(why)
                );
                std::thread::sleep(wait);
                true
            }
        }
    }

    fn unreachable(&self, t: &Target, why: &str) -> Error {
        self.error(
            HubFailure::Unreachable,
            format!(
                "cannot reach the Hugging Face Hub at {} for `{}` ({why}); check the network \
                 and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only what the cache holds",
                self.endpoint_shown(),
                t.spec
            ),
        )
    }

    /// The error a 4xx/5xx reply stands for, and whether another attempt could succeed.
    fn refused(
        &self,
        t: &Target,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (Error, bool) {
        let header = |name: &str| header_in(headers, name);
        let message = header("x-error-message")
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            })
            .unwrap_or_else(|| {
                String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            });
        let code = header("x-error-code").unwrap_or_default();
        let repo = &t.spec.repo;
        let endpoint = self.endpoint_shown();
        let token_hint = if self.has_token() {
            " that HF_TOKEN's account can see"
        } else {
            " (a private repo needs HF_TOKEN)"
        };
        let kind = match code.as_str() {
            "GatedRepo" => HubFailure::Gated,
            "RepoNotFound" => HubFailure::RepoNotFound,
            "RevisionNotFound" => HubFailure::RevisionNotFound,
            "EntryNotFound" => HubFailure::FileNotFound,
            _ if message.contains("Invalid credentials") || message.contains("Invalid token") => {
                let msg = format!(
                    "{endpoint} rejected HF_TOKEN (HTTP {status}: {message}); set HF_TOKEN to a \
                     valid token (https://huggingface.co/settings/tokens), or unset it"
                );
                return (self.error(HubFailure::BadReply, msg), false);
            }
            _ => match status {
                401 | 403 => HubFailure::Gated,
                404 => HubFailure::FileNotFound,
                _ => {
                    let retryable = status_is_retryable(status, &|n| header(n), body);
                    let detail = if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    };
                    let msg = format!(
                        "{endpoint} answered HTTP {status} for {}{detail}",
                        display_path(&self.resolve_url(t))
                    );
                    return (self.error(HubFailure::BadReply, msg), retryable);
                }
            },
        };
        let msg = match kind {
            HubFailure::Gated => {
                let mut msg = format!(
                    "`{repo}` is a gated model: accept the licence at {endpoint}/{repo}, then \
                     set HF_TOKEN to a token of that account"
                );
                if self.has_token() {
                    msg.push_str(&format!(
                        " (HF_TOKEN is set, but the Hub refused it with HTTP {status}: the \
                         licence is not accepted yet, the request awaits the authors' approval, \
                         or the token cannot read gated repos; the Hub said: {message})"
                    ));
                }
                msg
            }
            HubFailure::RepoNotFound => format!("no Hub repo `{repo}` at {endpoint}{token_hint}"),
            HubFailure::RevisionNotFound => format!(
                "Hub repo `{repo}` has no revision `{}` (a branch, tag or commit)",
                t.spec.revision
            ),
            _ => format!(
                "Hub repo `{repo}` has no file `{}` at revision `{}`",
                t.file, t.spec.revision
            ),
        };
        (self.error(kind, msg), false)
    }

    /// Asks the Hub about a file: its commit, ETag, size and where its bytes are.
    pub fn head(&self, t: &Target) -> Result<Remote> {
        let mut url = self.resolve_url(t);
        let (mut retry, mut redirects) = (0u32, 0usize);
        loop {
            let mut response = match self.call("HEAD", &url, None) {
                Ok(response) => response,
                Err(e) => {
                    let why = e.to_string();
                    if transport_retryable(&e) && self.wait(t, retry, None, &why) {
                        retry += 1;
                        continue;
                    }
                    return Err(self.unreachable(t, &why));
                }
            };
            let status = response.status().as_u16();
            let headers = lowercase_headers(response.headers());
            if (300..400).contains(&status) {
                let Some(location) = header_in(&headers, "location") else {
                    return Err(self.bad_reply(t, &format!("HTTP {status} without a Location")));
                };
                let next = resolve_location(&url, &location);
                if origin(&next) != origin(&self.endpoint) {
                    // The CDN: this reply describes the file, and its Location serves it.
                    return self.remote(t, &headers, next);
                }
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(self.bad_reply(t, "more than 5 redirects"));
                }
                url = next;
                continue;
            }
            if status >= 400 {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_vec()
                    .unwrap_or_default();
                let (err, retryable) = self.refused(t, status, &headers, &body);
                let server_wait = parse_retry_after(&|n| header_in(&headers, n), SystemTime::now());
                if retryable && self.wait(t, retry, server_wait, &format!("HTTP {status}")) {
                    retry += 1;
                    continue;
                }
                return Err(err);
            }
            return self.remote(t, &headers, url);
        }
    }

    fn bad_reply(&self, t: &Target, why: &str) -> Error {
        self.error(
            HubFailure::BadReply,
            format!(
                "{} did not answer as the Hub does for `{}` of `{}`: {why}",
                self.endpoint_shown(),
                t.file,
                t.spec
            ),
        )
    }

    fn remote(&self, t: &Target, headers: &[(String, String)], url: String) -> Result<Remote> {
        let header = |name: &str| header_in(headers, name);
        let Some(commit) = header("x-repo-commit") else {
            return Err(self.bad_reply(t, "no X-Repo-Commit header (is HF_ENDPOINT a Hub?)"));
        };
        let Some(etag) = header("x-linked-etag").or_else(|| header("etag")) else {
            return Err(self.bad_reply(t, "no ETag header"));
        };
        let etag = normalize_etag(&etag);
        if !plain_name(&etag) {
            return Err(self.bad_reply(t, &format!("ETag {etag:?} is not a plain name")));
        }
        let commit = commit.trim().to_string();
        if !plain_name(&commit) {
            return Err(self.bad_reply(t, &format!("X-Repo-Commit {commit:?} is not a plain name")));
        }
        let size = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok(Remote {
            commit,
            etag,
            size,
            url,
        })
    }

    /// Downloads `remote` into `part` (a `.incomplete` file, resumed from what it holds),
    /// checks its size and, for an LFS file, its SHA-256. On success `part` holds exactly the
    /// file; on failure it is kept for a later resume, unless its content is known to be wrong.
    pub fn download(
        &self,
        t: &Target,
        remote: &Remote,
        part: &Path,
        bar: &ProgressBar,
    ) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .map_err(|e| Error::io(part, e))?;
        let mut have = file.metadata().map_err(|e| Error::io(part, e))?.len();
        if remote.size.is_some_and(|size| have > size) {
            have = restart(&mut file, part)?;
        }
        let mut hasher = Sha256::new();
        if have > 0 && remote.sha256().is_some() {
            // The part already on disk counts toward the hash of the whole.
            file.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(part, e))?;
            std::io::copy(&mut (&mut file).take(have), &mut hasher)
                .map_err(|e| Error::io(part, e))?;
        }
        if have > 0 {
            tracing::info!("resuming {} of {} at {have} bytes", t.file, t.spec.repo);
        }
        let mut retry = 0u32;
        loop {
            let before = have;
            bar.set_position(have);
            let outcome = self.attempt(t, remote, &mut file, part, &mut have, &mut hasher, bar)?;
            let (why, server_wait) = match outcome {
                Attempt::Done => break,
                Attempt::Again { why, server_wait } => (why, server_wait),
            };
            if have > before {
                retry = 0;
            }
            if !self.wait(t, retry, server_wait, &why) {
                let size = remote.size.map(|s| format!(" of {s}")).unwrap_or_default();
                return Err(self.error(
                    HubFailure::Interrupted,
                    format!(
                        "the download of `{}` from `{}` was interrupted at {have}{size} bytes \
                         ({why}); run the command again to resume it (the partial file {} is \
                         kept and is never read as the model)",
                        t.file,
                        t.spec,
                        part.display()
                    ),
                ));
            }
            retry += 1;
        }
        if let Some(want) = remote.sha256() {
            let got = crate::fsutil::hex(&hasher.finalize());
            if !got.eq_ignore_ascii_case(want) {
                drop(file);
                let _ = std::fs::remove_file(part);
                return Err(self.error(
                    HubFailure::Corrupt,
                    format!(
                        "`{}` from `{}` has SHA-256 {got}, but the Hub announced {want}; the \
                         download was deleted, run the command again to fetch it afresh",
                        t.file, t.spec
                    ),
                ));
            }
        }
        file.sync_all().map_err(|e| Error::io(part, e))?;
        Ok(())
    }

    /// One GET of the rest of the file, appended to `file`.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        t: &Target,
        remote: &Remote,
        file: &mut File,
        part: &Path,
        have: &mut u64,
        hasher: &mut Sha256,
        bar: &ProgressBar,
    ) -> Result<Attempt> {
        if remote.size == Some(*have) {
            return Ok(Attempt::Done);
        }
        let mut url = remote.url.clone();
        let mut redirects = 0usize;
        let mut response = loop {
            let response = match self.call("GET", &url, Some(*have)) {
                Ok(response) => response,
                Err(e @ (ureq::Error::Http(_) | ureq::Error::BadUri(_))) => {
                    return Err(self.bad_reply(t, &e.to_string()))
                }
                // Mid-download, any failure to connect is an interruption to resume from.
                Err(e) => {
                    return Ok(Attempt::Again {
                        why: e.to_string(),
                        server_wait: None,
                    })
                }
            };
            let status = response.status().as_u16();
            if (300..400).contains(&status) {
                let Some(location) = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                else {
                    return Err(self.bad_reply(t, &format!("HTTP {status} without a Location")));
                };
                url = resolve_location(&url, location);
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(self.bad_reply(t, "more than 5 redirects"));
                }
                continue;
            }
            break response;
        };
        let status = response.status().as_u16();
        let headers = lowercase_headers(response.headers());
        match status {
            200 if *have > 0 => {
                // The server ignored the range: start over with the whole body.
                *have = restart(file, part)?;
                *hasher = Sha256::new();
                bar.set_position(0);
            }
            200 => {}
            206 => {
                let from = header_in(&headers, "content-range").and_then(|r| range_start(&r));
                if from != Some(*have) {
                    *have = restart(file, part)?;
                    *hasher = Sha256::new();
                    return Ok(Attempt::Again {
                        why: "the server resumed at another offset".into(),
                        server_wait: None,
                    });
                }
            }
            416 => {
                *have = restart(file, part)?;
                *hasher = Sha256::new();
                return Ok(Attempt::Again {
                    why: "the server refused to resume (HTTP 416)".into(),
                    server_wait: None,
                });
            }
            _ => {
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_vec()
                    .unwrap_or_default();
                let (err, retryable) = self.refused(t, status, &headers, &body);
                if retryable {
                    return Ok(Attempt::Again {
                        why: format!("HTTP {status}"),
                        server_wait: parse_retry_after(
                            &|n| header_in(&headers, n),
                            SystemTime::now(),
                        ),
                    });
                }
                return Err(err);
            }
        }
        file.seek(SeekFrom::Start(*have))
            .map_err(|e| Error::io(part, e))?;
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Ok(Attempt::Again {
                        why: format!("the connection broke: {e}"),
                        server_wait: None,
                    })
                }
            };
            if remote.size.is_some_and(|size| *have + n as u64 > size) {
                drop(reader);
                let _ = restart(file, part);
                return Err(self.error(
                    HubFailure::Corrupt,
                    format!(
                        "`{}` from `{}` is longer than the {} bytes the Hub announced; the \
                         download was deleted, run the command again to fetch it afresh",
                        t.file,
                        t.spec,
                        remote.size.unwrap_or_default()
                    ),
                ));
            }
            file.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
            hasher.update(&buf[..n]);
            *have += n as u64;
            bar.inc(n as u64);
        }
        match remote.size {
            Some(size) if *have < size => Ok(Attempt::Again {
                why: format!("the body ended at {have} of {size} bytes"),
                server_wait: None,
            }),
            _ => Ok(Attempt::Done),
        }
    }
}

/// Empties a partial file; its new length, 0.
fn restart(file: &mut File, part: &Path) -> Result<u64> {
    file.set_len(0).map_err(|e| Error::io(part, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(part, e))?;
    Ok(0)
}

/// Whether a failed request could succeed when sent again: a timeout or a connection that
/// broke, not a request that cannot be made, a name that does not resolve or a server that
/// refuses connections (those fail at once, so a machine without a network hears so quickly).
fn transport_retryable(e: &ureq::Error) -> bool {
    if let ureq::Error::Io(io) = e {
        return io.kind() != std::io::ErrorKind::ConnectionRefused;
    }
    !matches!(
        e,
        ureq::Error::Http(_)
            | ureq::Error::BadUri(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::Tls(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
    )
}

fn header_in(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// `"abc"` or `W/"abc"` -> `abc`.
fn normalize_etag(etag: &str) -> String {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.trim_matches('"').to_string()
}

/// A name fit for one path segment of the cache.
fn plain_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !text.starts_with('.')
}

/// The first byte of `bytes 100-199/200`.
fn range_start(content_range: &str) -> Option<u64> {
    let spec = content_range.trim().strip_prefix("bytes")?.trim_start();
    spec.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_ranges_and_names() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert!(plain_name("0a1b"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(!plain_name(bad), "{bad}");
        }
        let lfs = Remote {
            commit: "c".into(),
            etag: "a".repeat(64),
            size: None,
            url: String::new(),
        };
        assert!(lfs.sha256().is_some());
        let git = Remote {
            etag: "a".repeat(40),
            ..lfs
        };
        assert!(git.sha256().is_none());
    }

    #[test]
    fn urls_encode_revisions_and_keep_folders() {
        let spec = HubSpec::parse("org/m@refs/pr/1").unwrap();
        let client = Client::new("https://u:p@hub.example/mirror/", None, RetryPolicy::none());
        let t = Target {
            spec: &spec,
            revision: &spec.revision,
            file: "sub/config.json",
        };
        assert_eq!(
            client.resolve_url(&t),
            "https://u:p@hub.example/mirror/org/m/resolve/refs%2Fpr%2F1/sub/config.json"
        );
        assert_eq!(client.endpoint_shown(), "https://hub.example/mirror");
    }
}
