//! `lora-train bench` on the tiny models: its JSON fields are present and sane on the job's
//! data and on synthetic rows, its FLOPs follow `bench_gpu_peft.py`'s formula for the model,
//! `-o` writes bench.json and bench.md, and a sweep under `LORA_TRAIN_MEMORY_LIMIT` reports the
//! longest sequence that fits, skipping the larger points with the memory check's reason.

use std::path::{Path, PathBuf};

use crate::common;
use crate::common::cli::{json, lora_train};

/// A job on the tiny Llama over the fixture chats (output folder unused by bench).
fn write_job(dir: &Path) -> PathBuf {
    write_job_of(
        dir,
        "tiny-llama",
        &common::fixtures().join("chats.jsonl"),
        "",
    )
}

/// A job on the fixture model `model` over `data`, `train_lines` added to `[train]`.
fn write_job_of(dir: &Path, model: &str, data: &Path, train_lines: &str) -> PathBuf {
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[model]\nsource = \"{}\"\ndevice = \"cpu\"\n[lora]\nr = 4\nalpha = 8\n\
             target_modules = \"all-linear\"\n[data]\ntrain = \"{}\"\nmax_seq_len = 128\n\
             [train]\nmax_steps = 4\nmicro_batch_size = 2\nlr = 1e-3\n{train_lines}\n\
             [output]\ndir = \"{}\"\n",
            common::fixtures().join(model).display(),
            data.display(),
            dir.join("run").display()
        ),
    )
    .unwrap();
    job
}

