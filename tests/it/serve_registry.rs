//! What the server and the CLI record beyond jobs, over real HTTP on loopback: evaluations with
//! their comparisons (from `lora-train eval` and posted as eval jobs), the promotion gate that
//! reads them, deployments to a mock vLLM that counts its load and unload calls and refuses on
//! demand, rollbacks, and dataset exports.

use crate::common;
use crate::harness_eval::{candidate_reply, write_inputs, KEY};
use crate::harness_judge::judge_reply;
use crate::providers_support::apis::{self, FakeApi, Outcome, TOGETHER_JOB, TOGETHER_OUTPUT};
use crate::providers_support::{MockServer, Reply};
use crate::serve::Served;

use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use lora_train::registry::{NewComparison, NewEvaluation, NewModelVersion, Registry};
use serde_json::{json, Value};

fn version(reg: &Registry, name: &str, adapter: &Path) -> i64 {
    reg.register_model(&NewModelVersion {
        name: name.into(),
        base_model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
        adapter_path: Some(adapter.to_string_lossy().into_owned()),
        ..Default::default()
    })
    .unwrap()
    .version
}

fn comparison(reg: &Registry, a: &str, b: &str, ci: [f64; 2]) {
    reg.record_evaluation(&NewEvaluation {
        name: "gate".into(),
        comparisons: vec![NewComparison {
            candidate_a: "adapter".into(),
            candidate_b: "base".into(),
            model_a: Some(a.into()),
            model_b: Some(b.into()),
            wins: 7,
            ties: 1,
            losses: 2,
            win_rate: (ci[0] + ci[1]) / 2.0,
            ci: Some(ci),
        }],
        ..Default::default()
    })
    .unwrap();
}

fn post_json(server: &Served, path: &str, body: &Value) -> (u16, Value) {
    server.call(
        "POST",
        path,
        Some(("application/json", body.to_string().as_bytes())),
    )
}

#[test]
fn an_eval_run_records_its_report_and_comparisons() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = MockServer::start(candidate_reply);
    let judge = MockServer::start(judge_reply);
    let file = write_inputs(tmp.path(), &cand, &judge, "");
    let db = tmp.path().join("reg.db");
    let out = common::cli::lora_train_at(tmp.path())
        .args(["eval", "--config"])
        .arg(&file)
        // Global flags follow the subcommand (clap refuses them before it).
        .arg("--db")
        .arg(&db)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    common::cli::succeeded(&out);
    let reg = Registry::open(&db).unwrap();
    let rows = reg.comparisons(None).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let c = &rows[0];
    let report = common::read_json(&tmp.path().join("out/report.json"));
    let pair = &report["pairwise"][0];
    assert_eq!(c.candidate_a, pair["a"].as_str().unwrap());
    assert_eq!(c.wins, pair["wins_a"].as_i64().unwrap());
    assert_eq!(c.losses, pair["wins_b"].as_i64().unwrap());
    assert_eq!(c.ties, pair["ties"].as_i64().unwrap());
    assert_eq!(c.ci_low, pair["ci95"][0].as_f64());
    // Neither candidate is a registered adapter: no version is named.
    assert!(c.model_a.is_none() && c.model_b.is_none());
    let e = reg.evaluation(c.evaluation_id).unwrap();
    assert_eq!(e.name, "out");
    assert_eq!(e.report["prompts"], 6);
    assert!(e.judge.unwrap().contains("judge-model"));
    assert_eq!(e.candidates.as_array().unwrap().len(), 2);
}

