//! A job's `[eval]` and `[report]` after training, through the binary on the tiny Llama: the
//! harness compares `base` with `adapter` and writes `<output.dir>/eval/`; `[report]` is a
//! shorthand whose `report.json` keeps its keys and whose rates are the harness checks'; both
//! sections at once, a bad judge table and a missing judge key fail before training; a judge
//! on loopback (the mock of `harness_judge`) judges both orders of every prompt.

use crate::common;
use crate::harness_judge::judge_reply;
use crate::providers_support::MockServer;

use std::path::{Path, PathBuf};

use lora_train::config::JobConfig;

const KEY: &str = "sk-train-eval-7c2d";

/// Six held-out prompts with references, and a two-question multiple-choice task, in `dir`.
fn write_data(dir: &Path) {
    let prompts: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"id": "p{i}", "messages": [{{"role": "user", "content": "Tell me about ships, part {i}."}}, {{"role": "assistant", "content": "Ahoy! Ships float, part {i}."}}]}}"#
            )
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts.join("\n")).unwrap();
    std::fs::write(
        dir.join("mc.jsonl"),
        "{\"question\": \"2 + 2?\", \"choices\": [\"4\", \"five\"], \"answer\": 0}\n\
         {\"question\": \"A colour?\", \"choices\": [\"Tuesday\", \"blue\"], \"answer\": 1}\n",
    )
    .unwrap();
}

/// `dir/job.toml`: two steps on the tiny Llama into `dir/run`, plus `extra` tables.
fn write_job(dir: &Path, extra: &str) -> PathBuf {
    write_data(dir);
    let job = dir.join("job.toml");
    let text = format!(
        "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 4\nalpha = 8\n\
         [data]\ntrain = \"{}\"\nvalidation = 0.25\nmax_seq_len = 128\n\
         [train]\nmax_steps = 2\nmicro_batch_size = 2\nlr = 1e-2\n\
         [output]\ndir = \"run\"\n{extra}",
        common::fixtures()
            .join("tiny-llama")
            .display()
            .to_string()
            .replace('\\', "/"),
        common::fixtures()
            .join("chats.jsonl")
            .display()
            .to_string()
            .replace('\\', "/"),
    );
    std::fs::write(&job, text).unwrap();
    job
}

fn train(job: &Path) -> std::process::Output {
    common::cli::lora_train()
        .arg("--config")
        .arg(job)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The row of `rows` whose `candidate` is `candidate` (and whose `key` is `name`).
fn row<'a>(
    rows: &'a serde_json::Value,
    candidate: &str,
    key: &str,
    name: &str,
) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["candidate"] == candidate && r[key] == name)
        .unwrap_or_else(|| panic!("no {key} `{name}` for {candidate} in {rows}"))
}

#[test]
fn an_eval_section_compares_base_and_adapter_with_checks_and_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(
        tmp.path(),
        "[eval.data]\npath = \"prompts.jsonl\"\n[eval.generation]\nmax_new_tokens = 4\n\
         [[eval.check]]\nname = \"says-something\"\nregex = \".\"\n\
         [[eval.task]]\nname = \"facts\"\npath = \"mc.jsonl\"\n",
    );
    let stdout = common::cli::succeeded(&train(&job));
    let run = tmp.path().join("run");
    assert!(
        stdout.contains(&run.join("eval").display().to_string()),
        "{stdout}"
    );
    // No `[report]`: the run's own report is not written.
    assert!(!run.join("report.json").exists());

    let report = common::read_json(&run.join("eval/report.json"));
    assert_eq!(report["prompts"], 6);
    let candidates = report["candidates"].as_array().unwrap();
    let names: Vec<&str> = candidates
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "adapter"]);
    assert!(candidates[0]["adapter"].is_null());
    assert_eq!(
        candidates[1]["adapter"].as_str(),
        Some(run.join("adapter").display().to_string().as_str())
    );
    assert_eq!(candidates[1]["adapter_sha256"].as_str().unwrap().len(), 64);
    // Both have a loss on the references; training on them moved the adapter's.
    let loss = |i: usize| candidates[i]["val_loss"].as_f64().unwrap();
    assert!(loss(0).is_finite() && loss(1).is_finite() && loss(0) != loss(1));
    for name in names {
        let check = row(&report["checks"], name, "check", "says-something");
        assert_eq!(check["n"], 6);
        let task = row(&report["tasks"], name, "task", "facts");
        assert_eq!(task["n"], 2);
        let gens = lines(&run.join(format!("eval/generations/{name}.jsonl")));
        assert_eq!(gens.len(), 6);
        assert_eq!(gens[0]["id"], "p0");
    }
    assert_eq!(report["pairwise"].as_array().unwrap().len(), 0);
    assert!(run.join("eval/report.md").is_file());
}