fn bench(job: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = lora_train();
    cmd.arg("bench").arg("--config").arg(job).args(extra);
    cmd.env("RUST_LOG", "off");
    cmd
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// The fields every run reports, sane whatever the machine's speed.
fn assert_sane(v: &serde_json::Value) {
    for key in [
        "tokens_per_second",
        "real_tokens_per_second",
        "padded_tokens_per_second",
        "flops_per_token",
        "peak_tflops",
        "step_time_p50_s",
        "step_time_p90_s",
        "peak_rss_mib",
        "estimated_peak_mib",
    ] {
        assert!(num(v, key) > 0.0, "{key} in {v}");
    }
    assert!(v.get("peak_gpu_mib").is_some(), "{v}");
    assert_eq!(
        num(v, "tokens_per_second"),
        num(v, "real_tokens_per_second")
    );
    assert!(num(v, "padded_tokens_per_second") >= num(v, "real_tokens_per_second"));
    assert!(num(v, "step_time_p50_s") <= num(v, "step_time_p90_s"));
    let mfu = num(v, "mfu");
    assert!(mfu > 0.0 && mfu <= 1.05, "mfu {mfu}");
    assert!(num(v, "hfu") >= mfu, "{v}");
    assert!(v["peak_probe"]["seconds"].as_f64().unwrap() >= 0.5, "{v}");
}

#[test]
fn a_bench_of_the_jobs_data_reports_sane_fields_and_writes_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    let out = tmp.path().join("bench-out");
    let v = json(
        bench(&job, &["--steps", "2", "--warmup", "1", "--json", "-o"])
            .arg(&out)
            .args(["--set", "train.gradient_checkpointing=true"]),
    );
    assert_sane(&v);
    assert_eq!(v["timed_steps"], 2);
    assert_eq!(v["losses"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["data"],
        common::fixtures().join("chats.jsonl").display().to_string()
    );
    // --set reaches the job: checkpointing recomputes the layers, so HFU exceeds MFU.
    assert_eq!(v["gradient_checkpointing"], true);
    assert!(num(&v, "hfu") > num(&v, "mfu"), "{v}");
    let written = common::read_json(&out.join("bench.json"));
    assert_eq!(written, v);
    // The last step again, phase by phase: each phase took time.
    for phase in ["forward_s", "backward_s", "update_s"] {
        assert!(num(&v["phases"], phase) > 0.0, "{phase} in {v}");
    }
    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    assert!(
        md.contains("MFU / HFU")
            && md.contains("lora-train bench --config")
            && md.contains("step phases (forward / backward / update)"),
        "{md}"
    );
}

#[test]
fn synthetic_rows_are_unpadded_and_counted_by_the_python_formula() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    let v = json(&mut bench(
        &job,
        &[
            "--synthetic",
            "--seq",
            "32",
            "--batch",
            "3",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--json",
            "--generate",
            "--new-tokens",
            "4",
        ],
    ));
    assert_sane(&v);
    assert_eq!(v["data"], "synthetic");
    assert_eq!(v["seq"], 32);
    assert_eq!(v["micro_batch_size"], 3);
    assert_eq!(num(&v, "tokens_per_step"), 3.0 * 32.0);
    // Every row is exactly --seq tokens: no padding.
    assert_eq!(
        num(&v, "padded_tokens_per_second"),
        num(&v, "real_tokens_per_second")
    );
    // bench_gpu_peft.py's flops_per_token for tiny-llama's config.json at seq 32:
    // 4·N_mm + 6·N_lora + 3·(2·L·T·q).
    let cfg = common::read_json(&common::fixtures().join("tiny-llama/config.json"));
    let c = |k: &str| cfg[k].as_f64().unwrap();
    let (h, i, layers, vocab) = (
        c("hidden_size"),
        c("intermediate_size"),
        c("num_hidden_layers"),
        c("vocab_size"),
    );
    let q = c("num_attention_heads") * c("head_dim");
    let kv = c("num_key_value_heads") * c("head_dim");
    let shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)];
    let n_mm = layers * shapes.iter().map(|(a, b)| a * b).sum::<f64>() + h * vocab;
    let n_lora = layers * shapes.iter().map(|(a, b)| 4.0 * (a + b)).sum::<f64>();
    assert_eq!(num(&v, "lora_parameters"), n_lora);
    let want = 4.0 * n_mm + 6.0 * n_lora + 3.0 * (2.0 * layers * 32.0 * q);
    assert!(
        (num(&v, "flops_per_token") - want).abs() < 1e-6 * want,
        "{v}"
    );
    // No checkpointing: nothing is recomputed.
    assert_eq!(num(&v, "hfu"), num(&v, "mfu"));
    let g = &v["generate"];
    assert_eq!(g["batch"], 3);
    assert_eq!(g["prompt_tokens"], 32);
    for key in [
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "time_to_first_token_s",
    ] {
        assert!(num(g, key) > 0.0, "{key} in {g}");
    }
}

#[test]
fn a_sweep_under_a_memory_limit_reports_the_longest_sequence_that_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    // The estimate at 16 tokens, plus 3 MiB: about 230 tokens' activations of this model
    // (13 KiB a token), so 16 and 64 tokens fit in batches of 1 and 2, and 512 does not.
    let small = json(&mut bench(
        &job,
        &[
            "--synthetic",
            "--seq",
            "16",
            "--batch",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--json",
        ],
    ));
    let limit = (num(&small, "estimated_peak_mib") as u64 + 3) << 20;
    let out = tmp.path().join("sweep");
    let v = json(
        bench(
            &job,
            &[
                "--synthetic",
                "--sweep",
                "seq=16,64,512",
                "--sweep",
                "batch=1,2",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                "-o",
            ],
        )
        .arg(&out)
        .env("LORA_TRAIN_MEMORY_LIMIT", limit.to_string()),
    );
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 6, "{v}");
    for p in points {
        let (seq, status) = (p["seq"].as_u64().unwrap(), p["status"].as_str().unwrap());
        if seq == 512 {
            assert_eq!(status, "skipped", "{p}");
            let reason = p["reason"].as_str().unwrap();
            assert!(reason.contains("needs about"), "{reason}");
        } else {
            assert_eq!(status, "measured", "{p}");
            assert_eq!(p["result"]["seq"].as_u64(), Some(seq));
            assert_eq!(p["result"]["micro_batch_size"], p["batch"]);
            assert!(num(&p["result"], "tokens_per_second") > 0.0);
        }
    }
    assert_eq!(
        v["largest_fitting_seq"],
        serde_json::json!([{"batch": 1, "seq": 64}, {"batch": 2, "seq": 64}])
    );
    assert_eq!(common::read_json(&out.join("bench.json")), v);
    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    assert!(md.contains("Longest sequence that fits"), "{md}");
    for plot in ["tokens_per_second.svg", "peak_memory.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("batch = 2"),
            "{plot}"
        );
        assert!(svg.contains("sequence length"), "{plot}");
    }
}

