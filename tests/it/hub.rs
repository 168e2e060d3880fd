//! Hub downloads against a mock Hub: two loopback servers, the Hub's resolve endpoints and a CDN
//! that serves the large (LFS) files, answering as huggingface.co does (`X-Repo-Commit`, `ETag`,
//! `X-Linked-Etag`/`X-Linked-Size` on a 302 to the CDN, `X-Error-Code`, ranges). The binary runs
//! with `HF_ENDPOINT` pointed at it and a cache of the test's own; the servers count every
//! request and cut, corrupt or refuse on purpose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::common;
use crate::common::cli::{lora_train, succeeded};
use crate::providers_support::{MockServer, Recorded, Reply};

const COMMIT: &str = "5f1c0a3e9b7d2c4a6e8f0b1d3c5e7a9b2d4f6a8c";
const TOKEN: &str = "hf_mockSecretToken0123456789";

/// One repo: its files, and who may read it.
struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    /// Only this bearer token may read it (a gated model whose licence that account accepted).
    gated_for: Option<String>,
}

/// What the servers do wrong on purpose.
#[derive(Default)]
struct Faults {
    /// Cut this many CDN replies after half of the file.
    cut_next: usize,
    /// Never send a byte past half of the file.
    cut_always: bool,
    /// Answer a range request with the whole file (`200`).
    ignore_range: bool,
    /// Serve other bytes of the right length.
    corrupt: bool,
}

struct MockHub {
    hub: MockServer,
    cdn: MockServer,
    faults: Arc<Mutex<Faults>>,
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Large files live in LFS: the Hub redirects them to the CDN.
fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".bin")
}

fn hub_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, serde_json::json!({ "error": message }))
        .header("x-error-code", code)
        .header("x-error-message", message)
}

fn hub_route(req: &Recorded, repos: &BTreeMap<String, Repo>, cdn: &str) -> Reply {
    // /{org}/{name}/resolve/{revision}/{file...}
    let path = req.path().trim_start_matches('/');
    let parts: Vec<&str> = path.splitn(5, '/').collect();
    let [org, name, "resolve", revision, file] = parts.as_slice() else {
        return Reply::empty(404);
    };
    let repo_id = format!("{org}/{name}");
    let Some(repo) = repos.get(&repo_id) else {
        return hub_error(404, "RepoNotFound", "Repository not found");
    };
    if let Some(allowed) = &repo.gated_for {
        let sent = req.header("authorization").unwrap_or("");
        if sent != format!("Bearer {allowed}") {
            // The real Hub does not echo the token; this one does, to show it is scrubbed.
            return hub_error(
                if sent.is_empty() { 401 } else { 403 },
                "GatedRepo",
                &format!("Access to model {repo_id} is restricted ({sent}). You must have access to it and be authenticated to access it."),
            );
        }
    }
    if *revision != "main" && *revision != COMMIT {
        return hub_error(404, "RevisionNotFound", "Invalid rev id");
    }
    let Some(bytes) = repo.files.get(*file) else {
        return hub_error(404, "EntryNotFound", "Entry not found");
    };
    if is_lfs(file) {
        let sha = sha256(bytes);
        return Reply::empty(302)
            .header("location", &format!("{cdn}/blobs/{sha}?sig=presigned"))
            .header("x-repo-commit", COMMIT)
            .header("x-linked-etag", &format!("\"{sha}\""))
            .header("x-linked-size", &bytes.len().to_string())
            .header("etag", "\"0000000000000000000000000000000000000000\"");
    }
    Reply::bytes(200, "application/octet-stream", bytes)
        .header("x-repo-commit", COMMIT)
        .header("etag", &format!("\"{}\"", &sha256(bytes)[..40]))
}