#[test]
fn the_promotion_gate_reads_the_recorded_ci_lower_bound() {
    let home = tempfile::tempdir().unwrap();
    let server = Served::start(home.path(), &[]);
    let reg = Registry::open(&home.path().join("registry.db")).unwrap();
    version(&reg, "pirate", &home.path().join("a1"));
    version(&reg, "pirate", &home.path().join("a2"));
    let put = |query: &str| {
        server.call(
            "PUT",
            &format!("/api/models/pirate/aliases/production{query}"),
            Some(("application/json", br#"{"version": 2}"#)),
        )
    };
    let (status, _) = server.call(
        "PUT",
        "/api/models/pirate/aliases/production",
        Some(("application/json", br#"{"version": 1}"#)),
    );
    assert_eq!(status, 200);
    let (status, v) = put("?require_win_over=production");
    assert_eq!(status, 409, "no evaluation yet: {v}");
    comparison(&reg, "pirate@2", "pirate@1", [0.45, 0.8]);
    let (status, v) = put("?require_win_over=production");
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("0.450"));
    // Recorded the other way round: pirate@1 loses clearly, so pirate@2's lower bound is 0.6.
    comparison(&reg, "pirate@1", "pirate@2", [0.1, 0.4]);
    let (status, v) = put("?require_win_over=production");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["previous"], 1);
}

#[test]
fn a_posted_eval_runs_as_a_job_and_links_its_evaluation() {
    let home = tempfile::tempdir().unwrap();
    let cand = MockServer::start(candidate_reply);
    let judge = MockServer::start(judge_reply);
    let file = write_inputs(home.path(), &cand, &judge, "");
    let text = std::fs::read_to_string(&file).unwrap();
    let server = Served::start_env(home.path(), &[], &[("OPENAI_API_KEY", KEY)]);
    let post = |body: &str| {
        server.call(
            "POST",
            "/api/evaluations",
            Some(("application/toml", body.as_bytes())),
        )
    };
    let (status, v) = post("[data]\npath = \"prompts.jsonl\"\n[output]\ndir = \"x\"\n");
    assert_eq!(status, 400, "no candidate: {v}");
    let (status, v) = post(&text.replace("prompts.jsonl", "none.jsonl"));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("none.jsonl"));
    let (status, job) = post(&text);
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["kind"], "eval");
    let id = job["id"].as_i64().unwrap();
    let done = server.wait_job(id, "its end", |j| {
        j["status"] == "completed" || j["status"] == "failed"
    });
    assert_eq!(done["status"], "completed", "{done}");
    let rows = server.get("/api/comparisons");
    let eval_id = rows[0]["evaluation_id"].as_i64().unwrap();
    let e = server.get(&format!("/api/evaluations/{eval_id}"));
    assert_eq!(e["job_id"], id);
    assert_eq!(e["report"]["prompts"], 6);
    assert!(home.path().join("out/report.json").is_file());
}

/// A mock vLLM: answers 200 unless `refuse` holds a status, which it answers with vLLM's
/// error shape.
fn vllm(refuse: Arc<AtomicU16>) -> MockServer {
    MockServer::start(move |_| match refuse.load(Ordering::SeqCst) {
        0 => Reply::bytes(200, "text/plain", b"Success"),
        code => Reply::json(
            code,
            json!({"object": "error", "message": "lora adapter not found on disk", "code": code}),
        ),
    })
}