#[test]
fn bad_bench_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    let err = |args: &[&str]| {
        let out = bench(&job, args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["--synthetic", "--sweep", "len=1,2"]);
    assert!(e.contains("--sweep") && e.contains("seq or batch"), "{e}");
    let e = err(&["--sweep", "seq=16"]);
    assert!(e.contains("--synthetic"), "{e}");
    let e = err(&["--steps", "0"]);
    assert!(e.contains("--steps"), "{e}");
    let e = err(&["--set", "train.no_such_key=1"]);
    assert!(e.contains("train.no_such_key"), "{e}");
}

/// An executable shell script at `path`.
#[cfg(unix)]
fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A stand-in for Python in `dir`: it passes the import check, records its arguments in
/// `seen/args.txt` and the JSONL file it is given in `seen/input.jsonl`, and prints a twin's
/// JSON line (100 tokens/s, 50 MiB). Returns (the script, `seen`).
#[cfg(unix)]
fn fake_twin(dir: &Path) -> (PathBuf, PathBuf) {
    let seen = dir.join("seen");
    std::fs::create_dir(&seen).unwrap();
    let python = dir.join("python");
    write_script(
        &python,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then exit 0; fi\necho \"$@\" > {seen}/args.txt\n\
             for a in \"$@\"; do case \"$a\" in *.jsonl) cp \"$a\" {seen}/input.jsonl;; esac; done\n\
             echo '{{\"impl\": \"twin\", \"tokens_per_second\": 100.0, \"peak_rss_mib\": 50}}'\n",
            seen = seen.display()
        ),
    );
    (python, seen)
}

