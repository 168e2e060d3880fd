//! The evaluation after a training run. A job's `[eval]`, or its `[report]` shorthand, becomes
//! an eval with two local candidates: `base` (the job's base model, the baseline) and `adapter`
//! (the base with the run's adapter). Both borrow the trainer's model, which is already in
//! memory, with the adapter detached for `base`, rather than loading it again; the harness
//! writes its outputs to `<output.dir>/eval/`. A `[report]` expands to one check per rule on
//! its first `limit` prompts, and the run's `report.json` / `report.md` (the keys they always
//! had) are computed from those checks' results.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::Deserialize;

use crate::config::eval::{EvalDataSection, GenerationSection, JOB_EVAL_CANDIDATES};
use crate::config::job::JobConfig;
use crate::config::ReportSection;
use crate::data::Role;
use crate::harness::candidates::{ModelLender, RunContext};
use crate::harness::checks::Check;
use crate::harness::config::{
    check_judge_providers, local_judge, CandidateSection, EvalConfig, EvalOutputSection,
};
use crate::harness::prompts::read_prompts;
use crate::harness::run::{run_eval_with, Outcome};
use crate::harness::tasks::read_questions;
use crate::harness::EvalError;
use crate::model::LoadedModel;
use crate::providers::chat::{ChatProviderConfig, HttpChatClient};
use crate::providers::Env;
use crate::train::report::{BehaviourReport, ReportSample};
use crate::train::{TrainSummary, Trainer};

pub use crate::train::output_dir::EVAL_DIR;

/// What the evaluation after a run produced.
pub struct RunEvaluation {
    /// Where the harness wrote (`<output.dir>/eval`).
    pub dir: PathBuf,
    pub outcome: Outcome,
    /// The before/after report, for a job with `[report]`.
    pub behaviour: Option<BehaviourReport>,
}

/// The eval a job asks for after training: its `[eval]`, or its `[report]` as checks; `None`
/// when it has neither.
pub fn eval_config(job: &JobConfig) -> Option<EvalConfig> {
    let out = EvalOutputSection {
        dir: job.output.dir.join(EVAL_DIR),
    };
    let candidate = candidates(job);
    if let Some(e) = &job.eval {
        let mut judge = e.judge.clone();
        if let Some(j) = &mut judge {
            j.baseline
                .get_or_insert_with(|| JOB_EVAL_CANDIDATES[0].into());
        }
        return Some(EvalConfig {
            data: e.data.clone(),
            candidate,
            generation: e.generation.clone(),
            judge,
            check: e.check.clone(),
            task: e.task.clone(),
            output: out,
        });
    }
    let report = job.report.as_ref()?;
    Some(EvalConfig {
        data: EvalDataSection {
            path: report.prompts.clone(),
            limit: report.limit,
            seed: 0,
        },
        candidate,
        generation: GenerationSection {
            max_new_tokens: report.max_new_tokens,
            ..GenerationSection::default()
        },
        judge: None,
        check: report.checks(),
        task: Vec::new(),
        output: out,
    })
}

/// `base` and `adapter`: the job's model as it trains (its quantization, dtype and device),
/// without and with the adapter the run exports to `<output.dir>/adapter`.
fn candidates(job: &JobConfig) -> Vec<CandidateSection> {
    let [base, adapter] = JOB_EVAL_CANDIDATES;
    let m = &job.model;
    let local = |name: &str, adapter: Option<PathBuf>| CandidateSection {
        name: name.into(),
        model: Some(m.source.clone()),
        adapter,
        quantize: Some(m.quantize),
        dtype: Some(m.dtype),
        device: Some(m.device),
        ..CandidateSection::default()
    };
    vec![
        local(base, None),
        local(adapter, Some(job.output.dir.join("adapter"))),
    ]
}

/// The rules on a job's `[eval]` that only this layer can check (the judge's provider tables),
/// as (dotted key, message); for [`JobConfig::load_checked`], so the error names file and line.
pub fn check_job(job: &JobConfig) -> Result<(), (String, String)> {
    match job.eval.as_ref().and_then(|e| e.judge.as_ref()) {
        Some(judge) => check_judge_providers("eval.", judge),
        None => Ok(()),
    }
}