#[test]
fn a_report_section_is_the_harness_checks_on_its_first_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(
        tmp.path(),
        "[report]\nprompts = \"prompts.jsonl\"\ncontains = \"e\"\nends_with = \"s\"\n\
         limit = 3\nmax_new_tokens = 6\n",
    );
    let stdout = common::cli::succeeded(&train(&job));
    assert!(stdout.contains("## Before / after"), "{stdout}");
    let run = tmp.path().join("run");
    let report = common::read_json(&run.join("report.json"));
    let mut keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "adapter_rate",
            "base_rate",
            "behaviour",
            "prompts",
            "samples",
            "val_loss_after",
            "val_loss_before"
        ]
    );
    assert_eq!(report["behaviour"], "ends with \"s\" and contains \"e\"");
    let summary = common::read_json(&run.join("summary.json"));
    assert_eq!(report["val_loss_before"], summary["val_loss_before"]);
    assert_eq!(report["val_loss_after"], summary["val_loss_after"]);
    // The first three prompts, in file order (not a seeded sample).
    assert_eq!(report["prompts"], 3);
    let samples = report["samples"].as_array().unwrap();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s["prompt"], format!("Tell me about ships, part {i}."));
        let mut sample_keys: Vec<&str> =
            s.as_object().unwrap().keys().map(String::as_str).collect();
        sample_keys.sort_unstable();
        assert_eq!(sample_keys, ["adapter", "base", "prompt"]);
    }

    // The harness wrote its own report of the same answers; each rule is one of its checks, and
    // the behaviour rate is the share of replies that pass them all.
    let eval = common::read_json(&run.join("eval/report.json"));
    assert_eq!(eval["prompts"], 3);
    for (candidate, rate_key) in [("base", "base_rate"), ("adapter", "adapter_rate")] {
        let gens = lines(&run.join(format!("eval/generations/{candidate}.jsonl")));
        let replies: Vec<&str> = gens
            .iter()
            .map(|g| g["response"].as_str().unwrap())
            .collect();
        let column: Vec<&str> = samples
            .iter()
            .map(|s| s[candidate].as_str().unwrap())
            .collect();
        assert_eq!(replies, column);
        let ends = replies.iter().filter(|r| r.trim().ends_with('s')).count();
        let contains = replies.iter().filter(|r| r.contains('e')).count();
        let both = replies
            .iter()
            .filter(|r| r.trim().ends_with('s') && r.contains('e'))
            .count();
        assert_eq!(
            row(&eval["checks"], candidate, "check", "ends_with")["passed"],
            ends
        );
        assert_eq!(
            row(&eval["checks"], candidate, "check", "contains")["passed"],
            contains
        );
        assert_eq!(report[rate_key].as_f64().unwrap(), both as f64 / 3.0);
    }
}

#[test]
fn report_and_eval_together_fail_before_training_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(
        tmp.path(),
        "[report]\nprompts = \"prompts.jsonl\"\ncontains = \"e\"\n\
         [eval.data]\npath = \"prompts.jsonl\"\n",
    );
    let out = train(&job);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("job.toml:") && stderr.contains("`[report]` and `[eval]`"),
        "{stderr}"
    );
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn an_eval_section_is_checked_where_it_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |extra: &str| {
        let job = write_job(tmp.path(), extra);
        JobConfig::load_checked(&job, &[], lora_train::harness::training::check_job)
            .map_err(|e| e.to_string())
    };
    // The job's own tables take 16 lines; `extra` starts at line 17.
    let err = load("[eval.data]\npath = \"prompts.jsonl\"\nlimt = 2\n").unwrap_err();
    assert!(
        err.contains("job.toml:19") && err.contains("did you mean `eval.data.limit`?"),
        "{err}"
    );
    // A key written one table too high is found in the table below, not in `[report]`.
    let err = load("[eval]\nlimit = 2\n").unwrap_err();
    assert!(
        err.contains("job.toml:18") && err.contains("did you mean `eval.data.limit`?"),
        "{err}"
    );
    let err = load(
        "[eval.data]\npath = \"prompts.jsonl\"\n[[eval.check]]\nname = \"x\"\ncontains = \"a\"\nregex = \"b\"\n",
    )
    .unwrap_err();
    assert!(
        err.contains("job.toml:19") && err.contains("check `x`: a check has exactly one rule"),
        "{err}"
    );
    let err = load(
        "[eval.data]\npath = \"prompts.jsonl\"\n[[eval.judge.providers]]\nprovider = \"opneai\"\nmodel = \"m\"\n",
    )
    .unwrap_err();
    assert!(
        err.contains("job.toml:19")
            && err.contains("`eval.judge.providers.0`: unknown variant `opneai`"),
        "{err}"
    );
    let err = load("[eval.data]\npath = \"prompts.jsonl\"\n[eval.judge]\nbaseline = \"tuned\"\n[[eval.judge.providers]]\nprovider = \"openai\"\nmodel = \"m\"\n")
        .unwrap_err();
    assert!(
        err.contains("`eval.judge.baseline`") && err.contains("base, adapter"),
        "{err}"
    );
    // Paths are the job file's folder's, as the job's own are.
    let job = load(
        "[eval.data]\npath = \"prompts.jsonl\"\n[[eval.task]]\nname = \"t\"\npath = \"mc.jsonl\"\n",
    )
    .unwrap();
    let eval = job.eval.unwrap();
    assert_eq!(eval.data.path, tmp.path().join("prompts.jsonl"));
    assert_eq!(eval.task[0].path, tmp.path().join("mc.jsonl"));
}

