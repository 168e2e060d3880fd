//! DPO against TRL (fixtures from scripts/make_dpo_fixtures.py, TRL 1.16 `DPOTrainer`): the
//! pairs tokenize to TRL's ids; from the same init adapter and the same batches our steps give
//! TRL's losses and gradient norms within 1e-4 relative and its logged rewards and log-probs
//! (sigmoid and ipo for 10 steps on both tiny models, with the base as reference, with the
//! reference precomputed, and with the init adapter as reference; hinge, robust, RPO and the
//! length-normalized sigmoid for 3 steps); the init adapter's reference is that adapter, never
//! the base; and whole DPO runs log TRL's metrics, cache the precomputed reference, and train
//! with checkpointing and 4-bit weights.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lora_train::config::job::{DpoLoss, SchedulerKind};
use lora_train::data::batch::collate_pairs;
use lora_train::data::pairs::{read_pairs, tokenize_pair};
use lora_train::data::{TokenizedExample, TokenizedPair};
use lora_train::lora::LoraParams;
use lora_train::model::{load, LoadOptions, LoadedModel};
use lora_train::train::dpo::{
    all_reference_logps, dpo_step, pair_micro_batch_grads, reference_logps, DpoObjective, PairLogps,
};
use lora_train::train::metrics::{MetricsLine, PreferenceMetrics};
use lora_train::train::optimizer::{AdamW, AdamWConfig};
use lora_train::train::schedule::Schedule;
use lora_train::train::{RunLog, RunOptions, Trainer};
use serde_json::Value;

fn dir() -> PathBuf {
    common::fixtures().join("dpo")
}