fn cdn_route(req: &Recorded, blobs: &BTreeMap<String, Vec<u8>>, faults: &Mutex<Faults>) -> Reply {
    let Some(sha) = req.path().strip_prefix("/blobs/") else {
        return Reply::empty(404);
    };
    let Some(bytes) = blobs.get(sha) else {
        return Reply::empty(404);
    };
    let mut faults = faults.lock().unwrap();
    let mut content = bytes.clone();
    if faults.corrupt {
        content.iter_mut().for_each(|b| *b = b.wrapping_add(1));
    }
    let len = content.len();
    let from = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|_| !faults.ignore_range);
    let mut reply = match from {
        Some(from) if from >= len => return Reply::empty(416),
        Some(from) => Reply::bytes(206, "application/octet-stream", &content[from..])
            .header("content-range", &format!("bytes {from}-{}/{len}", len - 1)),
        None => Reply::bytes(200, "application/octet-stream", &content),
    };
    let start = from.unwrap_or(0);
    if faults.cut_always {
        reply = reply.cut_after((len / 2).saturating_sub(start));
    } else if faults.cut_next > 0 {
        faults.cut_next -= 1;
        reply = reply.cut_after((len - start) / 2);
    }
    reply
}

impl MockHub {
    fn start(repos: BTreeMap<String, Repo>) -> Self {
        let blobs: BTreeMap<String, Vec<u8>> = repos
            .values()
            .flat_map(|r| r.files.iter())
            .filter(|(name, _)| is_lfs(name))
            .map(|(_, bytes)| (sha256(bytes), bytes.clone()))
            .collect();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let cdn = {
            let faults = faults.clone();
            MockServer::start(move |req| cdn_route(req, &blobs, &faults))
        };
        let cdn_url = cdn.url();
        let hub = MockServer::start(move |req| hub_route(req, &repos, &cdn_url));
        MockHub { hub, cdn, faults }
    }

    fn requests(&self) -> (usize, usize) {
        (self.hub.requests().len(), self.cdn.requests().len())
    }