#[cfg(unix)]
#[test]
fn compare_peft_without_a_usable_python_says_how_to_get_one() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    let no_torch = tmp.path().join("python-without-torch");
    write_script(
        &no_torch,
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n",
    );
    let missing = tmp.path().join("no/such/python");
    for (python, says) in [
        (None, "PYTHON is not set".to_string()),
        (
            Some(missing.clone()),
            format!("PYTHON={} cannot be run", missing.display()),
        ),
        (Some(no_torch), "No module named 'torch'".to_string()),
    ] {
        let mut cmd = bench(&job, &["--compare", "peft", "--steps", "1"]);
        match &python {
            Some(p) => cmd.env("PYTHON", p),
            None => cmd.env_remove("PYTHON"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{python:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(&says), "{python:?}: {stderr}");
        assert!(
            stderr.contains("pip install torch transformers peft"),
            "{stderr}"
        );
    }
}

/// With a stand-in for Python that records what it is given and prints a twin's JSON line:
/// the twin gets the job's model, shape and the very token ids of the steps, and the ratio is
/// ours over its figure; a job the twins do not run alike is refused with the `--set` to fix.
#[cfg(unix)]
#[test]
fn compare_peft_hands_the_twin_the_same_batches_and_prints_the_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    let (python, seen) = fake_twin(tmp.path());
    let out = bench(
        &job,
        &["--compare", "peft", "--steps", "1", "--warmup", "0"],
    )
    .env("PYTHON", &python)
    .args(["--set", "model.dtype=bf16"])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--set lora.r=16 --set lora.alpha=32"),
        "{stderr}"
    );
    // An f32 HF folder has no twin.
    let out = bench(
        &job,
        &["--compare", "peft", "--steps", "1", "--warmup", "0"],
    )
    .env("PYTHON", &python)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("set model.dtype and model.source"),
        "{stderr}"
    );
    let v = json(
        bench(
            &job,
            &[
                "--compare",
                "peft",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--json",
            ],
        )
        .env("PYTHON", &python)
        .args(["--set", "lora.r=16", "--set", "lora.alpha=32"])
        .args(["--set", "model.dtype=bf16"]),
    );
    let peft = &v["peft"];
    assert_eq!(peft["script"], "scripts/bench_gpu_peft.py");
    assert_eq!(peft["peft_tokens_per_second"], 100.0);
    let ratio = num(&v, "tokens_per_second") / 100.0;
    assert!((num(peft, "tokens_per_second_ratio") - ratio).abs() < 1e-9 * ratio);
    let peak = num(&v, "peak_rss_mib") / 50.0;
    assert!((num(peft, "peak_memory_ratio") - peak).abs() < 1e-9 * peak);
    let args = std::fs::read_to_string(seen.join("args.txt")).unwrap();
    let model = common::fixtures().join("tiny-llama");
    for want in [
        format!("train --model {}", model.display()),
        "--warmup 1".into(),
        "--quantize none --device cpu".into(),
        "--steps 3 --batch-size 2 --seq-len 128".into(),
    ] {
        assert!(args.contains(&want), "{want:?} not in {args}");
    }
    // Three steps of two examples, each as the trainer tokenized it.
    let tokens = std::fs::read_to_string(seen.join("input.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = tokens
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let n = r["input_ids"].as_array().unwrap().len();
        assert!(n > 0 && n <= 128);
        assert_eq!(r["targets"].as_array().unwrap().len(), n);
    }
}

#[test]
fn gemma3_sliding_layers_count_the_keys_in_their_window() {
    let tmp = tempfile::tempdir().unwrap();
    let chats = common::fixtures().join("chats.jsonl");
    let job = write_job_of(tmp.path(), "tiny-gemma3", &chats, "");
    let v = json(&mut bench(
        &job,
        &[
            "--synthetic",
            "--seq",
            "32",
            "--batch",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--json",
        ],
    ));
    assert_sane(&v);
    let cfg = common::read_json(&common::fixtures().join("tiny-gemma3/config.json"));
    let c = |k: &str| cfg[k].as_f64().unwrap();
    let (h, i, vocab, window) = (
        c("hidden_size"),
        c("intermediate_size"),
        c("vocab_size"),
        c("sliding_window"),
    );
    let q = c("num_attention_heads") * c("head_dim");
    let kv = c("num_key_value_heads") * c("head_dim");
    let shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)];
    let layers: Vec<&str> = cfg["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(layers.contains(&"sliding_attention") && window < 32.0);
    let n_mm = layers.len() as f64 * shapes.iter().map(|(a, b)| a * b).sum::<f64>() + h * vocab;
    let t = 32.0;
    // Per token: a full layer's queries see t/2 keys, a sliding one's w²/2 + (t-w)·w over t;
    // QKᵀ and PV are 2·q FLOPs per key each.
    let attention: f64 = layers
        .iter()
        .map(|kind| match *kind {
            "sliding_attention" => 4.0 * q * (window * window / 2.0 + (t - window) * window) / t,
            _ => 4.0 * q * t / 2.0,
        })
        .sum();
    let want = 4.0 * n_mm + 6.0 * num(&v, "lora_parameters") + 3.0 * attention;
    assert!(
        (num(&v, "flops_per_token") - want).abs() < 1e-6 * want,
        "{v}"
    );
}