#[test]
fn deploys_replace_each_other_and_a_rollback_reloads_the_previous_version() {
    let home = tempfile::tempdir().unwrap();
    let refuse = Arc::new(AtomicU16::new(0));
    let target = vllm(refuse.clone());
    let server = Served::start(home.path(), &[]);
    let reg = Registry::open(&home.path().join("registry.db")).unwrap();
    let (a1, a2) = (home.path().join("a1"), home.path().join("a2"));
    version(&reg, "pirate", &a1);
    version(&reg, "pirate", &a2);
    let deploy = |v: i64| {
        post_json(
            &server,
            &format!("/api/models/pirate/versions/{v}/deploy"),
            &json!({"target": target.url(), "notes": "test"}),
        )
    };
    let (status, d1) = deploy(1);
    assert_eq!(status, 201, "{d1}");
    assert_eq!(
        (d1["status"].as_str(), d1["lora_name"].as_str()),
        (Some("active"), Some("pirate"))
    );
    let (status, d2) = deploy(2);
    assert_eq!(status, 201, "{d2}");
    let loads = || target.count("POST", "/v1/load_lora_adapter");
    let unloads = || target.count("POST", "/v1/unload_lora_adapter");
    assert_eq!(
        (loads(), unloads()),
        (2, 1),
        "v2 replaces v1 under one name"
    );
    let d2_id = d2["id"].as_i64().unwrap();
    let (status, back) = post_json(
        &server,
        &format!("/api/deployments/{d2_id}/rollback"),
        &json!({}),
    );
    assert_eq!(status, 201, "{back}");
    assert_eq!(
        (back["action"].as_str(), back["version"].as_i64()),
        (Some("rollback"), Some(1))
    );
    assert_eq!((loads(), unloads()), (3, 2));
    let calls = target.requests();
    let last_unload = calls
        .iter()
        .rev()
        .find(|r| r.path() == "/v1/unload_lora_adapter")
        .unwrap();
    assert_eq!(last_unload.json(), json!({"lora_name": "pirate"}));
    let last_load = calls.last().unwrap();
    assert_eq!(last_load.path(), "/v1/load_lora_adapter");
    assert_eq!(last_load.json()["lora_path"], a1.to_string_lossy().as_ref());
    let rows = server.get("/api/deployments");
    let status_of = |id: i64| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of(d2_id), "rolled_back");
    // Rolling back what is no longer served is a conflict; an unknown id is not found.
    let (status, _) = post_json(
        &server,
        &format!("/api/deployments/{d2_id}/rollback"),
        &json!({}),
    );
    assert_eq!(status, 409);
    let (status, _) = post_json(&server, "/api/deployments/99/rollback", &json!({}));
    assert_eq!(status, 404);

    // The target refuses: 502 with its message, the attempt recorded as failed.
    refuse.store(400, Ordering::SeqCst);
    let (status, v) = post_json(
        &server,
        "/api/models/pirate/versions/2/deploy",
        &json!({"target": target.url(), "lora_name": "other"}),
    );
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "deploy_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found on disk"),
        "{v}"
    );
    let newest = &server.get("/api/deployments")[0];
    assert_eq!(
        (newest["status"].as_str(), newest["lora_name"].as_str()),
        (Some("failed"), Some("other"))
    );
    assert!(newest["error"].as_str().unwrap().contains("HTTP 400"));
    let (status, _) = post_json(
        &server,
        "/api/models/pirate/versions/7/deploy",
        &json!({"target": target.url()}),
    );
    assert_eq!(status, 404);
    let (status, _) = post_json(
        &server,
        "/api/models/pirate/versions/1/deploy",
        &json!({"target": "not a url"}),
    );
    assert_eq!(status, 400);
}

#[test]
fn the_cli_deploys_rolls_back_and_prints_the_vllm_command() {
    let home = tempfile::tempdir().unwrap();
    let refuse = Arc::new(AtomicU16::new(0));
    let target = vllm(refuse.clone());
    let db = home.path().join("reg.db");
    let reg = Registry::open(&db).unwrap();
    let a1 = home.path().join("a1");
    version(&reg, "pirate", &a1);
    version(&reg, "pirate", &home.path().join("a2"));
    reg.set_alias("pirate", "production", 1).unwrap();
    let run = |args: &[&str]| {
        common::cli::lora_train_at(home.path())
            .arg("deploy")
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap()
    };
    let url = target.url();
    let out = common::cli::succeeded(&run(&["pirate:production", "--target", &url]));
    assert!(out.contains("deployed pirate@1"), "{out}");
    common::cli::succeeded(&run(&["pirate", "--target", &url, "--lora-name", "pirate"]));
    let id = reg.deployments().unwrap()[0].id;
    let out = common::cli::succeeded(&run(&["rollback", &id.to_string()]));
    assert!(out.contains("pirate@1"), "{out}");
    assert_eq!(target.count("POST", "/v1/load_lora_adapter"), 3);
    assert_eq!(target.count("POST", "/v1/unload_lora_adapter"), 2);
    let out = common::cli::succeeded(&run(&["pirate@1", "--print-command"]));
    assert_eq!(
        out.trim(),
        format!(
            "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --lora-modules pirate={}",
            a1.display()
        )
    );
    refuse.store(500, Ordering::SeqCst);
    let failed = run(&["pirate@2", "--target", &url]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("not found on disk"), "{stderr}");
    assert_eq!(reg.deployments().unwrap()[0].status, "failed");
}