    /// `lora-train` with the Hub at this mock, the cache in `tmp`, and no Hub setting of the
    /// machine's leaking in.
    fn cmd(&self, tmp: &Path, token: Option<&str>) -> assert_cmd::Command {
        let mut cmd = lora_train();
        for var in [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HUGGINGFACE_HUB_CACHE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HF_ENDPOINT", self.hub.url())
            .env("HF_HUB_CACHE", tmp.join("cache"))
            .env("HF_HOME", tmp.join("hf-home"));
        if let Some(token) = token {
            cmd.env("HF_TOKEN", token);
        }
        cmd
    }
}

/// The tiny Llama fixture's files, as a repo on the Hub holds them.
fn tiny_files() -> BTreeMap<String, Vec<u8>> {
    let dir = common::fixtures().join("tiny-llama");
    [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .into_iter()
    .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
    .collect()
}

fn repo(files: BTreeMap<String, Vec<u8>>) -> Repo {
    Repo {
        files,
        gated_for: None,
    }
}

fn one_repo(id: &str, files: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Repo> {
    BTreeMap::from([(id.to_string(), repo(files))])
}

fn repo_dir(tmp: &Path, id: &str) -> PathBuf {
    tmp.join("cache")
        .join(format!("models--{}", id.replace('/', "--")))
}

fn snapshot_dir(tmp: &Path, id: &str) -> PathBuf {
    repo_dir(tmp, id).join("snapshots").join(COMMIT)
}

/// Runs `cmd`, expects it to fail, and gives its stderr.
fn fails(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded:\n{stderr}");
    stderr
}

fn score(cmd: &mut assert_cmd::Command, model: &str) -> serde_json::Value {
    cmd.args(["score", "--json", "--model", model, "--data"])
        .arg(common::fixtures().join("chats.jsonl"));
    common::cli::json(cmd)
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_first_run_downloads_and_the_second_works_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tiny_files();
    let mock = MockHub::start(one_repo("org/tiny", files.clone()));

    let out = mock
        .cmd(tmp.path(), Some(TOKEN))
        .args(["download", "org/tiny", "-vv"])
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let snap = snapshot_dir(tmp.path(), "org/tiny");
    assert_eq!(stdout.trim(), snap.to_str().unwrap());
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(snap.join(name)).unwrap(), bytes, "{name}");
    }
    let repo = repo_dir(tmp.path(), "org/tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    // The weights' blob is named by their SHA-256, and nothing half-written is left.
    assert!(repo
        .join("blobs")
        .join(sha256(&files["model.safetensors"]))
        .is_file());
    assert!(files_named(&repo.join("blobs"), ".incomplete").is_empty());
    // What the repo lacks is remembered, as huggingface_hub remembers it.
    assert!(repo
        .join(".no_exist")
        .join(COMMIT)
        .join("chat_template.jinja")
        .is_file());

    // The token went to the Hub as a bearer token, never to the CDN, and was never printed.
    let hub_requests = mock.hub.requests();
    assert!(hub_requests
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
    let cdn_requests = mock.cdn.requests();
    assert_eq!(cdn_requests.len(), 1, "{cdn_requests:#?}");
    assert!(cdn_requests[0].header("authorization").is_none());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(TOKEN) && !stdout.contains(TOKEN),
        "{stderr}"
    );

    // Online again: one HEAD finds the commit unchanged, nothing is downloaded.
    let before = mock.requests();
    succeeded(
        &mock
            .cmd(tmp.path(), Some(TOKEN))
            .args(["download", "org/tiny"])
            .output()
            .unwrap(),
    );
    assert_eq!(mock.requests(), (before.0 + 1, before.1));

    // Offline: the model loads from the cache with no request at all, and scores as the
    // fixture folder does.
    let before = mock.requests();
    let offline = score(
        mock.cmd(tmp.path(), Some(TOKEN)).env("HF_HUB_OFFLINE", "1"),
        "org/tiny",
    );
    assert_eq!(mock.requests(), before);
    let local = score(
        &mut lora_train(),
        common::fixtures().join("tiny-llama").to_str().unwrap(),
    );
    assert!(offline["mean_loss"].is_number(), "{offline}");
    assert_eq!(
        offline["mean_loss"], local["mean_loss"],
        "{offline} vs {local}"
    );
}

#[test]
fn sharded_weights_are_listed_from_the_index() {
    use candle_core::Device;
    let tmp = tempfile::tempdir().unwrap();
    let mut files = tiny_files();
    let weights = files.remove("model.safetensors").unwrap();
    let all = candle_core::safetensors::load_buffer(&weights, &Device::Cpu).unwrap();
    for file in crate::common::write_two_shards(&all, tmp.path()) {
        files.insert(file.clone(), std::fs::read(tmp.path().join(&file)).unwrap());
    }
    let mock = MockHub::start(one_repo("org/sharded", files.clone()));

    let stdout = succeeded(
        &mock
            .cmd(tmp.path(), None)
            .args(["download", &format!("org/sharded@{COMMIT}")])
            .output()
            .unwrap(),
    );
    let snap = snapshot_dir(tmp.path(), "org/sharded");
    assert_eq!(stdout.trim(), snap.to_str().unwrap());
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(snap.join(name)).unwrap(), bytes, "{name}");
    }
    // A commit revision writes no ref, and once cached needs no request even online.
    assert!(!repo_dir(tmp.path(), "org/sharded").join("refs").exists());
    let before = mock.requests();
    let sharded = score(
        &mut mock.cmd(tmp.path(), None),
        &format!("org/sharded@{COMMIT}"),
    );
    assert_eq!(mock.requests(), before);
    let local = score(
        &mut lora_train(),
        common::fixtures().join("tiny-llama").to_str().unwrap(),
    );
    assert!(sharded["mean_loss"].is_number(), "{sharded}");
    assert_eq!(sharded["mean_loss"], local["mean_loss"]);
}