#[test]
fn a_judge_in_the_eval_section_judges_both_orders_and_needs_its_key_first() {
    let tmp = tempfile::tempdir().unwrap();
    let judge = MockServer::start(judge_reply);
    let job = write_job(
        tmp.path(),
        &format!(
            "[eval.data]\npath = \"prompts.jsonl\"\nlimit = 4\n[eval.generation]\nmax_new_tokens = 4\n\
             [eval.judge]\nbootstrap = 50\n\
             [[eval.judge.providers]]\nprovider = \"openai\"\nmodel = \"judge-model\"\n\
             base_url = \"{}/v1\"\nmax_retries = 0\n",
            judge.url()
        ),
    );
    // Without the key nothing trains and nothing is asked.
    let out = common::cli::lora_train()
        .arg("--config")
        .arg(&job)
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
    assert!(!tmp.path().join("run").exists());
    assert_eq!(judge.requests().len(), 0);

    let db = tmp.path().join("reg.db");
    let trained = common::cli::lora_train()
        .arg("--config")
        .arg(&job)
        .arg("--db")
        .arg(&db)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = common::cli::succeeded(&trained);
    assert!(stdout.contains("## Pairwise"), "{stdout}");
    assert!(!stdout.contains(KEY));
    // The report is recorded under the run's job, its adapter as the version it registered.
    let reg = lora_train::registry::Registry::open(&db).unwrap();
    let c = &reg.comparisons(None).unwrap()[0];
    assert_eq!(
        (c.model_a.as_deref(), c.model_b.as_deref()),
        (Some("run@1"), None)
    );
    let version = reg.model_version("run", 1).unwrap();
    assert_eq!(
        reg.evaluation(c.evaluation_id).unwrap().job_id,
        version.job_id
    );
    assert_eq!(version.metrics["win_rate"].as_f64(), Some(c.win_rate));
    assert!(version.metrics.contains_key("eval_val_loss"));
    let data = &reg.datasets().unwrap()[0];
    assert!(data.path.ends_with("chats.jsonl"), "{data:?}");
    assert_eq!(
        data.provenance,
        version.job_id.map(|id| format!("job:{id}"))
    );
    assert_eq!(data.format.as_deref(), Some("openai"));
    let report = common::read_json(&tmp.path().join("run/eval/report.json"));
    assert_eq!(report["prompts"], 4);
    let pair = &report["pairwise"][0];
    assert_eq!(
        (pair["a"].as_str(), pair["b"].as_str()),
        (Some("adapter"), Some("base"))
    );
    let count = |k: &str| pair[k].as_u64().unwrap();
    assert_eq!(count("wins_a") + count("wins_b") + count("ties"), 4);
    // Each prompt in both orders; where base and adapter gave the same reply, the second order
    // is the same request, answered from the cache.
    assert_eq!(report["judge"]["calls"], 8);
    let cached = report["judge"]["cached"].as_u64().unwrap();
    assert_eq!(judge.requests().len() as u64, 8 - cached);
    let judgments = lines(&tmp.path().join("run/eval/judgments.jsonl"));
    assert_eq!(judgments.len(), 4);
}