#[test]
fn a_dataset_export_converts_and_records_its_output() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("chat.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"ahoy\"}]}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"bye\"}, {\"role\": \"assistant\", \"content\": \"arr\"}]}\n",
    )
    .unwrap();
    let server = Served::start(home.path(), &[]);
    let export = |body: Value| post_json(&server, "/api/datasets/export", &body);
    let (status, d) =
        export(json!({"source": "chat.jsonl", "format": "sharegpt", "output": "sg.jsonl"}));
    assert_eq!(status, 201, "{d}");
    assert_eq!(
        (d["format"].as_str(), d["rows"].as_i64()),
        (Some("sharegpt"), Some(2))
    );
    assert_eq!(d["conversion"]["from"], "openai");
    assert!(d["provenance"].as_str().unwrap().contains("sharegpt"));
    let written = std::fs::read_to_string(home.path().join("sg.jsonl")).unwrap();
    assert!(written.contains("conversations"), "{written}");
    assert_eq!(server.get("/api/datasets")[0]["id"], d["id"]);
    let (status, _) =
        export(json!({"source": "chat.jsonl", "format": "alpaca", "output": "sg.jsonl"}));
    assert_eq!(status, 409, "an existing file is never replaced");
    let (status, v) =
        export(json!({"source": "chat.jsonl", "format": "nope", "output": "x.jsonl"}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("unknown_format"))
    );
    let (status, v) =
        export(json!({"source": "none.jsonl", "format": "sharegpt", "output": "x.jsonl"}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("missing_file"))
    );
}