fn tiny(name: &str) -> LoadedModel {
    load(
        common::fixtures().join(name).to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// TRL's tokenized pairs: prompt + reply, the reply the targets.
fn trl_pairs(name: &str) -> Vec<TokenizedPair> {
    let tokens = common::read_json(&dir().join(name).join("tokens.json"));
    tokens["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let prompt = ids(&p["prompt_ids"]);
            let seq = |key: &str| {
                let reply = ids(&p[key]);
                let mut input_ids = prompt.clone();
                input_ids.extend(&reply);
                TokenizedExample {
                    targets: (0..input_ids.len()).map(|i| i >= prompt.len()).collect(),
                    input_ids,
                }
            };
            TokenizedPair {
                chosen: seq("chosen_ids"),
                rejected: seq("rejected_ids"),
            }
        })
        .collect()
}

#[test]
fn pairs_tokenize_as_trl_tokenizes_them() {
    let (format, pairs) = read_pairs(&dir().join("pairs.jsonl")).unwrap();
    assert_eq!(format.name(), "dpo-trl");
    for name in ["tiny-llama", "tiny-gemma3"] {
        let m = tiny(name);
        let want = trl_pairs(name);
        assert_eq!(pairs.len(), want.len());
        for ((line, pair), want) in pairs.iter().zip(&want) {
            let got = tokenize_pair(pair, &m.template, &m.tokenizer).unwrap();
            assert_eq!(&got, want, "{name} line {line}");
        }
    }
}

/// The model with the fixture's init adapter attached (frozen as the reference when
/// `init_reference`), and its parameters.
fn with_init_adapter(name: &str, init_reference: bool) -> (LoadedModel, LoraParams) {
    let mut m = tiny(name);
    let init = common::fixtures()
        .join("peft-train")
        .join(name)
        .join("init_adapter");
    let mut params = LoraParams::from_peft(m.model.as_mut(), &init, 0.0, &Device::Cpu).unwrap();
    if init_reference {
        params.freeze_reference().unwrap();
    }
    params.attach(m.model.as_mut(), DType::F32).unwrap();
    (m, params)
}

fn objective(run: &Value) -> DpoObjective {
    let dpo = &run["dpo"];
    let types: Vec<&str> = dpo["loss_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let (loss, normalize_by_length) = match types[0] {
        "sigmoid" => (DpoLoss::Sigmoid, false),
        "sigmoid_norm" => (DpoLoss::Sigmoid, true),
        "ipo" => (DpoLoss::Ipo, false),
        "hinge" => (DpoLoss::Hinge, false),
        "robust" => (DpoLoss::Robust, false),
        other => panic!("loss type {other}"),
    };
    let sft_weight = match types.get(1) {
        Some(&"sft") => dpo["loss_weights"][1].as_f64().unwrap(),
        _ => 0.0,
    };
    DpoObjective {
        beta: dpo["beta"].as_f64().unwrap(),
        loss,
        label_smoothing: dpo["label_smoothing"].as_f64().unwrap(),
        sft_weight,
        normalize_by_length,
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// TRL's metrics, by name, against ours. Rewards are β-scaled differences of summed f32
/// log-probabilities, so they get an absolute bound of 1e-4 (a thousandth of β); log-probs,
/// in the hundreds, 1e-5 relative; the accuracy is exact.
fn check_metrics(what: &str, ours: &PreferenceMetrics, theirs: &Value) {
    let pairs = [
        ("rewards/chosen", ours.rewards_chosen, 1e-4),
        ("rewards/rejected", ours.rewards_rejected, 1e-4),
        ("rewards/margins", ours.rewards_margins, 1e-4),
        ("rewards/accuracies", ours.rewards_accuracies, 0.0),
    ];
    for (key, got, tol) in pairs {
        let want = theirs[key].as_f64().unwrap();
        assert!(
            (got - want).abs() <= tol,
            "{what} {key}: {got} vs TRL {want}"
        );
    }
    for (key, got) in [
        ("logps/chosen", ours.logps_chosen),
        ("logps/rejected", ours.logps_rejected),
    ] {
        let want = theirs[key].as_f64().unwrap();
        assert!(rel(got, want) < 1e-5, "{what} {key}: {got} vs TRL {want}");
    }
}

/// Per-pair (chosen, rejected) values of a micro-batch record's `key` (chosen first).
fn record_pairs(mb: &Value, key: &str) -> Vec<PairLogps> {
    let v: Vec<f64> = mb[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let n = v.len() / 2;
    (0..n).map(|i| (v[i], v[n + i])).collect()
}

/// Runs a fixture's steps with our DPO step (the reference through the switch, or
/// precomputed once with `precompute`) and checks every step against TRL's.
fn check_run(name: &str, run_name: &str, precompute: bool) {
    let run = common::read_json(&dir().join(name).join(format!("{run_name}.json")));
    let init_reference = run["dpo"]["reference"] == "init_adapter";
    let (m, params) = with_init_adapter(name, init_reference);
    let obj = objective(&run);
    let hp = &run["hyperparameters"];
    let betas = hp["betas"].as_array().unwrap();
    let mut opt = AdamW::new(
        params.vars().into_iter().cloned().collect(),
        AdamWConfig {
            beta1: betas[0].as_f64().unwrap(),
            beta2: betas[1].as_f64().unwrap(),
            eps: hp["eps"].as_f64().unwrap(),
            weight_decay: hp["weight_decay"].as_f64().unwrap(),
        },
    )
    .unwrap();
    let steps = run["steps"].as_array().unwrap();
    let sched = Schedule {
        kind: SchedulerKind::Linear,
        lr: hp["lr"].as_f64().unwrap(),
        warmup_steps: hp["warmup_steps"].as_u64().unwrap() as usize,
        total_steps: steps.len(),
        min_lr_ratio: 0.0,
    };
    let pairs = trl_pairs(name);
    let pad = common::read_json(&dir().join(name).join("tokens.json"))["pad_token_id"]
        .as_u64()
        .unwrap() as u32;
    let precomputed = precompute.then(|| {
        all_reference_logps(
            m.model.as_ref(),
            &params,
            &pairs,
            2,
            pad,
            &AtomicBool::new(false),
        )
        .unwrap()
    });
    let what = |s: usize| {
        format!(
            "{name} {run_name} (precomputed {precompute}) step {}",
            s + 1
        )
    };
    for (s, want) in steps.iter().enumerate() {
        let records = want["micro_batches"].as_array().unwrap();
        let mut batches = Vec::new();
        let mut references = Vec::new();
        for mb in records {
            let idx: Vec<usize> = mb["pairs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as usize)
                .collect();
            let chosen: Vec<&TokenizedPair> = idx.iter().map(|i| &pairs[*i]).collect();
            let pb = collate_pairs(&chosen, pad, &Device::Cpu).unwrap();
            if s == 0 {
                // Before any update: the policy and the reference as TRL computed them.
                let theirs = record_pairs(mb, "reference_logps");
                let ours = reference_logps(m.model.as_ref(), &params, &pb).unwrap();
                for (o, t) in ours.iter().zip(&theirs) {
                    assert!(
                        rel(o.0, t.0) < 1e-5 && rel(o.1, t.1) < 1e-5,
                        "{}: reference logps {o:?} vs TRL {t:?}",
                        what(s)
                    );
                }
            }
            if let Some(all) = &precomputed {
                references.push(idx.iter().map(|i| all[*i]).collect::<Vec<_>>());
            }
            batches.push(pb);
        }
        let lr = sched.lr_at(s);
        assert!(
            (lr - want["lr"].as_f64().unwrap()).abs() < 1e-12,
            "{}: lr",
            what(s)
        );
        let refs = precomputed.as_ref().map(|_| references.as_slice());
        let out = dpo_step(
            m.model.as_ref(),
            &params,
            &mut opt,
            &obj,
            &batches,
            refs,
            lr,
            hp["max_grad_norm"].as_f64().unwrap(),
        )
        .unwrap();
        let wl = want["loss"].as_f64().unwrap();
        assert!(
            rel(out.loss, wl) < 1e-4,
            "{}: loss {} vs TRL {wl} (rel {:.1e})",
            what(s),
            out.loss,
            rel(out.loss, wl)
        );
        let wg = want["grad_norm"].as_f64().unwrap();
        assert!(
            rel(out.grad_norm, wg) < 1e-4,
            "{}: grad norm {} vs TRL {wg}",
            what(s),
            out.grad_norm
        );
        check_metrics(&what(s), &out.preference.unwrap(), &want["metrics"]);
    }
}

#[test]
fn sigmoid_against_the_base_matches_trl() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        check_run(name, "sigmoid_base", false);
    }
}

#[test]
fn sigmoid_with_a_precomputed_reference_matches_trl() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        check_run(name, "sigmoid_base", true);
    }
}

#[test]
fn ipo_matches_trl() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        check_run(name, "ipo_base", false);
    }
    check_run("tiny-llama", "ipo_base", true);
}

