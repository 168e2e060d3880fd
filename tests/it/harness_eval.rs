//! `lora-train eval` end to end through the binary: a remote candidate and a loopback judge
//! (known preference and position bias, from `harness_judge`), an earlier generations file, a
//! local tiny model, offline checks, the report's counts, and a re-run that makes no new call.

use crate::common;
use crate::harness_judge::judge_reply;
use crate::providers_support::{completion, MockServer, Recorded, Reply};

use std::path::Path;

pub(crate) const KEY: &str = "sk-eval-test-5e1f";

/// The remote candidate: "good" answers, but "bad" for the prompts that mention "hard".
pub(crate) fn candidate_reply(req: &Recorded) -> Reply {
    let body = req.json();
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned())
        .unwrap_or_default();
    let text = last["content"].as_str().unwrap_or("");
    let answer = if text.contains("hard") { "bad" } else { "good" };
    Reply::json(200, completion(&format!("{answer} answer. — Byte"), 20, 4))
}

pub(crate) fn write_inputs(
    dir: &Path,
    candidate: &MockServer,
    judge: &MockServer,
    extra: &str,
) -> std::path::PathBuf {
    let prompts: Vec<String> = (0..6)
        .map(|i| {
            let q = if i < 2 { format!("hard question {i}") } else { format!("question {i}") };
            format!(
                r#"{{"id": "q{i}", "messages": [{{"role": "user", "content": "{q}"}}, {{"role": "assistant", "content": "ref {i}"}}]}}"#
            )
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts.join("\n")).unwrap();
    // The baseline's answers, made earlier: neutral, so "good" beats them and "bad" loses.
    let earlier: Vec<String> = (0..6)
        .map(|i| {
            format!(r#"{{"id": "q{i}", "response": "an answer", "output_tokens": 3, "latency_s": 0.1, "finish_reason": "stop"}}"#)
        })
        .collect();
    std::fs::write(dir.join("base.jsonl"), earlier.join("\n")).unwrap();
    let file = dir.join("eval.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[data]
path = "prompts.jsonl"

[[candidate]]
name = "base"
responses = "base.jsonl"

[[candidate]]
name = "remote"
provider = "openai"
model = "cand-model"
base_url = "{}/v1"

[judge]
baseline = "base"
bootstrap = 200

[[judge.providers]]
provider = "openai"
model = "judge-model"
base_url = "{}/v1"
max_retries = 0

[[check]]
name = "signs-off"
contains = "— Byte"

[[check]]
name = "exact"
matches_reference = "exact"
{extra}
[output]
dir = "out"
"#,
            candidate.url(),
            judge.url()
        ),
    )
    .unwrap();
    file
}

/// The quick form comparing the tiny Llama with itself on `data`, writing to `out`.
pub fn quick_tiny_eval(data: &Path, out: &Path) -> assert_cmd::Command {
    let tiny = common::fixtures().join("tiny-llama");
    let mut cmd = common::cli::lora_train();
    cmd.args(["eval", "--model1"])
        .arg(&tiny)
        .arg("--model2")
        .arg(&tiny)
        .arg("--data")
        .arg(data)
        .arg("-o")
        .arg(out);
    cmd
}

fn eval(file: &Path) -> std::process::Output {
    common::cli::lora_train()
        .args(["eval", "--config"])
        .arg(file)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

#[test]
fn an_eval_judges_both_orders_reports_counts_and_reruns_for_free() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = MockServer::start(candidate_reply);
    let judge = MockServer::start(judge_reply);
    let file = write_inputs(tmp.path(), &cand, &judge, "");
    let out = eval(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
    assert!(stdout.contains("## Pairwise"), "{stdout}");

    let dir = tmp.path().join("out");
    let report = common::read_json(&dir.join("report.json"));
    assert_eq!(report["prompts"], 6);
    let pair = &report["pairwise"][0];
    assert_eq!(
        (pair["a"].as_str(), pair["b"].as_str()),
        (Some("remote"), Some("base"))
    );
    // "good" (4 prompts) beats "an answer"; "bad" (2) loses to it; no position effect here.
    assert_eq!(
        (pair["wins_a"].as_u64(), pair["wins_b"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(
        (pair["ties"].as_u64(), pair["inconsistent"].as_u64()),
        (Some(0), Some(0))
    );
    assert!((pair["win_rate_a"].as_f64().unwrap() - 4.0 / 6.0).abs() < 1e-12);
    let ci = pair["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() <= 4.0 / 6.0 && 4.0 / 6.0 <= ci[1].as_f64().unwrap());
    // Two candidates: the rating gap is the closed form of the win rate.
    let ratings = report["ratings"].as_array().unwrap();
    let rating = |name: &str| {
        ratings.iter().find(|r| r["name"] == name).unwrap()["rating"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(rating("base"), 1000.0);
    assert!((rating("remote") - 1000.0 - 400.0 * 2f64.log10()).abs() < 1e-6);
    let judge_row = &report["judge"];
    assert_eq!(judge_row["calls"], 12);
    assert_eq!(judge_row["cached"], 0);
    assert_eq!(judge_row["position_consistency"], 1.0);
    let checks = report["checks"].as_array().unwrap();
    let check = |cand: &str, name: &str| {
        checks
            .iter()
            .find(|c| c["candidate"] == cand && c["check"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(check("remote", "signs-off")["passed"], 6);
    assert_eq!(check("base", "signs-off")["passed"], 0);
    assert_eq!(check("base", "exact")["n"], 6);
    assert_eq!(judge.requests().len(), 12);
    assert_eq!(cand.requests().len(), 6);
    let gens = std::fs::read_to_string(dir.join("generations/remote.jsonl")).unwrap();
    assert_eq!(gens.lines().count(), 6);
    assert!(
        gens.lines().next().unwrap().contains("\"id\":\"q0\""),
        "{gens}"
    );
    for plot in ["ratings.svg", "win_rates.svg", "outcomes.svg"] {
        assert!(dir.join("plots").join(plot).is_file(), "{plot}");
    }
    let judgments = std::fs::read_to_string(dir.join("judgments.jsonl")).unwrap();
    assert_eq!(judgments.lines().count(), 6);
    assert!(!judgments.contains(KEY));

    // The same eval again: everything is in the cache.
    let again = eval(&file);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(judge.requests().len(), 12, "the re-run called the judge");
    assert_eq!(
        cand.requests().len(),
        6,
        "the re-run asked the candidate again"
    );
    let report = common::read_json(&dir.join("report.json"));
    assert_eq!(report["judge"]["cached"], 12);
    assert_eq!(report["pairwise"][0]["wins_a"], 4);
    // The earlier generations file is a valid candidate source.
    let reuse = format!(
        "\n[[candidate]]\nname = \"again\"\nresponses = \"{}\"\n",
        dir.join("generations/remote.jsonl").display()
    );
    let file = write_inputs(tmp.path(), &cand, &judge, &reuse.replace('\\', "/"));
    let out = eval(&file);
    common::cli::succeeded(&out);
}

#[test]
fn bad_inputs_fail_before_any_call_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = MockServer::start(candidate_reply);
    let judge = MockServer::start(judge_reply);
    let file = write_inputs(tmp.path(), &cand, &judge, "");
    // A missing key.
    let out = common::cli::lora_train()
        .args(["eval", "--config"])
        .arg(&file)
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{stderr}"
    );
    assert_eq!(cand.requests().len() + judge.requests().len(), 0);
    // An unknown baseline names the file, line and key.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("baseline = \"base\"", "baseline = \"bsae\"");
    std::fs::write(&file, text).unwrap();
    let out = eval(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("eval.toml:16: `judge.baseline`") && stderr.contains("`bsae`"),
        "{stderr}"
    );
    // A responses file missing an id.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("baseline = \"bsae\"", "baseline = \"base\"");
    std::fs::write(&file, text).unwrap();
    let base = std::fs::read_to_string(tmp.path().join("base.jsonl")).unwrap();
    std::fs::write(
        tmp.path().join("base.jsonl"),
        base.replace("\"q3\"", "\"q9\""),
    )
    .unwrap();
    let out = eval(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("base.jsonl") && stderr.contains("`q3`"),
        "{stderr}"
    );
    assert_eq!(judge.requests().len(), 0);
}

#[test]
fn a_local_tiny_model_answers_and_the_quick_form_runs_without_a_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello there.\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Bye\"}, {\"role\": \"assistant\", \"content\": \"Goodbye!\"}]}\n",
    )
    .unwrap();
    let tiny = common::fixtures().join("tiny-llama");
    let out_dir = tmp.path().join("quick");
    let out = quick_tiny_eval(&prompts, &out_dir)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    common::cli::succeeded(&out);
    let a = std::fs::read_to_string(out_dir.join("generations/model1.jsonl")).unwrap();
    let b = std::fs::read_to_string(out_dir.join("generations/model2.jsonl")).unwrap();
    assert_eq!(a.lines().count(), 2);
    // Greedy decoding of the same weights gives the same answers.
    let text = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["response"].to_string())
            .collect()
    };
    assert_eq!(text(&a), text(&b));
    let report = common::read_json(&out_dir.join("report.json"));
    assert_eq!(report["pairwise"].as_array().unwrap().len(), 0);
    assert!(
        report["candidates"][0]["mean_response_tokens"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // The loss on the references is what `score` gives on the same file.
    let scored = common::cli::json(
        common::cli::lora_train()
            .args(["score", "--json", "--model"])
            .arg(&tiny)
            .arg("--data")
            .arg(&prompts),
    );
    let want = scored["mean_loss"].as_f64().unwrap();
    let got = report["candidates"][0]["val_loss"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9, "eval {got} vs score {want}");
}

#[test]
fn an_output_folder_with_other_files_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("mine");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("notes.txt"), "keep me").unwrap();
    let run = |force: bool| {
        let mut cmd = quick_tiny_eval(&prompts, &out_dir);
        if force {
            cmd.arg("--force");
        }
        cmd
    };
    let before = crate::hostile::Snapshot::of(&[&out_dir]);
    let err = crate::hostile::fails_with(&mut run(false), 1);
    assert!(
        err.contains("notes.txt") && err.contains("--force"),
        "{err}"
    );
    before.assert_unchanged(&[&out_dir]);
    let out = run(true).env("RUST_LOG", "off").output().unwrap();
    common::cli::succeeded(&out);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert!(out_dir.join("report.json").is_file());
}

/// A local model as judge, with a user template short enough for its context: the tiny random
/// Llama never writes a verdict, so every prompt is asked twice in each order and counted as a
/// judge error, none turned into a tie; a re-run answers from the cache.
#[test]
fn a_local_judge_that_cannot_answer_is_counted_not_guessed() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n{\"messages\": [{\"role\": \"user\", \"content\": \"Bye\"}]}\n",
    )
    .unwrap();
    let tiny = common::fixtures().join("tiny-llama");
    std::fs::write(
        tmp.path().join("pair.jinja"),
        "A: {{ response_a }}\nB: {{ response_b }}\nVerdict as JSON?",
    )
    .unwrap();
    let file = tmp.path().join("eval.toml");
    std::fs::write(
        &file,
        format!(
            "[data]\npath = \"p.jsonl\"\n[[candidate]]\nname = \"a\"\nmodel = \"{tiny}\"\n[[candidate]]\nname = \"b\"\nmodel = \"{gemma}\"\n[generation]\nmax_new_tokens = 4\n[judge]\nbaseline = \"b\"\nbootstrap = 20\npairwise_template = \"pair.jinja\"\n[[judge.providers]]\nprovider = \"local\"\nmodel = \"{tiny}\"\nmax_tokens = 8\n[output]\ndir = \"out\"\n",
            tiny = tiny.display().to_string().replace('\\', "/"),
            gemma = common::fixtures()
                .join("tiny-gemma3")
                .display()
                .to_string()
                .replace('\\', "/")
        ),
    )
    .unwrap();
    for round in 0..2 {
        let out = eval(&file);
        common::cli::succeeded(&out);
        let report = common::read_json(&tmp.path().join("out/report.json"));
        let pair = &report["pairwise"][0];
        assert_eq!(pair["judge_errors"], 2, "{pair}");
        assert_eq!(
            (pair["wins_a"].as_u64(), pair["ties"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(pair["win_rate_a"], serde_json::Value::Null);
        let judge = &report["judge"];
        // Two prompts, two orders, each asked once more after a reply without a verdict.
        assert_eq!(judge["calls"], 8, "{judge}");
        assert_eq!(judge["errors"], 4, "{judge}");
        assert_eq!(judge["cached"], if round == 0 { 0 } else { 8 }, "{judge}");
        assert!(
            judge["models"][0].as_str().unwrap().starts_with("local/"),
            "{judge}"
        );
    }
}

/// Multiple-choice tasks pick the choice with the highest summed log-probability (and per byte,
/// for acc_norm): the same numbers `lora-train score` gives for each (question, choice) reply.
#[test]
fn multiple_choice_accuracy_follows_the_choices_log_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let questions = [
        ("What is 2 + 2?", vec!["4", "five", "twenty-two"], 0),
        ("Which is a colour?", vec!["blue", "Tuesday"], 0),
        (
            "Capital of France?",
            vec!["Lyon", "Paris", "a very long answer about Marseille"],
            1,
        ),
    ];
    let mut mc = String::new();
    let mut convs = String::new();
    for (q, choices, answer) in &questions {
        mc += &serde_json::json!({"question": q, "choices": choices, "answer": answer}).to_string();
        mc.push('\n');
        for c in choices {
            let conv = serde_json::json!({"messages": [
                {"role": "user", "content": q}, {"role": "assistant", "content": c}]});
            convs += &conv.to_string();
            convs.push('\n');
        }
    }
    std::fs::write(tmp.path().join("mc.jsonl"), mc).unwrap();
    std::fs::write(tmp.path().join("convs.jsonl"), &convs).unwrap();
    std::fs::write(
        tmp.path().join("p.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n",
    )
    .unwrap();
    let tiny = common::fixtures().join("tiny-llama");
    let tiny_s = tiny.display().to_string().replace('\\', "/");
    let file = tmp.path().join("eval.toml");
    std::fs::write(
        &file,
        format!(
            "[data]\npath = \"p.jsonl\"\n[[candidate]]\nname = \"a\"\nmodel = \"{tiny_s}\"\n[generation]\nmax_new_tokens = 2\n[[task]]\nname = \"facts\"\npath = \"mc.jsonl\"\n[output]\ndir = \"out\"\n"
        ),
    )
    .unwrap();
    let out = eval(&file);
    common::cli::succeeded(&out);
    let report = common::read_json(&tmp.path().join("out/report.json"));
    let row = &report["tasks"][0];
    assert_eq!(
        (row["candidate"].as_str(), row["task"].as_str()),
        (Some("a"), Some("facts"))
    );
    assert_eq!(row["n"], 3);

    let scored = common::cli::json(
        common::cli::lora_train()
            .args(["score", "--json", "--batch-size", "1", "--model"])
            .arg(&tiny)
            .arg("--data")
            .arg(tmp.path().join("convs.jsonl")),
    );
    let per = scored["per_example"].as_array().unwrap();
    let logp = |i: usize| {
        let e = per.iter().find(|e| e["index"] == i).unwrap();
        -e["loss"].as_f64().unwrap() * e["target_tokens"].as_f64().unwrap()
    };
    let (mut acc, mut acc_norm, mut at) = (0, 0, 0);
    for (_, choices, answer) in &questions {
        let lp: Vec<f64> = (0..choices.len()).map(|k| logp(at + k)).collect();
        let argmax = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        let norm: Vec<f64> = lp
            .iter()
            .zip(choices)
            .map(|(l, c)| l / c.len() as f64)
            .collect();
        acc += usize::from(argmax(&lp) == *answer);
        acc_norm += usize::from(argmax(&norm) == *answer);
        at += choices.len();
    }
    assert_eq!(row["acc"].as_f64().unwrap(), acc as f64 / 3.0, "{row}");
    assert_eq!(
        row["acc_norm"].as_f64().unwrap(),
        acc_norm as f64 / 3.0,
        "{row}"
    );
    // A bad line names the file, line and field before any work.
    std::fs::write(
        tmp.path().join("mc.jsonl"),
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 5}\n",
    )
    .unwrap();
    let err = crate::hostile::fails_with(
        common::cli::lora_train()
            .args(["eval", "--force", "--config"])
            .arg(&file),
        1,
    );
    assert!(err.contains("mc.jsonl:1: \"answer\""), "{err}");
}

/// An eval killed while judging, run again, asks the judge only for what it had not finished:
/// every judgment that came back before the kill is served from the cache.
#[test]
fn a_killed_eval_rerun_repays_nothing_it_had_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let cand = MockServer::start(candidate_reply);
    let judge =
        MockServer::start(|r| judge_reply(r).delayed(std::time::Duration::from_millis(150)));
    let file = write_inputs(tmp.path(), &cand, &judge, "");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lora-train"))
        .args(["eval", "--set", "judge.concurrency=1", "--config"])
        .arg(&file)
        .env("OPENAI_API_KEY", KEY)
        .env("LORA_TRAIN_HOME", tmp.path().join("home"))
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while judge.requests().len() < 5 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the eval never reached the judge"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let cached = count_files(&tmp.path().join("out/cache/judge"));
    assert!(
        (1..12).contains(&cached),
        "{cached} judgments cached before the kill"
    );
    let before = judge.requests().len();
    let out = common::cli::lora_train()
        .args(["eval", "--config"])
        .arg(&file)
        .env("OPENAI_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    common::cli::succeeded(&out);
    assert_eq!(judge.requests().len() - before, 12 - cached);
    let report = common::read_json(&tmp.path().join("out/report.json"));
    assert_eq!(report["judge"]["cached"], cached);
    assert_eq!(report["pairwise"][0]["wins_a"], 4);
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "json"))
            }
        })
        .sum()
}