#[test]
fn a_gated_model_asks_for_the_licence_and_the_token_is_never_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gated = repo(tiny_files());
    gated.gated_for = Some(TOKEN.to_string());
    let mock = MockHub::start(BTreeMap::from([("org/gated".to_string(), gated)]));
    let licence = format!(
        "accept the licence at {}/org/gated, then set HF_TOKEN",
        mock.hub.url()
    );

    let e = fails(mock.cmd(tmp.path(), None).args(["download", "org/gated"]));
    assert!(e.contains(&licence), "{e}");
    assert!(e.contains("gated model"), "{e}");
    let wrong = "hf_wrongTokenOfAnotherAccount42";
    let e = fails(
        mock.cmd(tmp.path(), Some(wrong))
            .args(["download", "org/gated", "-vv"]),
    );
    assert!(e.contains(&licence) && e.contains("HF_TOKEN is set"), "{e}");
    // The Hub's own message is shown, with the token it echoed taken out.
    assert!(!e.contains(wrong) && e.contains("Bearer [redacted]"), "{e}");
    assert!(mock
        .hub
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {wrong}"))));
    // Nothing of the refused repo is cached, so offline it is simply not there.
    assert!(!snapshot_dir(tmp.path(), "org/gated").exists());

    succeeded(
        &mock
            .cmd(tmp.path(), Some(TOKEN))
            .args(["download", "org/gated"])
            .output()
            .unwrap(),
    );
    assert!(snapshot_dir(tmp.path(), "org/gated")
        .join("model.safetensors")
        .is_file());
}

#[test]
fn a_missing_repo_revision_or_file_each_say_which() {
    let tmp = tempfile::tempdir().unwrap();
    let mut no_weights = tiny_files();
    let weights = no_weights.remove("model.safetensors").unwrap();
    no_weights.insert("pytorch_model.bin".into(), weights.clone());
    let mut lost_shard = tiny_files();
    lost_shard.remove("model.safetensors");
    lost_shard.insert(
        "model.safetensors.index.json".into(),
        br#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#.to_vec(),
    );
    lost_shard.insert("model-00001-of-00002.safetensors".into(), weights);
    let mut no_config = tiny_files();
    no_config.remove("config.json");
    let mock = MockHub::start(BTreeMap::from([
        ("org/tiny".to_string(), repo(tiny_files())),
        ("org/bin-only".to_string(), repo(no_weights)),
        ("org/lost-shard".to_string(), repo(lost_shard)),
        ("org/no-config".to_string(), repo(no_config)),
    ]));
    let download = |spec: &str| fails(mock.cmd(tmp.path(), None).args(["download", spec]));

    let e = download("org/nothing");
    assert!(e.contains("no Hub repo `org/nothing`"), "{e}");
    let e = fails(mock.cmd(tmp.path(), None).args([
        "generate",
        "--model",
        "models/foo",
        "--prompt",
        "hi",
    ]));
    assert!(
        e.contains("no such local file or folder `models/foo`, and no Hub repo `models/foo`"),
        "{e}"
    );
    let e = download("org/tiny@v9");
    assert!(e.contains("has no revision `v9`"), "{e}");
    let e = download("org/no-config");
    assert!(e.contains("has no config.json"), "{e}");
    let e = download("org/bin-only");
    assert!(
        e.contains("neither model.safetensors nor model.safetensors.index.json")
            && e.contains("not pytorch_model.bin"),
        "{e}"
    );
    let e = download("org/lost-shard");
    assert!(
        e.contains("has no file `model-00002-of-00002.safetensors`"),
        "{e}"
    );
    // None of them left a ref behind, so none counts as cached.
    for id in ["org/bin-only", "org/lost-shard", "org/no-config"] {
        assert!(!repo_dir(tmp.path(), id).join("refs/main").exists(), "{id}");
    }
    let e = fails(mock.cmd(tmp.path(), None).args(["download", "./local/dir"]));
    assert!(e.contains("not a Hub repo id"), "{e}");
}