#[test]
fn sigmoid_against_the_init_adapter_matches_trl() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        check_run(name, "sigmoid_init", false);
    }
}

#[test]
fn hinge_robust_rpo_and_the_normalized_sigmoid_match_trl() {
    for run in ["hinge_base", "robust_base", "rpo_base", "sigmoid_norm_base"] {
        check_run("tiny-llama", run, false);
    }
}

/// With an init adapter as the reference, the reference log-probs are that adapter's (TRL's
/// frozen "ref" copy), not the base model's: the test fails if "adapter off" is used.
#[test]
fn the_init_adapters_reference_is_that_adapter_not_the_base() {
    for name in ["tiny-llama", "tiny-gemma3"] {
        let init = common::read_json(&dir().join(name).join("sigmoid_init.json"));
        let base = common::read_json(&dir().join(name).join("sigmoid_base.json"));
        let (m, params) = with_init_adapter(name, true);
        let pairs = trl_pairs(name);
        let pad = 2;
        let mb = &init["steps"][0]["micro_batches"][0];
        let idx: Vec<&TokenizedPair> = mb["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &pairs[i.as_u64().unwrap() as usize])
            .collect();
        let pb = collate_pairs(&idx, pad, &Device::Cpu).unwrap();
        let ours = reference_logps(m.model.as_ref(), &params, &pb).unwrap();
        let adapter = record_pairs(mb, "reference_logps");
        let base_model = record_pairs(&base["steps"][0]["micro_batches"][0], "reference_logps");
        for ((o, a), b) in ours.iter().zip(&adapter).zip(&base_model) {
            assert!(
                rel(o.0, a.0) < 1e-5 && rel(o.1, a.1) < 1e-5,
                "{name}: {o:?} vs {a:?}"
            );
            // The base model's differ by far more than the tolerance.
            assert!(
                rel(a.0, b.0) > 1e-3,
                "{name}: the fixture cannot tell them apart"
            );
        }
        // And at the start the policy is its reference: every log-ratio is exactly 0.
        let obj = objective(&init);
        let out = pair_micro_batch_grads(m.model.as_ref(), &params, &obj, &pb, None, 1).unwrap();
        assert_eq!(out.loss, std::f64::consts::LN_2, "{name}");
        assert_eq!(out.metrics.rewards_margins, 0.0, "{name}");
    }
}

fn dpo_job(model: &str, out: &Path, overrides: &[&str]) -> lora_train::config::JobConfig {
    let mut all = vec![
        "train.method=dpo".to_string(),
        format!("data.train={}", dir().join("pairs.jsonl").display()),
        "data.max_seq_len=256".to_string(),
    ];
    all.extend(overrides.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    common::tiny_job(model, out, &all)
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// The DPO twin of `train::every_lora_parameter_gets_a_gradient`.
#[test]
fn every_lora_parameter_gets_a_dpo_gradient() {
    for model in ["tiny-llama", "tiny-gemma3"] {
        let tmp = tempfile::tempdir().unwrap();
        let t = Trainer::new(dpo_job(model, tmp.path(), &[])).unwrap();
        for p in &t.params().params {
            let r = Tensor::randn(0f32, 0.1, p.b.dims(), &Device::Cpu).unwrap();
            p.b.set(&r).unwrap();
        }
        let (batches, _) = t.step_pair_batches(0).unwrap();
        let obj = DpoObjective::from(&t.job().dpo());
        let out = pair_micro_batch_grads(
            t.model().model.as_ref(),
            t.params(),
            &obj,
            &batches[0],
            None,
            1,
        )
        .unwrap();
        for (i, g) in out.grads.iter().enumerate() {
            let g = g
                .as_ref()
                .unwrap_or_else(|| panic!("{model}: LoRA tensor {i} got no gradient"));
            assert!(
                common::max_abs(g) > 0.0,
                "{model}: LoRA tensor {i} gradient is zero"
            );
        }
    }
}

fn metrics(out: &Path) -> Vec<MetricsLine> {
    RunLog::new(out).metrics().unwrap()
}

#[test]
fn a_dpo_run_logs_trls_metrics_and_reuses_its_precomputed_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let job = dpo_job(
        "tiny-llama",
        out,
        &[
            "train.max_steps=2",
            "dpo.precompute_reference=true",
            "train.eval_every=1",
        ],
    );
    let mut t = Trainer::new(job).unwrap();
    assert_eq!(t.units(), (30, 10));
    let summary = t.run(&RunOptions::default(), no_stop()).unwrap();
    assert_eq!((summary.steps, summary.train_examples), (2, 30));
    assert!(summary.adapter_dir.is_some());
    let lines = metrics(out);
    let steps: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 2);
    for s in &steps {
        let p = s.preference.expect("a DPO step logs rewards");
        assert!(p.logps_chosen < 0.0 && p.logps_rejected < 0.0);
        assert_eq!(s.conversations, 4, "pairs per step");
    }
    // Step 1: a fresh adapter is the base, its reference: log 2 and no margin.
    assert!((steps[0].loss - std::f64::consts::LN_2).abs() < 1e-6);
    let evals: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Eval(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(evals.len() >= 2 && evals.iter().all(|e| e.preference.is_some()));
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(text.contains(&format!("\"{key}\"")), "{key} not logged");
    }
    let cache = out.join("reference-logps.json");
    let cached = std::fs::read(&cache).unwrap();
    // Again with another beta over the same folder: every value comes from the cache (which
    // --overwrite leaves), and a cache that changed would show in its bytes.
    let job = dpo_job(
        "tiny-llama",
        out,
        &[
            "train.max_steps=1",
            "dpo.precompute_reference=true",
            "dpo.beta=0.5",
        ],
    );
    let mut t = Trainer::new(job).unwrap();
    let opts = RunOptions {
        overwrite: true,
        ..RunOptions::default()
    };
    t.run(&opts, no_stop()).unwrap();
    assert_eq!(std::fs::read(&cache).unwrap(), cached);
}

/// Gradient checkpointing gives the plain DPO step's loss and gradient norm; 4-bit weights
/// train too.
#[test]
fn dpo_trains_with_checkpointing_and_4_bit_weights() {
    let step = |overrides: &[&str]| {
        let tmp = tempfile::tempdir().unwrap();
        let mut all = vec!["train.max_steps=2", "lora.init_adapter=INIT"];
        all.extend(overrides);
        let init = common::fixtures().join("peft-train/tiny-llama/init_adapter");
        let init = format!("lora.init_adapter={}", init.display());
        let all: Vec<&str> = all
            .iter()
            .map(|s| {
                if s.starts_with("lora.init_adapter") {
                    init.as_str()
                } else {
                    s
                }
            })
            .collect();
        let mut t = Trainer::new(dpo_job("tiny-llama", tmp.path(), &all)).unwrap();
        t.run(&RunOptions::default(), no_stop()).unwrap();
        metrics(tmp.path())
            .into_iter()
            .filter_map(|l| match l {
                MetricsLine::Step(s) => Some((s.loss, s.grad_norm)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let plain = step(&[]);
    let checkpointed = step(&["train.gradient_checkpointing=true"]);
    for (p, c) in plain.iter().zip(&checkpointed) {
        assert!(
            rel(c.0, p.0) < 1e-5 && rel(c.1, p.1) < 1e-5,
            "{c:?} vs {p:?}"
        );
    }
    // From the init adapter, measured against itself: step 1 is log 2.
    assert!((plain[0].0 - std::f64::consts::LN_2).abs() < 1e-9);
    let nf4 = step(&["model.quantize=nf4", "train.gradient_checkpointing=true"]);
    assert!(nf4.iter().all(|(l, g)| l.is_finite() && g.is_finite()));
    assert!((nf4[0].0 - std::f64::consts::LN_2).abs() < 1e-9);
}

/// A DPO run stopped after two steps and resumed ends where an uninterrupted run ends: the
/// same losses and the same adapter bytes, with the reference computed live and precomputed.
#[test]
fn a_stopped_dpo_run_resumes_exactly() {
    for precompute in ["false", "true"] {
        let tmp = tempfile::tempdir().unwrap();
        let (cut, whole) = (tmp.path().join("cut"), tmp.path().join("whole"));
        let set = [
            "train.max_steps=4".to_string(),
            "train.save_every=1".to_string(),
            format!("dpo.precompute_reference={precompute}"),
        ];
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        let stopped = Trainer::new(dpo_job("tiny-llama", &cut, &set))
            .unwrap()
            .run(
                &RunOptions {
                    stop_after: Some(2),
                    ..RunOptions::default()
                },
                no_stop(),
            )
            .unwrap();
        assert!(stopped.interrupted && stopped.steps == 2, "{precompute}");
        let resume = RunOptions {
            resume: true,
            ..RunOptions::default()
        };
        let mut t = Trainer::new(dpo_job("tiny-llama", &cut, &set)).unwrap();
        t.check_resume(&resume).unwrap();
        let resumed = t.run(&resume, no_stop()).unwrap();
        assert_eq!(resumed.steps, 4);
        Trainer::new(dpo_job("tiny-llama", &whole, &set))
            .unwrap()
            .run(&RunOptions::default(), no_stop())
            .unwrap();
        assert_eq!(
            common::logged_losses(&cut),
            common::logged_losses(&whole),
            "precompute_reference={precompute}: the resumed curve differs"
        );
        let adapter =
            |out: &Path| std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap();
        assert!(
            adapter(&cut) == adapter(&whole),
            "precompute_reference={precompute}: the adapters differ"
        );
    }
}
