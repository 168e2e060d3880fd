//! The LoRA trainer on the tiny models: every LoRA parameter gets a gradient, gradient
//! accumulation normalises by the step's target tokens, resume reproduces the uninterrupted
//! run exactly, a stop during a validation or the report is honoured, a NaN stops
//! the run with the last checkpoint intact, and exported adapters load back with the same
//! loss; a run records its resolved job in `job.toml`.

use crate::common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lora_train::config::JobConfig;
use lora_train::data::batch::collate;
use lora_train::train::loss::micro_batch_nll_sum;
use lora_train::train::RunLog;
use lora_train::train::{RunOptions, Trainer};

fn job(model: &str, out: &Path) -> JobConfig {
    common::tiny_job(model, out, &[])
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[test]
fn every_lora_parameter_gets_a_gradient() {
    for model in [
        "tiny-llama",
        "tiny-gemma3",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-mistral",
        "tiny-gemma2",
        "tiny-gemma3-mm",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let t = Trainer::new(job(model, tmp.path())).unwrap();
        // B starts at zero, which zeroes A's gradient: give B values first.
        for p in &t.params().params {
            let r = Tensor::randn(0f32, 0.1, p.b.dims(), &Device::Cpu).unwrap();
            p.b.set(&r).unwrap();
        }
        let batches = t.step_micro_batches(0).unwrap();
        let loss = micro_batch_nll_sum(t.model().model.as_ref(), &batches[0]).unwrap();
        let grads = loss.backward().unwrap();
        for p in &t.params().params {
            for (name, var) in [("A", &p.a), ("B", &p.b)] {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{model}: {} lora_{name} got no gradient", p.module));
                let n = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    n > 0.0,
                    "{model}: {} lora_{name} gradient is zero",
                    p.module
                );
            }
        }
    }
}

#[test]
fn grad_accum_normalises_by_step_targets() {
    // Two micro-batches of one example must give the same loss and gradients as one
    // micro-batch of both (loss = sum of token NLLs / all target tokens of the step).
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::new(job("tiny-llama", tmp.path())).unwrap();
    let (a, b) = (&t.train()[0], &t.train()[1]);
    assert_ne!(
        a.num_targets(),
        b.num_targets(),
        "pick examples of different lengths"
    );
    let m = t.model().model.as_ref();
    let pad = 2;
    let both = collate(&[a, b], pad, &Device::Cpu).unwrap();
    let n = (a.num_targets() + b.num_targets()) as f64;
    let joint = (micro_batch_nll_sum(m, &both).unwrap() / n).unwrap();
    let sa = micro_batch_nll_sum(m, &collate(&[a], pad, &Device::Cpu).unwrap()).unwrap();
    let sb = micro_batch_nll_sum(m, &collate(&[b], pad, &Device::Cpu).unwrap()).unwrap();
    let split = ((sa / n).unwrap() + (sb / n).unwrap()).unwrap();
    let (j, s) = (
        joint.to_scalar::<f32>().unwrap(),
        split.to_scalar::<f32>().unwrap(),
    );
    assert!((j - s).abs() / j < 1e-5, "joint {j} vs accumulated {s}");
    let gj = joint.backward().unwrap();
    let gs = split.backward().unwrap();
    let v = t.params().params[0].b.as_tensor();
    let d = common::max_abs_diff(gj.get(v).unwrap(), gs.get(v).unwrap());
    assert!(d < 1e-5, "gradients differ by {d}");
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    for model in ["tiny-llama", "tiny-gemma3"] {
        let full = tempfile::tempdir().unwrap();
        let mut t = Trainer::new(job(model, full.path())).unwrap();
        let s = t.run(&RunOptions::default(), no_stop()).unwrap();
        assert_eq!(s.steps, 8);
        let want = common::logged_losses(full.path());

        let part = tempfile::tempdir().unwrap();
        let mut t = Trainer::new(job(model, part.path())).unwrap();
        let s = t
            .run(
                &RunOptions {
                    stop_after: Some(3),
                    ..Default::default()
                },
                no_stop(),
            )
            .unwrap();
        assert!(s.interrupted && s.steps == 3);
        assert!(
            !part.path().join("adapter").exists(),
            "no final adapter after a stop"
        );
        let mut t = Trainer::new(job(model, part.path())).unwrap();
        t.run(
            &RunOptions {
                resume: true,
                ..Default::default()
            },
            no_stop(),
        )
        .unwrap();
        let got = common::logged_losses(part.path());
        assert_eq!(got, want, "{model}: resumed curve differs");
        // The final adapters are identical too.
        let a = std::fs::read(full.path().join("adapter/adapter_model.safetensors")).unwrap();
        let b = std::fs::read(part.path().join("adapter/adapter_model.safetensors")).unwrap();
        assert!(a == b, "{model}: final adapters differ");
    }
}

