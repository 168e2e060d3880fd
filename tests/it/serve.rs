//! `lora-train serve` over real HTTP on loopback: jobs created, run by the worker as child
//! processes, cancelled with a checkpoint, interrupted by a server restart and resumed to the
//! same adapter; every error status; the bearer token; path traversal; a load of concurrent
//! clients while a job writes metrics; and `docs/openapi.json` against the routes.

use crate::common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running `lora-train serve`, stopped (SIGTERM) when dropped.
pub(crate) struct Served {
    child: Child,
    pub base: String,
    token: Option<String>,
}

impl Served {
    /// Starts a server on a free port with its registry and jobs under `home`.
    pub(crate) fn start(home: &Path, extra: &[&str]) -> Served {
        Served::start_env(home, extra, &[])
    }

    /// [`Served::start`] with more environment variables (a provider's key) for the server and
    /// the jobs it runs.
    pub(crate) fn start_env(home: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("lora-train"))
            .args(["serve", "--port", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .env("LORA_TRAIN_HOME", home)
            .env("RUST_LOG", "warn")
            .current_dir(home)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("the server prints its address")
            .unwrap();
        let addr = first.rsplit("http://").next().unwrap().trim().to_string();
        // Keep reading its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let port = addr.rsplit(':').next().unwrap();
        let token = extra
            .iter()
            .position(|a| *a == "--token")
            .map(|i| extra[i + 1].to_string());
        Served {
            child,
            base: format!("http://127.0.0.1:{port}"),
            token,
        }
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> (u16, Value) {
        let (status, text) = self.call_text(method, path, body, self.token.as_deref());
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub(crate) fn call_text(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        token: Option<&str>,
    ) -> (u16, String) {
        http(&self.base, method, path, body, token)
    }

    pub(crate) fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub(crate) fn post_job(&self, toml: &str, query: &str) -> Value {
        let (status, v) = self.call(
            "POST",
            &format!("/api/jobs{query}"),
            Some(("application/toml", toml.as_bytes())),
        );
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Waits until job `id` satisfies `done`, returning it.
    pub(crate) fn wait_job(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let job = self.get(&format!("/api/jobs/{id}"));
            if done(&job) {
                return job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "job {id}: waited too long for {what}: {job}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server as `kill -9` would: no shutdown of its own.
    fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// One request to the server at `base`: its status and body.
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    token: Option<&str>,
) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let bytes = match body {
        Some((ct, b)) => {
            req = req.header("content-type", ct);
            b.to_vec()
        }
        None => Vec::new(),
    };
    let mut resp = match agent.run(req.body(bytes).unwrap()) {
        Ok(r) => r,
        // Nothing listening (yet): status 0.
        Err(e) => return (0, e.to_string()),
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

/// A job of the tiny model on the fixture chats, writing to `out`.
pub fn job_toml(out: &Path, steps: usize, save_every: usize) -> String {
    format!(
        "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 4\nalpha = 8\n[data]\n\
         train = \"{}\"\nmax_seq_len = 128\n[train]\nmax_steps = {steps}\nmicro_batch_size = 2\n\
         lr = 1e-3\nsave_every = {save_every}\n[output]\ndir = \"{}\"\n",
        common::fixtures().join("tiny-llama").display(),
        common::fixtures().join("chats.jsonl").display(),
        out.display()
    )
}

pub fn id_of(job: &Value) -> i64 {
    job["id"].as_i64().unwrap()
}

#[test]
fn a_posted_job_runs_to_completion_with_metrics_events_and_a_model_version() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let out = home.path().join("runs/pirate");
    let job = server.post_job(&job_toml(&out, 6, 3), "?name=pirate");
    assert_eq!(job["status"], "queued");
    let id = id_of(&job);
    // The event stream follows the job to its end.
    let (status, events) = server.call_text("GET", &format!("/api/jobs/{id}/events"), None, None);
    assert_eq!(status, 200);
    assert!(events.contains("event: progress"), "{events}");
    assert!(events.contains("event: metrics"), "{events}");
    assert!(events.contains("event: end"), "{events}");
    let done = server.wait_job(id, "completed", |j| j["status"] == "completed");
    assert_eq!(done["current_step"], 6);
    assert_eq!(done["progress"], 1.0);
    assert!(done["latest_loss"].as_f64().unwrap() > 0.0);
    let metrics = server.get(&format!("/api/jobs/{id}/metrics"));
    let steps: Vec<i64> = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("loss").is_some())
        .map(|m| m["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    let files = server.get(&format!("/api/jobs/{id}/artifacts"));
    let names: Vec<&str> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"adapter/adapter_model.safetensors"),
        "{names:?}"
    );
    assert!(names.contains(&"metrics.jsonl"), "{names:?}");
    let (status, config) = server.call_text(
        "GET",
        &format!("/api/jobs/{id}/artifacts/adapter/adapter_config.json"),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert!(
        config.contains("\"r\": 4") || config.contains("\"r\":4"),
        "{config}"
    );
    // The finished run is version 1 of the model named after the job.
    let versions = server.get("/api/models/pirate/versions");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["job_id"], id);
    assert_eq!(versions[0]["adapter_sha256"].as_str().unwrap().len(), 64);
    let stats = server.get("/api/stats");
    assert_eq!(stats["jobs_by_status"]["completed"], 1);
    assert_eq!(stats["models"], 1);
    let log = server.call_text("GET", &format!("/api/jobs/{id}/log"), None, None);
    assert!(log.1.contains("training summary"), "{}", log.1);
}

#[test]
fn the_json_job_shape_maps_onto_job_keys_and_held_jobs_wait_for_start() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let body = json!({
        "name": "seeded",
        "base_model": common::fixtures().join("tiny-llama"),
        "dataset_path": common::fixtures().join("chats.jsonl"),
        "training_config": {
            "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "num_epochs": 0.25,
            "batch_size": 2, "learning_rate": 0.001, "max_seq_length": 128,
            "quantization": "none", "gradient_checkpointing": true
        }
    })
    .to_string();
    let (status, job) = server.call(
        "POST",
        "/api/jobs?start=false",
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(status, 201, "{job}");
    let id = id_of(&job);
    assert_eq!(job["name"], "seeded");
    assert_eq!(job["autostart"], false);
    let written = std::fs::read_to_string(job["config_path"].as_str().unwrap()).unwrap();
    for line in [
        "r = 4",
        "micro_batch_size = 2",
        "max_seq_len = 128",
        "gradient_checkpointing = true",
        "epochs = 0.25",
    ] {
        assert!(written.contains(line), "{line} in {written}");
    }
    // Held: the worker leaves it queued.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(server.get(&format!("/api/jobs/{id}"))["status"], "queued");
    let (status, started) = server.call("POST", &format!("/api/jobs/{id}/start"), None);
    assert_eq!(status, 200, "{started}");
    let done = server.wait_job(id, "completed", |j| {
        j["status"].as_str().unwrap() != "queued"
            && j["status"].as_str().unwrap() != "preparing"
            && j["status"].as_str().unwrap() != "training"
    });
    assert_eq!(done["status"], "completed", "{done}");
    let out = PathBuf::from(done["output_dir"].as_str().unwrap());
    assert!(out.starts_with(home.path().join("jobs").join(id.to_string())));
}

#[test]
fn cancel_stops_a_running_job_with_its_checkpoint() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let out = home.path().join("runs/long");
    let id = id_of(&server.post_job(&job_toml(&out, 100_000, 1000), ""));
    server.wait_job(id, "3 steps", |j| j["current_step"].as_i64() >= Some(3));
    let (status, job) = server.call("DELETE", &format!("/api/jobs/{id}"), None);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "cancelling");
    let done = server.wait_job(id, "cancelled", |j| j["status"] == "cancelled");
    assert!(done["error"].is_null(), "{done}");
    let ckpts = lora_train::train::checkpoint::list_checkpoints(&out).unwrap();
    assert!(!ckpts.is_empty(), "the stop saved a checkpoint");
    // A cancelled job cannot be cancelled again; a completed one cannot be started.
    let (status, e) = server.call("POST", &format!("/api/jobs/{id}/cancel"), None);
    assert_eq!(status, 409, "{e}");
    assert_eq!(e["error"]["code"], "conflict");
}

#[test]
fn a_server_restart_marks_the_job_interrupted_and_resuming_gives_the_same_adapter() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("runs/restart");
    let steps = 40;
    let toml = job_toml(&out, steps, 5);
    let server = Served::start(home.path(), &[]);
    let id = id_of(&server.post_job(&toml, ""));
    server.wait_job(id, "6 steps", |j| j["current_step"].as_i64() >= Some(6));
    // The server dies without a word; its child is told to stop by the parent-death signal.
    server.kill_hard();
    let server = Served::start(home.path(), &[]);
    let job = server.wait_job(id, "failed", |j| j["status"] == "failed");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("interrupted"), "{error}");
    let (status, job) = server.call("POST", &format!("/api/jobs/{id}/start"), None);
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["resume"], true);
    let done = server.wait_job(id, "completed", |j| j["status"] == "completed");
    assert_eq!(done["current_step"], steps as i64);