/// What can be checked before training, so that a long run does not end in an eval that cannot
/// start: the prompts and task files read, and a remote judge's API key is set.
pub fn preflight(job: &JobConfig, env: &Env) -> Result<(), EvalError> {
    let Some(cfg) = eval_config(job) else {
        return Ok(());
    };
    let prompts = read_prompts(&cfg.data.path, 0, 0)?;
    if prompts.is_empty() {
        return Err(EvalError::Input {
            file: cfg.data.path.clone(),
            line: None,
            msg: "no prompts".into(),
        });
    }
    for t in &cfg.task {
        read_questions(&t.path)?;
    }
    if let Some(judge) = &cfg.judge {
        if judge.pairwise || judge.rubric {
            for t in judge.providers.iter().filter(|t| local_judge(t).is_none()) {
                let p = ChatProviderConfig::deserialize(toml::Value::Table(t.clone())).map_err(
                    |e| EvalError::Template(format!("judge.providers: {}", e.message())),
                )?;
                HttpChatClient::from_config(&p, env)?;
            }
        }
    }
    Ok(())
}

/// Lends the trainer's model: `adapter` as it is, `base` with the adapter detached (and
/// attached again afterwards).
struct TrainerModels<'t>(&'t mut Trainer);

impl ModelLender for TrainerModels<'_> {
    fn lend(
        &mut self,
        name: &str,
        f: &mut dyn FnMut(&LoadedModel) -> Result<(), EvalError>,
    ) -> Result<bool, EvalError> {
        let [base, adapter] = JOB_EVAL_CANDIDATES;
        if name == adapter {
            f(self.0.model())?;
        } else if name == base {
            self.0.without_adapter(|t| f(t.model()))??;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

/// Runs the job's `[eval]` or `[report]` on the trained model; `None` when the job has neither.
/// With `[report]` it also writes the run's `report.json` and `report.md`. Once `stop` is set
/// it ends with [`crate::Error::Interrupted`] (checked before each reply and judge call),
/// writing no report.
pub fn evaluate_run(
    trainer: &mut Trainer,
    summary: &TrainSummary,
    env: &Env,
    stop: &AtomicBool,
) -> Result<Option<RunEvaluation>, EvalError> {
    let Some(cfg) = eval_config(trainer.job()) else {
        return Ok(None);
    };
    let report = trainer.job().report.clone();
    let mut models = TrainerModels(trainer);
    let mut ctx = RunContext {
        models: Some(&mut models),
        stop: Some(stop),
        first_prompts: report.is_some(),
    };
    let outcome = run_eval_with(&cfg, env, false, &mut ctx)?;
    let behaviour = match &report {
        Some(section) => {
            let r = behaviour_report(section, &cfg, summary, &outcome)?;
            r.write(&summary.output_dir)?;
            Some(r)
        }
        None => None,
    };
    Ok(Some(RunEvaluation {
        dir: cfg.output.dir.clone(),
        outcome,
        behaviour,
    }))
}

/// The before/after report from the harness's results: a reply shows the behaviour when it
/// passes every check the `[report]` expanded to.
fn behaviour_report(
    section: &ReportSection,
    cfg: &EvalConfig,
    summary: &TrainSummary,
    o: &Outcome,
) -> Result<BehaviourReport, EvalError> {
    let checks = cfg
        .check
        .iter()
        .map(Check::from_spec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(EvalError::Template)?;
    let [base, adapter] = JOB_EVAL_CANDIDATES.map(|name| {
        o.candidates
            .iter()
            .position(|c| c.name == name)
            .map(|i| &o.generations[i])
    });
    let (Some(base), Some(adapter)) = (base, adapter) else {
        return Err(EvalError::Template(
            "the run's eval has no `base` or `adapter` answers".into(),
        ));
    };
    let rate = |gens: &[crate::harness::candidates::Generation]| {
        let shown = gens
            .iter()
            .filter(|g| {
                checks
                    .iter()
                    .all(|c| c.passes(&g.response, None) == Some(true))
            })
            .count();
        shown as f64 / gens.len().max(1) as f64
    };
    let samples = o
        .prompts
        .iter()
        .zip(base.iter().zip(adapter))
        .map(|(p, (b, a))| ReportSample {
            prompt: p
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            base: b.response.clone(),
            adapter: a.response.clone(),
        })
        .collect();
    Ok(BehaviourReport {
        behaviour: section.describe(),
        prompts: o.prompts.len(),
        val_loss_before: summary.val_loss_before,
        val_loss_after: summary.val_loss_after,
        base_rate: rate(base),
        adapter_rate: rate(adapter),
        samples,
    })
}