#[test]
fn dropout_runs_resume_exactly_too() {
    let full = tempfile::tempdir().unwrap();
    let mut j = job("tiny-llama", full.path());
    j.lora.dropout = 0.1;
    Trainer::new(j.clone())
        .unwrap()
        .run(&RunOptions::default(), no_stop())
        .unwrap();
    let part = tempfile::tempdir().unwrap();
    let mut jp = j.clone();
    jp.output.dir = part.path().to_path_buf();
    let stop3 = RunOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    Trainer::new(jp.clone())
        .unwrap()
        .run(&stop3, no_stop())
        .unwrap();
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    Trainer::new(jp).unwrap().run(&resume, no_stop()).unwrap();
    assert_eq!(
        common::logged_losses(part.path()),
        common::logged_losses(full.path())
    );
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut j = job("tiny-llama", tmp.path());
    j.train.lr = 1e30;
    j.train.max_grad_norm = 0.0;
    j.train.save_every = 1;
    j.train.scheduler = lora_train::config::job::SchedulerKind::Constant;
    let mut t = Trainer::new(j).unwrap();
    let err = t
        .run(&RunOptions::default(), no_stop())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite") && err.contains("last good checkpoint"),
        "{err}"
    );
    let ckpts = lora_train::train::checkpoint::list_checkpoints(tmp.path()).unwrap();
    let (_, last) = ckpts.last().expect("a checkpoint before the NaN");
    // The kept checkpoint is complete and loadable.
    let st = candle_core::safetensors::load(last.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(!st.is_empty());
    lora_train::train::checkpoint::read_state(last).unwrap();
}

#[test]
fn exported_adapter_scores_like_the_trained_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(job("tiny-gemma3", tmp.path())).unwrap();
    let s = t.run(&RunOptions::default(), no_stop()).unwrap();
    let val_after = s.val_loss_after.unwrap();
    // Load the base fresh, apply the exported adapter, score the same validation examples.
    let dir = common::fixtures().join("tiny-gemma3");
    let mut m = lora_train::model::load(dir.to_str().unwrap(), &Default::default()).unwrap();
    let adapter = tmp.path().join("adapter");
    lora_train::lora::load_peft_adapter(m.model.as_mut(), &adapter, DType::F32, &Device::Cpu)
        .unwrap();
    let r = lora_train::eval::score_examples(m.model.as_ref(), t.validation(), 4, false).unwrap();
    assert!(
        (r.mean_loss - val_after).abs() / val_after < 1e-6,
        "{} vs {val_after}",
        r.mean_loss
    );
    // PEFT names and shapes.
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert!(cfg["modules_to_save"].is_null());
    let st =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let a = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!(a.dims(), &[4, 64]);
    assert_eq!(b.dims(), &[64, 4]);
}

