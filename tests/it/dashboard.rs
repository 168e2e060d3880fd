//! The dashboard: every page renders from the registry over real HTTP, the new-job form puts
//! its errors beside the fields, and (with Chromium installed: `scripts/browser-test.sh`) a
//! real headless browser creates a job through the form, watches its progress bar move and
//! its loss chart draw, and saves a screenshot of each page.

use crate::common;
use crate::serve::{http, id_of, job_toml, Served};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Form bodies are `application/x-www-form-urlencoded`.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn pages_render_from_the_registry_and_the_form_places_its_errors() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let out = home.path().join("runs/pages");
    let id = id_of(&server.post_job(&job_toml(&out, 4, 2), "?name=pages"));
    server.wait_job(id, "completed", |j| j["status"] == "completed");
    let page = |path: &str| {
        let (status, html) = http(&server.base, "GET", path, None, None);
        assert_eq!(status, 200, "{path}: {html}");
        html
    };
    let overview = page("/");
    assert!(
        overview.contains("deployed models") && overview.contains("#1"),
        "{overview}"
    );
    let jobs = page("/jobs");
    assert!(
        jobs.contains("badge completed") && jobs.contains("pages"),
        "{jobs}"
    );
    // The live region alone, for the refresh.
    let partial = page("/jobs?partial=1");
    assert!(
        partial.trim_start().starts_with("<section id=\"jobs\""),
        "{partial}"
    );
    let job = page(&format!("/jobs/{id}"));
    assert!(
        job.contains("<svg") && job.contains("train loss"),
        "the loss chart: {job}"
    );
    assert!(
        job.contains("adapter_model.safetensors"),
        "artifacts: {job}"
    );
    assert!(job.contains("data-done"), "a finished job stops refreshing");
    let models = page("/models");
    assert!(
        models.contains("v1") && models.contains(&format!("/jobs/{id}")),
        "{models}"
    );
    assert!(page("/compare").contains("<select name=\"a\""));
    let compare = page("/compare?a=pages%401&b=pages%401");
    assert!(compare.contains("no-comparison"), "{compare}");
    assert!(page("/deployments").contains("Nothing deployed yet"));
    assert!(page("/assets/style.css").contains(".badge"));
    assert_eq!(
        http(&server.base, "GET", "/assets/nope.js", None, None).0,
        404
    );
    assert_eq!(http(&server.base, "GET", "/jobs/999", None, None).0, 404);

    let post = |pairs: &[(&str, &str)]| {
        let body = form(pairs);
        http(
            &server.base,
            "POST",
            "/jobs/new",
            Some(("application/x-www-form-urlencoded", body.as_bytes())),
            None,
        )
    };
    let model = common::fixtures().join("tiny-llama");
    let chats = common::fixtures().join("chats.jsonl");
    let (model, chats) = (model.to_str().unwrap(), chats.to_str().unwrap());
    // A field that is not a number is refused before anything is created.
    let (status, html) = post(&[
        ("name", "f"),
        ("base_model", model),
        ("dataset_path", chats),
        ("lora_r", "four"),
    ]);
    assert_eq!(status, 400);
    assert!(
        html.contains("field bad") && html.contains("`four` is not a whole number"),
        "{html}"
    );
    // The job checks' own message lands beside its field.
    let (status, html) = post(&[
        ("name", "f"),
        ("base_model", model),
        ("dataset_path", "no-such.jsonl"),
        ("lora_r", "4"),
    ]);
    assert_eq!(status, 400);
    assert!(html.contains("does not exist"), "{html}");
    assert_eq!(server.get("/api/jobs").as_array().unwrap().len(), 1);
    // A good form creates the job; the reply sends the browser to its page.
    let (status, _) = post(&[
        ("name", "formed"),
        ("base_model", model),
        ("dataset_path", chats),
        ("lora_r", "4"),
        ("lora_alpha", "8"),
        ("num_epochs", "0.5"),
        ("batch_size", "2"),
        ("max_seq_length", "128"),
    ]);
    // ureq follows the 303 to the job page.
    assert_eq!(status, 200);
    let jobs = server.get("/api/jobs?name=formed");
    assert_eq!(jobs.as_array().unwrap().len(), 1);
}

/// A WebDriver session on a headless Chromium (Debian's packages), spoken over plain HTTP.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/install-chromium.sh)");
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while http(&base, "GET", "/status", None, None).0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().expect("a session").to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let body = text.as_deref().map(|t| ("application/json", t.as_bytes()));
        let (status, reply) = http(&self.base, method, path, body, None);
        let v: Value = serde_json::from_str(&reply).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path}: {reply}");
        v["value"].clone()
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn go(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        match v[ELEMENT].as_str() {
            Some(id) => id.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/clear")),
            Some(json!({})),
        );
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/value")),
            Some(json!({"text": text})),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &self.s(&format!("/element/{e}/click")),
            Some(json!({})),
        );
    }

    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    fn screenshot(&self, path: &Path) {
        let v = self.call("GET", &self.s("/screenshot"), None);
        std::fs::write(path, base64_decode(v.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                &self.base,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (value(c) as u32) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Where screenshots go: `$LORA_TRAIN_SCREENSHOTS`, else a folder of the test build.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("LORA_TRAIN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "needs Chromium and chromedriver: scripts/browser-test.sh runs it"]
fn a_browser_creates_a_job_and_watches_it_train() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let browser = Browser::start();
    let shots = screenshot_dir();
    browser.go(&format!("{}/jobs/new", server.base));
    let model = common::fixtures().join("tiny-llama");
    let chats = common::fixtures().join("chats.jsonl");
    for (field, value) in [
        ("#name", "pirate"),
        ("#base_model", model.to_str().unwrap()),
        ("#dataset_path", chats.to_str().unwrap()),
        ("#lora_r", "4"),
        ("#lora_alpha", "8"),
        ("#num_epochs", "120"),
        ("#batch_size", "2"),
        ("#learning_rate", "0.001"),
        ("#max_seq_length", "128"),
    ] {
        browser.type_into(field, value);
    }
    browser.screenshot(&shots.join("dashboard-new-job.png"));
    browser.click("#create");
    // The job's page: its progress bar moves while the page refreshes itself.
    let start = Instant::now();
    let progress = |b: &Browser| {
        b.eval("var p = document.querySelector('#progress'); return p ? Number(p.dataset.progress) : -1;")
            .as_f64()
            .unwrap_or(-1.0)
    };
    let mut seen = Vec::new();
    loop {
        let p = progress(&browser);
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        if seen.iter().any(|&p| p > 0.0 && p < 1.0) && seen.len() >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the bar never moved: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.screenshot(&shots.join("dashboard-job-running.png"));
    // Then it completes and the loss chart is drawn.
    loop {
        let status = browser.eval("return document.querySelector('#status').textContent;");
        let chart = browser.eval("return document.querySelectorAll('#loss-chart svg polyline, #loss-chart svg path').length;");
        if status == "completed" && chart.as_u64() > Some(0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "status {status}, chart {chart}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    browser.screenshot(&shots.join("dashboard-job.png"));
    for (path, name) in [
        ("/", "overview"),
        ("/jobs", "jobs"),
        ("/models", "models"),
        ("/compare", "compare"),
        ("/deployments", "deployments"),
    ] {
        browser.go(&format!("{}{path}", server.base));
        browser.screenshot(&shots.join(format!("dashboard-{name}.png")));
    }
    let models = server.get("/api/models");
    assert_eq!(models[0]["name"], "pirate");
    eprintln!("screenshots: {}", shots.display());
}