#[test]
fn data_tools_record_what_they_write_with_the_command() {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("reg.db");
    let input = common::fixtures().join("chats.jsonl");
    let out = home.path().join("sg.jsonl");
    let done = common::cli::lora_train_at(home.path())
        .args(["data", "convert"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--to", "sharegpt", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    common::cli::succeeded(&done);
    let reg = Registry::open(&db).unwrap();
    let d = &reg.datasets().unwrap()[0];
    assert_eq!(Path::new(&d.path), out.as_path());
    assert_eq!(d.format.as_deref(), Some("sharegpt"));
    let provenance = d.provenance.as_deref().unwrap();
    assert!(
        provenance.starts_with("lora-train data convert "),
        "{provenance}"
    );
    assert_eq!(d.sha256.len(), 64);
}

#[test]
fn a_target_that_forgot_its_adapter_still_takes_the_new_one() {
    let home = tempfile::tempdir().unwrap();
    // A restarted vLLM: nothing to unload (404), but loads work.
    let target = MockServer::start(|r| match r.path() {
        "/v1/unload_lora_adapter" => Reply::json(
            404,
            json!({"object": "error", "message": "The lora adapter 'pirate' cannot be found."}),
        ),
        _ => Reply::bytes(200, "text/plain", b"Success"),
    });
    let db = home.path().join("reg.db");
    let reg = Registry::open(&db).unwrap();
    version(&reg, "pirate", &home.path().join("a1"));
    version(&reg, "pirate", &home.path().join("a2"));
    let client = lora_train::deploy::VllmClient::new(None);
    let req = lora_train::deploy::DeployRequest {
        target: target.url(),
        ..Default::default()
    };
    for v in [1, 2] {
        let v = reg.model_version("pirate", v).unwrap();
        let d = lora_train::deploy::deploy(&reg, &client, &v, &req).unwrap();
        assert_eq!(d.status, "active");
    }
    assert_eq!(target.count("POST", "/v1/unload_lora_adapter"), 1);
    assert_eq!(target.count("POST", "/v1/load_lora_adapter"), 2);
    let rows = reg.deployments().unwrap();
    assert_eq!(
        (rows[0].status.as_str(), rows[1].status.as_str()),
        ("active", "replaced")
    );
}

/// A server whose jobs reach a mock Together API, and a `[hosted]` job file training on two
/// conversations into `home/out`, polling every `poll_secs`.
fn hosted_setup(
    home: &Path,
    out: &str,
    poll_secs: &str,
    timeout_secs: u32,
) -> (FakeApi, Served, String) {
    let data = home.join("data/train.jsonl");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    let line = r#"{"messages":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}]}"#;
    std::fs::write(&data, format!("{line}\n{line}\n")).unwrap();
    let job = format!(
        "[model]\nsource = \"meta-llama/Llama-3.1-8B-Instruct\"\n[data]\ntrain = \"{}\"\n\
         [train]\nepochs = 1\n[output]\ndir = \"{}\"\n[hosted]\nprovider = \"together\"\n\
         model = \"meta-llama/Meta-Llama-3.1-8B-Instruct-Reference\"\n\
         poll_interval_secs = {poll_secs}\ntimeout_secs = {timeout_secs}\n",
        data.display(),
        home.join(out).display()
    );
    let api = apis::together(Outcome::Succeed);
    let base = api.base_url();
    let server = Served::start_env(
        home,
        &[],
        &[
            ("TOGETHER_API_KEY", "tg-test"),
            ("TOGETHER_BASE_URL", &base),
        ],
    );
    (api, server, job)
}

/// A `[hosted]` job file posted to the server runs as `lora-train --config`: submitted to the
/// (mock) provider once, followed on the same row, and its model registered.
#[test]
fn a_posted_hosted_job_is_submitted_followed_and_registered() {
    let home = tempfile::tempdir().unwrap();
    let (api, server, job) = hosted_setup(home.path(), "runs/remote", "0.01", 20);
    let posted = server.post_job(&job, "?name=remote");
    assert_eq!(posted["backend"], "together");
    let id = posted["id"].as_i64().unwrap();
    let done = server.wait_job(id, "completed", |j| {
        j["status"] == "completed" || j["status"] == "failed"
    });
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["remote_id"], TOGETHER_JOB);
    let versions = server.get("/api/models/remote/versions");
    assert_eq!(versions[0]["remote_model"], TOGETHER_OUTPUT);
    assert_eq!(versions[0]["job_id"], id);
    assert_eq!(
        server.get("/api/jobs").as_array().unwrap().len(),
        1,
        "one row"
    );
    // A finished remote job is not submitted again.
    let (status, _) = server.call("POST", &format!("/api/jobs/{id}/start"), None);
    assert_eq!(status, 409);
    assert_eq!(api.server.count("POST", "/v1/fine-tunes"), 1);
}

/// Cancelling a posted `[hosted]` job while the worker's child follows it cancels the
/// provider's job, and the row ends cancelled.
#[test]
fn cancelling_a_posted_hosted_job_cancels_the_remote_job() {
    let home = tempfile::tempdir().unwrap();
    let (api, server, job) = hosted_setup(home.path(), "runs/slow", "5", 60);
    let id = server.post_job(&job, "")["id"].as_i64().unwrap();
    server.wait_job(id, "submitted", |j| j["remote_id"] == TOGETHER_JOB);
    let (status, v) = server.call("POST", &format!("/api/jobs/{id}/cancel"), None);
    assert_eq!(status, 200, "{v}");
    let done = server.wait_job(id, "ended", |j| {
        ["cancelled", "failed", "completed"].contains(&j["status"].as_str().unwrap_or(""))
    });
    assert_eq!(done["status"], "cancelled", "{done}");
    let cancel = format!("/v1/fine-tunes/{TOGETHER_JOB}/cancel");
    assert_eq!(api.server.count("POST", &cancel), 1);
}