#[test]
fn a_run_records_its_resolved_job_and_resume_rewrites_it() {
    let tmp = tempfile::tempdir().unwrap();
    let j = common::tiny_job("tiny-llama", tmp.path(), &["train.max_steps=2"]);
    let stop1 = RunOptions {
        stop_after: Some(1),
        ..Default::default()
    };
    Trainer::new(j.clone())
        .unwrap()
        .run(&stop1, no_stop())
        .unwrap();
    // Relative paths (fixtures outside the source tree) are made absolute against the cwd.
    let cwd = std::env::current_dir().unwrap();
    let resolved = |job: &JobConfig| {
        let mut job = job.clone();
        job.data.train = cwd.join(&job.data.train);
        job.output.dir = cwd.join(&job.output.dir);
        job.model.source = cwd.join(&job.model.source).to_string_lossy().into_owned();
        job.to_toml_string().unwrap()
    };
    let written = tmp.path().join("job.toml");
    let read = JobConfig::load(&written, &[]).unwrap();
    assert_eq!(read.to_toml_string().unwrap(), resolved(&j));
    assert!(read.data.train.is_absolute() && read.output.dir.is_absolute());
    assert_eq!(read.train.keep_last, 2, "defaults are written out");

    // A resume may change what does not change the trajectory; job.toml follows.
    let mut changed = j.clone();
    changed.train.eval_every = 1;
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    Trainer::new(changed.clone())
        .unwrap()
        .run(&resume, no_stop())
        .unwrap();
    let read = JobConfig::load(&written, &[]).unwrap();
    assert_eq!(read.train.eval_every, 1);
    assert_eq!(read.to_toml_string().unwrap(), resolved(&changed));
}

#[test]
fn a_stop_during_validation_is_honoured_and_the_resume_redoes_it() {
    let stopped = || Arc::new(AtomicBool::new(true));
    // Before the first step: the validation at step 0 stops, and nothing is saved.
    let early = tempfile::tempdir().unwrap();
    let s = Trainer::new(job("tiny-llama", early.path()))
        .unwrap()
        .run(&RunOptions::default(), stopped())
        .unwrap();
    assert!(s.interrupted && s.steps == 0 && s.val_loss_before.is_none());
    assert!(
        lora_train::train::checkpoint::list_checkpoints(early.path())
            .unwrap()
            .is_empty()
    );

    let full = tempfile::tempdir().unwrap();
    Trainer::new(job("tiny-llama", full.path()))
        .unwrap()
        .run(&RunOptions::default(), no_stop())
        .unwrap();
    let part = tempfile::tempdir().unwrap();
    let stop3 = RunOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    Trainer::new(job("tiny-llama", part.path()))
        .unwrap()
        .run(&stop3, no_stop())
        .unwrap();
    // A stop pending on resume: step 4 runs, its validation (eval_every = 4) is cut short,
    // and step 4 is saved without it.
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    let s = Trainer::new(job("tiny-llama", part.path()))
        .unwrap()
        .run(&resume, stopped())
        .unwrap();
    assert!(s.interrupted && s.steps == 4, "{s:?}");
    assert!(RunLog::new(part.path()).val_loss_at(4).unwrap().is_none());
    assert!(!part.path().join("adapter").exists());
    // The next resume validates step 4 first, and ends as the uninterrupted run did.
    Trainer::new(job("tiny-llama", part.path()))
        .unwrap()
        .run(&resume, no_stop())
        .unwrap();
    assert_eq!(
        common::logged_losses(part.path()),
        common::logged_losses(full.path())
    );
    let a = std::fs::read(full.path().join("adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(part.path().join("adapter/adapter_model.safetensors")).unwrap();
    assert!(a == b, "final adapters differ");
}

#[test]
fn a_stop_during_the_report_ends_it_writing_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = format!(
        "report.prompts={}",
        common::fixtures().join("chats.jsonl").display()
    );
    let overrides = [
        prompts.as_str(),
        "report.starts_with=The",
        "report.limit=2",
        "report.max_new_tokens=4",
        "train.max_steps=1",
    ];
    let mut t = Trainer::new(common::tiny_job("tiny-llama", tmp.path(), &overrides)).unwrap();
    let s = t.run(&RunOptions::default(), no_stop()).unwrap();
    let env = lora_train::providers::Env::default();
    let report = |t: &mut Trainer, stop: bool| {
        lora_train::harness::training::evaluate_run(t, &s, &env, &AtomicBool::new(stop))
            .map(|done| done.is_some())
            .map_err(Box::new)
    };
    let err = report(&mut t, true).unwrap_err();
    assert!(
        matches!(
            *err,
            lora_train::harness::EvalError::Core(lora_train::Error::Interrupted(_))
        ),
        "{err}"
    );
    assert!(!tmp.path().join("report.json").exists());
    assert!(report(&mut t, false).unwrap());
    assert!(tmp.path().join("report.json").exists());
}