/// A twin the OS kills (as the out-of-memory killer does) is a clear error that says so.
#[cfg(unix)]
#[test]
fn a_twin_killed_by_a_signal_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let python = tmp.path().join("python");
    write_script(
        &python,
        "#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then exit 0; fi\necho loading >&2\nkill -9 $$\n",
    );
    let job = write_job_of(
        tmp.path(),
        "gguf/tiny-qwen2.gguf",
        &common::fixtures().join("chats.jsonl"),
        "",
    );
    let out = bench(
        &job,
        &["--compare", "peft", "--steps", "1", "--warmup", "0"],
    )
    .env("PYTHON", &python)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "bench_memory_peft.py printed no result (killed by signal 9, as the \
                         kernel's out-of-memory killer does): loading"
        ),
        "{stderr}"
    );
}

/// An f32 GGUF job's twin (`bench_memory_peft.py`) trains the job's own adapter: its rank,
/// alpha, dropout, targets and checkpointing are passed, not refused.
#[cfg(unix)]
#[test]
fn compare_peft_on_a_gguf_job_passes_the_jobs_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (python, seen) = fake_twin(tmp.path());
    let job = write_job_of(
        tmp.path(),
        "gguf/tiny-qwen2.gguf",
        &common::fixtures().join("chats.jsonl"),
        "gradient_checkpointing = true",
    );
    let v = json(
        bench(
            &job,
            &[
                "--compare",
                "peft",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
            ],
        )
        .env("PYTHON", &python)
        .args(["--set", "lora.target_modules=[\"q_proj\", \"v_proj\"]"])
        .args(["--set", "lora.dropout=0.05"]),
    );
    assert_eq!(v["peft"]["script"], "scripts/bench_memory_peft.py");
    let args = std::fs::read_to_string(seen.join("args.txt")).unwrap();
    let want = "--r 4 --alpha 8 --dropout 0.05 --targets q_proj,v_proj --checkpointing --tokens";
    assert!(args.contains(want), "{want:?} not in {args}");
    assert!(
        args.contains("--steps 1 --batch-size 2 --seq-len 128"),
        "{args}"
    );
}

/// A DPO job's twin is TRL's `DPOTrainer` (`bench_dpo_trl.py`): it gets the job's adapter and
/// loss and every training pair as tokenized here, the bench's steps' pairs first and in their
/// order (their tokens are the bench's own count). With `dpo.precompute_reference` the
/// reference is computed before the timed steps and timed apart, and the twin is told to
/// precompute too; length normalization is TRL's `sigmoid_norm`; what the twin cannot run alike
/// is refused.
#[cfg(unix)]
#[test]
fn a_dpo_job_compares_with_trl_on_the_same_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let (python, seen) = fake_twin(tmp.path());
    let data = common::fixtures().join("dpo/pairs.jsonl");
    let job = write_job_of(
        tmp.path(),
        "gguf/tiny-qwen2.gguf",
        &data,
        "method = \"dpo\"\n[dpo]\nbeta = 0.2",
    );
    let run = |extra: &[&str]| {
        let mut cmd = bench(
            &job,
            &["--compare", "peft", "--steps", "2", "--warmup", "1"],
        );
        cmd.env("PYTHON", &python).args(extra);
        cmd
    };
    for precompute in [false, true] {
        let set = format!("dpo.precompute_reference={precompute}");
        let v = json(&mut run(&["--json", "--set", &set]));
        assert_sane(&v);
        let want = if precompute { "precomputed" } else { "live" };
        assert_eq!(v["dpo_reference"], want, "{v}");
        assert_eq!(v.get("reference_precompute_s").is_some(), precompute, "{v}");
        if precompute {
            assert!(num(&v, "reference_precompute_s") > 0.0, "{v}");
        }
        assert_eq!(v["peft"]["script"], "scripts/bench_dpo_trl.py");
        let args = std::fs::read_to_string(seen.join("args.txt")).unwrap();
        for want in [
            "--steps 3 --warmup 1 --batch-size 2 --r 4 --alpha 8",
            "--targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
            "--beta 0.2 --loss sigmoid --label-smoothing 0 --sft-weight 0",
        ] {
            assert!(args.contains(want), "{want:?} not in {args}");
        }
        assert_eq!(
            args.contains("--precompute-reference"),
            precompute,
            "{args}"
        );
        // Every pair once; the two timed steps' pairs (lines 3 to 6) hold the bench's tokens.
        let lines = std::fs::read_to_string(seen.join("input.jsonl")).unwrap();
        let rows: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let distinct: std::collections::HashSet<&str> = lines.lines().collect();
        assert_eq!(rows.len(), 40);
        assert_eq!(distinct.len(), 40);
        let len = |r: &serde_json::Value, k: &str| r[k].as_array().unwrap().len();
        let timed: usize = rows[2..6]
            .iter()
            .map(|r| 2 * len(r, "prompt_ids") + len(r, "chosen_ids") + len(r, "rejected_ids"))
            .sum();
        assert_eq!(timed as f64, 2.0 * num(&v, "tokens_per_step"), "{v}");
    }
    let v = json(&mut run(&[
        "--json",
        "--set",
        "dpo.normalize_by_length=true",
    ]));
    let args = std::fs::read_to_string(seen.join("args.txt")).unwrap();
    assert!(args.contains("--loss sigmoid_norm"), "{args}");
    assert_eq!(v["dpo_reference"], "live");
    let out = run(&["--set", "train.grad_accum=2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--set train.grad_accum=1"), "{stderr}");
}