#[test]
fn a_cut_download_is_resumed_and_never_used_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tiny_files();
    let weights = &files["model.safetensors"];
    let half = weights.len() / 2;
    let mock = MockHub::start(one_repo("org/tiny", files.clone()));
    let blobs = repo_dir(tmp.path(), "org/tiny").join("blobs");
    let blob = blobs.join(sha256(weights));
    let part = blobs.join(format!("{}.incomplete", sha256(weights)));

    // Cut once: the next attempt asks for the rest with a range and completes the file.
    mock.faults.lock().unwrap().cut_next = 1;
    succeeded(
        &mock
            .cmd(tmp.path(), None)
            .args(["download", "org/tiny"])
            .output()
            .unwrap(),
    );
    let gets = mock.cdn.requests();
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!(gets[0].header("range"), None);
    assert_eq!(gets[1].header("range"), Some(&*format!("bytes={half}-")));
    assert_eq!(&std::fs::read(&blob).unwrap(), weights);
    assert!(!part.exists());

    // Always cut: the download gives up with its own error, keeps the partial file apart, and
    // the model is not cached: an offline run refuses it rather than read half a file.
    let tmp = tempfile::tempdir().unwrap();
    let blobs = repo_dir(tmp.path(), "org/tiny").join("blobs");
    let (blob, part) = (
        blobs.join(blob.file_name().unwrap()),
        blobs.join(part.file_name().unwrap()),
    );
    mock.faults.lock().unwrap().cut_always = true;
    let e = fails(mock.cmd(tmp.path(), None).args(["download", "org/tiny"]));
    assert!(
        e.contains(&format!("interrupted at {half} of {} bytes", weights.len()))
            && e.contains("run the command again to resume"),
        "{e}"
    );
    assert_eq!(std::fs::read(&part).unwrap(), weights[..half]);
    assert!(!blob.exists());
    assert!(!snapshot_dir(tmp.path(), "org/tiny")
        .join("model.safetensors")
        .exists());
    assert!(!repo_dir(tmp.path(), "org/tiny").join("refs/main").exists());
    let e = fails(
        mock.cmd(tmp.path(), None)
            .env("HF_HUB_OFFLINE", "1")
            .args(["generate", "--model", "org/tiny", "--prompt", "hi"]),
    );
    assert!(
        e.contains("is not in the Hub cache") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );

    // Healed, but ignoring ranges: the resumed request gets the whole file, which replaces
    // the partial one instead of being appended to it.
    {
        let mut faults = mock.faults.lock().unwrap();
        faults.cut_always = false;
        faults.ignore_range = true;
    }
    let before = mock.cdn.requests().len();
    succeeded(
        &mock
            .cmd(tmp.path(), None)
            .args(["download", "org/tiny"])
            .output()
            .unwrap(),
    );
    let resumed = &mock.cdn.requests()[before];
    assert_eq!(resumed.header("range"), Some(&*format!("bytes={half}-")));
    assert_eq!(&std::fs::read(&blob).unwrap(), weights);
    assert!(!part.exists());
}

#[test]
fn a_corrupt_download_is_deleted_not_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tiny_files();
    let mock = MockHub::start(one_repo("org/tiny", files.clone()));
    mock.faults.lock().unwrap().corrupt = true;
    let e = fails(mock.cmd(tmp.path(), None).args(["download", "org/tiny"]));
    let sha = sha256(&files["model.safetensors"]);
    assert!(
        e.contains("SHA-256") && e.contains(&format!("announced {sha}")),
        "{e}"
    );
    let blobs = repo_dir(tmp.path(), "org/tiny").join("blobs");
    assert!(!blobs.join(&sha).exists());
    assert!(files_named(&blobs, ".incomplete").is_empty());
}