    // The same job without a restart.
    let whole = home.path().join("runs/whole");
    let whole_job = home.path().join("whole.toml");
    std::fs::write(&whole_job, job_toml(&whole, steps, 5)).unwrap();
    let status = Command::new(assert_cmd::cargo::cargo_bin("lora-train"))
        .args(["--no-registry", "--no-report", "--config"])
        .arg(&whole_job)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let adapter =
        |out: &Path| std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        adapter(&out) == adapter(&whole),
        "the resumed adapter differs"
    );
    // One row, updated by the resumed run: no second job and one model version.
    assert_eq!(server.get("/api/jobs").as_array().unwrap().len(), 1);
    assert_eq!(
        server
            .get("/api/models/restart/versions")
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn errors_have_their_status_and_json_shape() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let code = |(status, v): (u16, Value)| {
        (
            status,
            v["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        code(server.call("GET", "/api/jobs/42", None)),
        (404, "not_found".into())
    );
    assert_eq!(
        code(server.call("GET", "/api/jobs/abc", None)),
        (404, "not_found".into())
    );
    assert_eq!(
        code(server.call("GET", "/api/nothing", None)),
        (404, "not_found".into())
    );
    assert_eq!(
        code(server.call("GET", "/api/jobs?status=running", None)).0,
        400
    );
    let toml = |body: &str| {
        server.call(
            "POST",
            "/api/jobs",
            Some(("application/toml", body.as_bytes())),
        )
    };
    let (status, e) = toml("[model\nsource = 1");
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_job");
    // A value the CLI refuses, with the CLI's message naming the key.
    let out = home.path().join("runs/bad");
    let bad = job_toml(&out, 5, 5).replace("r = 4", "r = 0");
    let (status, e) = toml(&bad);
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("lora.r"),
        "{e}"
    );
    let missing = job_toml(&out, 5, 5).replace("chats.jsonl", "no-such.jsonl");
    let (status, e) = toml(&missing);
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{e}"
    );
    let (status, e) = server.call(
        "POST",
        "/api/jobs",
        Some(("application/json", b"{\"name\": ")),
    );
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, e) = server.call(
        "POST",
        "/api/jobs",
        Some((
            "application/json",
            br#"{"name":"x","base_model":"m","dataset_path":"d","epochs":3}"#,
        )),
    );
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("epochs"),
        "{e}"
    );
    assert_eq!(
        code(server.call("POST", "/api/jobs", Some(("image/png", b"x")))).0,
        415
    );
    let big = vec![b'#'; lora_train::serve::BODY_LIMIT + 10];
    assert_eq!(
        code(server.call("POST", "/api/jobs", Some(("application/toml", &big)))),
        (413, "body_too_large".into())
    );
    // State transitions: a completed job can be neither cancelled nor started.
    let id = id_of(&server.post_job(&job_toml(&home.path().join("runs/ok"), 2, 2), ""));
    server.wait_job(id, "completed", |j| j["status"] == "completed");
    assert_eq!(
        code(server.call("POST", &format!("/api/jobs/{id}/cancel"), None)).0,
        409
    );
    assert_eq!(
        code(server.call("POST", &format!("/api/jobs/{id}/start"), None)).0,
        409
    );
    // Paths outside the output folder are refused, however they are spelled.
    for path in [
        "..%2F..%2Fregistry.db",
        "%2E%2E/job.toml",
        "%2Fetc%2Fpasswd",
        "adapter%2F..%2F..%2F..%2Fregistry.db",
    ] {
        let (status, e) = server.call("GET", &format!("/api/jobs/{id}/artifacts/{path}"), None);
        assert!(status == 400 || status == 404, "{path}: {status} {e}");
        assert!(!e.to_string().contains("SQLite"), "{path}: {e}");
    }
    assert_eq!(
        code(server.call("GET", &format!("/api/jobs/{id}/artifacts/nope.txt"), None)).0,
        404
    );
    // Aliases: unknown versions and bad bodies.
    assert_eq!(
        code(server.call(
            "PUT",
            "/api/models/ok/aliases/prod",
            Some(("application/json", br#"{"version": 9}"#))
        ))
        .0,
        404
    );
    assert_eq!(
        code(server.call(
            "PUT",
            "/api/models/ok/aliases/prod",
            Some(("application/json", b"{}"))
        ))
        .0,
        400
    );
    let (status, e) = server.call(
        "PUT",
        "/api/models/ok/aliases/prod?require_win_over=staging",
        Some(("application/json", br#"{"version": 1}"#)),
    );
    assert_eq!(status, 404, "no staging alias yet: {e}");
    let (status, _) = server.call(
        "PUT",
        "/api/models/ok/aliases/staging",
        Some(("application/json", br#"{"version": 1}"#)),
    );
    assert_eq!(status, 200);
    let (status, e) = server.call(
        "PUT",
        "/api/models/ok/aliases/prod?require_win_over=staging",
        Some(("application/json", br#"{"version": 1}"#)),
    );
    assert_eq!(status, 409, "{e}");
}

#[test]
fn off_loopback_the_token_is_required_on_every_route() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(assert_cmd::cargo::cargo_bin("lora-train"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .env("LORA_TRAIN_HOME", home.path())
        .env_remove("LORA_TRAIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--token"), "{stderr}");
    let server = Served::start(home.path(), &["--host", "0.0.0.0", "--token", "s3cret"]);
    for path in ["/api/jobs", "/api/stats", "/api/jobs/1", "/nothing"] {
        let (status, body) = server.call_text("GET", path, None, None);
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _) = server.call_text("GET", path, None, Some("wrong"));
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = server.call_text("GET", "/api/stats", None, Some("s3cret"));
    assert_eq!(status, 200);
}

#[test]
fn many_clients_at_once_while_a_job_writes_metrics_lose_nothing() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let out = home.path().join("runs/load");
    let id = id_of(&server.post_job(&job_toml(&out, 60, 1000), ""));
    server.wait_job(id, "training", |j| j["status"] == "training");
    let (clients, per_client) = (50, 40);
    let base = server.base.clone();
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let base = base.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for i in 0..per_client {
                    let path = match (c + i) % 6 {
                        0 => format!("/api/jobs/{id}"),
                        1 => format!("/api/jobs/{id}/metrics"),
                        2 => "/api/jobs".to_string(),
                        3 => "/api/stats".to_string(),
                        4 => "/api/models".to_string(),
                        _ => format!("/api/jobs/{id}/artifacts"),
                    };
                    let t = Instant::now();
                    let (status, body) = http(&base, "GET", &path, None, None);
                    out.push((status, t.elapsed(), body.contains("database is locked")));
                }
                out
            })
        })
        .collect();
    let mut results: Vec<(u16, Duration, bool)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = started.elapsed();
    assert_eq!(results.len(), clients * per_client);
    assert!(results.iter().all(|(s, _, locked)| *s == 200 && !locked));
    results.sort_by_key(|r| r.1);
    let p = |q: f64| results[((results.len() - 1) as f64 * q) as usize].1;
    eprintln!(
        "load: {} requests from {clients} clients in {wall:?}; p50 {:?}, p99 {:?}",
        results.len(),
        p(0.5),
        p(0.99)
    );
    server.wait_job(id, "completed", |j| j["status"] == "completed");
    // Every metric of every line of metrics.jsonl is in the registry.
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let expected: usize = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v.as_object()
                .unwrap()
                .iter()
                .filter(|(k, v)| *k != "step" && v.is_number())
                .count()
        })
        .sum();
    let got: usize = server.get(&format!("/api/jobs/{id}/metrics"))["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_object().unwrap().len() - 1)
        .sum();
    assert_eq!(got, expected);
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = lora_train::serve::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn a_cli_run_records_itself_and_resume_continues_its_row() {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("reg.db");
    let out = home.path().join("runs/cli");
    let job = home.path().join("job.toml");
    std::fs::write(&job, job_toml(&out, 4, 2)).unwrap();
    let run = |args: &[&str]| {
        common::cli::lora_train_at(home.path())
            .arg("--db")
            .arg(&db)
            .args(["--no-report", "--config"])
            .arg(&job)
            .args(args)
            .output()
            .unwrap()
    };
    let stopped = run(&["--stop-after", "2"]);
    assert!(stopped.status.success());
    let reg = lora_train::registry::Registry::open(&db).unwrap();
    let jobs = reg.jobs(&Default::default()).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, lora_train::registry::JobStatus::Cancelled);
    assert_eq!(jobs[0].name, "cli");
    common::cli::succeeded(&run(&["--resume"]));
    let jobs = reg.jobs(&Default::default()).unwrap();
    assert_eq!(jobs.len(), 1, "the resumed run continues its row");
    assert_eq!(jobs[0].status, lora_train::registry::JobStatus::Completed);
    assert_eq!(reg.job_metrics(jobs[0].id, None).unwrap().len(), 4);
    assert_eq!(reg.model_versions("cli").unwrap().len(), 1);
    // --no-registry records nothing.
    let other = home.path().join("other.db");
    let out2 = home.path().join("runs/none");
    std::fs::write(&job, job_toml(&out2, 1, 1)).unwrap();
    let quiet = common::cli::lora_train_at(home.path())
        .args(["--no-registry", "--no-report", "--config"])
        .arg(&job)
        .env("LORA_TRAIN_HOME", home.path().join("nohome"))
        .output()
        .unwrap();
    common::cli::succeeded(&quiet);
    assert!(!other.exists() && !home.path().join("nohome/registry.db").exists());
}