#[test]
fn a_dpo_job_benches_its_pairs_and_refuses_synthetic_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = common::fixtures().join("dpo/pairs.jsonl");
    let job = write_job_of(tmp.path(), "tiny-llama", &pairs, "method = \"dpo\"");
    let v = json(&mut bench(
        &job,
        &["--steps", "1", "--warmup", "0", "--json"],
    ));
    assert_sane(&v);
    assert!(num(&v, "tokens_per_step") > 0.0);
    // The phase split is for SFT steps only.
    assert!(v.get("phases").is_none(), "{v}");
    let out = bench(&job, &["--synthetic", "--seq", "16", "--steps", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("DPO"), "{stderr}");
}

/// The child processes of `parent` whose command line holds every one of `words`.
#[cfg(target_os = "linux")]
fn children_with(parent: u32, words: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = args
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let has = |w: &str| args.iter().any(|a| a == w);
        if ppid == Some(parent) && words.iter().all(|w| has(w)) {
            found.push(pid);
        }
    }
    found
}

/// A point whose process the kernel kills (SIGKILL, as the out-of-memory killer does) is
/// recorded as such, and the sweep goes on to the next point.
#[test]
#[cfg(target_os = "linux")]
fn a_point_killed_by_the_os_is_recorded_and_the_sweep_goes_on() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(tmp.path());
    let sweep = std::process::Command::new(assert_cmd::cargo::cargo_bin("lora-train"))
        .arg("bench")
        .arg("--config")
        .arg(&job)
        .args(["--synthetic", "--sweep", "seq=16,32,48", "--steps", "500"])
        .args(["--warmup", "0", "--json"])
        .env("LORA_TRAIN_HOME", common::cli::shared_home())
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill the seq=32 point's process once it runs, as the OOM killer would.
    let start = Instant::now();
    let victim = loop {
        if let Some(pid) = children_with(sweep.id(), &["--point", "32"]).first() {
            break *pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the seq=32 point never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let out = sweep.wait_with_output().unwrap();
    assert!(out.status.success(), "the sweep itself ends normally");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<(u64, &str)> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["seq"].as_u64().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (16, "measured"),
            (32, "out of memory (killed)"),
            (48, "measured")
        ],
        "{v}"
    );
}
