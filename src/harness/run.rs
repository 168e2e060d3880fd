//! One evaluation, start to finish: read the prompts, build every client first (so a missing
//! key fails before any call), answer, run the offline checks, judge each pair in both orders
//! and score traits, then compute the statistics and write the report. Answers and judgments
//! are cached, so an interrupted run, run again, pays for nothing it already has.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Deserialize;

use crate::harness::candidates::{
    answer_all, write_generations, Candidate, Generation, RunContext, Source, Task,
};
use crate::harness::config::local_judge;
use crate::harness::config::EvalConfig;
use crate::harness::judge::{default_traits, Judge, PairJudgment, RubricJudgment, Trait};
use crate::harness::local::LocalChatClient;
use crate::harness::pool::map_parallel;
use crate::harness::prompts::{read_prompts, EvalPrompt};
use crate::harness::report::{self, EvalReport};
use crate::harness::tasks::{read_questions, TaskScore};
use crate::harness::EvalError;
use crate::providers::chat::{
    build_chat_client, ChatClient, ChatProviderConfig, FallbackChain, HttpChatClient,
};
use crate::providers::Env;

/// Everything an evaluation produced, for the report and for tests.
pub struct Outcome {
    pub prompts: Vec<EvalPrompt>,
    pub candidates: Vec<Candidate>,
    pub generations: Vec<Vec<Generation>>,
    /// Each local candidate's loss on the references.
    pub val_loss: Vec<Option<f64>>,
    /// `tasks[candidate][task]`, for local candidates.
    pub tasks: Vec<Vec<Option<TaskScore>>>,
    pub task_names: Vec<String>,
    /// (a, b) candidate indices, `a` the non-baseline side.
    pub pairs: Vec<(usize, usize)>,
    /// `judgments[pair][prompt]`.
    pub judgments: Vec<Vec<PairJudgment>>,
    /// `rubric[candidate][prompt]`, when the rubric ran.
    pub rubric: Vec<Vec<RubricJudgment>>,
    pub traits: Vec<Trait>,
    pub judge_models: Vec<String>,
    pub report: EvalReport,
}

pub use crate::eval::EVAL_OUTPUT;

/// Runs the evaluation `cfg` describes and writes its outputs under `cfg.output.dir`; a folder
/// holding anything an eval does not write is refused unless `force`.
pub fn run_eval(cfg: &EvalConfig, env: &Env, force: bool) -> Result<Outcome, EvalError> {
    run_eval_with(cfg, env, force, &mut RunContext::default())
}

/// [`run_eval`] with models lent by the caller, a stop flag, and the prompt pick `ctx` gives.
/// A stop ends it with [`crate::Error::Interrupted`] before the report is written; what was
/// answered and judged by then is in the cache.
pub fn run_eval_with(
    cfg: &EvalConfig,
    env: &Env,
    force: bool,
    ctx: &mut RunContext,
) -> Result<Outcome, EvalError> {
    let out = &cfg.output.dir;
    EVAL_OUTPUT.check(out, force)?;
    let cache_dir = out.join("cache");
    let prompts = if ctx.first_prompts {
        let mut all = read_prompts(&cfg.data.path, 0, cfg.data.seed)?;
        if cfg.data.limit > 0 {
            all.truncate(cfg.data.limit);
        }
        all
    } else {
        read_prompts(&cfg.data.path, cfg.data.limit, cfg.data.seed)?
    };
    let candidates = cfg
        .candidate
        .iter()
        .map(Candidate::from_section)
        .collect::<Result<Vec<_>, _>>()?;

    // Every client first: a missing key or a bad provider setting stops here, before any call.
    let mut clients: HashMap<String, Box<dyn ChatClient>> = HashMap::new();
    for c in &candidates {
        if let Source::Remote(p) = &c.source {
            let mut p = (**p).clone();
            p.cache_dir.get_or_insert_with(|| cache_dir.join("chat"));
            clients.insert(c.name.clone(), build_chat_client(&[p], env)?);
        }
    }
    let judge = match &cfg.judge {
        Some(j) if j.pairwise || j.rubric => {
            let mut chain: Vec<Box<dyn ChatClient>> = Vec::new();
            for t in &j.providers {
                // The eval file's checks already read every table as one of these two.
                if let Some(local) = local_judge(t) {
                    let (model, max_tokens) = local;
                    let client =
                        LocalChatClient::load(&model, max_tokens, Some(cache_dir.join("judge")))?;
                    chain.push(Box::new(client));
                } else {
                    let mut p = ChatProviderConfig::deserialize(toml::Value::Table(t.clone()))
                        .map_err(|e| {
                            EvalError::Template(format!("judge.providers: {}", e.message()))
                        })?;
                    p.cache_dir.get_or_insert_with(|| cache_dir.join("judge"));
                    chain.push(Box::new(HttpChatClient::from_config(&p, env)?));
                }
            }
            let read = |p: &Option<std::path::PathBuf>| -> Result<Option<String>, EvalError> {
                p.as_ref()
                    .map(|f| std::fs::read_to_string(f).map_err(|e| crate::Error::io(f, e).into()))
                    .transpose()
            };
            let traits = if j.r#trait.is_empty() {
                default_traits()
            } else {
                j.r#trait
                    .iter()
                    .map(|t| Trait {
                        name: t.name.clone(),
                        description: t.description.clone(),
                    })
                    .collect()
            };
            let client: Box<dyn ChatClient> = match chain.len() {
                1 => chain.remove(0),
                _ => Box::new(FallbackChain::new(chain)),
            };
            Some(Judge::new(
                client,
                read(&j.pairwise_template)?,
                read(&j.rubric_template)?,
                traits,
            )?)
        }
        _ => None,
    };

    let tasks = cfg
        .task
        .iter()
        .map(|t| {
            Ok(Task {
                name: t.name.clone(),
                questions: read_questions(&t.path)?,
            })
        })
        .collect::<Result<Vec<_>, EvalError>>()?;
    let answers = answer_all(
        &candidates,
        &clients,
        &prompts,
        &cfg.generation,
        &tasks,
        &cache_dir,
        ctx,
    )?;
    ctx.check_stop()?;
    let val_loss: Vec<Option<f64>> = answers.iter().map(|a| a.val_loss).collect();
    let task_scores: Vec<Vec<Option<TaskScore>>> =
        answers.iter().map(|a| a.tasks.clone()).collect();
    let generations: Vec<Vec<Generation>> = answers.into_iter().map(|a| a.generations).collect();
    for (c, gens) in candidates.iter().zip(&generations) {
        write_generations(out, &c.name, gens)?;
    }

    let baseline = cfg
        .judge
        .as_ref()
        .and_then(|j| j.baseline.as_ref())
        .and_then(|b| candidates.iter().position(|c| &c.name == b));
    let pairs: Vec<(usize, usize)> = match baseline {
        Some(b) => (0..candidates.len())
            .filter(|&a| a != b)
            .map(|a| (a, b))
            .collect(),
        None => (0..candidates.len())
            .flat_map(|a| (a + 1..candidates.len()).map(move |b| (a, b)))
            .collect(),
    };
    let judge_cfg = cfg.judge.as_ref();
    let concurrency = judge_cfg.map_or(1, |j| j.concurrency);
    let mut judgments = Vec::new();
    let mut rubric = Vec::new();
    let stop = ctx.stop;
    let stopped = || stop.is_some_and(|s| s.load(Ordering::SeqCst));
    if let (Some(judge), Some(j)) = (&judge, judge_cfg) {
        if j.pairwise {
            let work: Vec<(usize, usize)> = (0..pairs.len())
                .flat_map(|pair| (0..prompts.len()).map(move |p| (pair, p)))
                .collect();
            let done = map_parallel(&work, concurrency, "judging pairs", |&(pair, p)| {
                if stopped() {
                    return None;
                }
                let (a, b) = pairs[pair];
                Some(judge.compare(
                    &prompts[p].chat_messages(),
                    &generations[a][p].response,
                    &generations[b][p].response,
                ))
            });
            ctx.check_stop()?;
            let mut it = done.into_iter().flatten();
            for _ in 0..pairs.len() {
                judgments.push(it.by_ref().take(prompts.len()).collect());
            }
        }
        if j.rubric {
            let work: Vec<(usize, usize)> = (0..candidates.len())
                .flat_map(|c| (0..prompts.len()).map(move |p| (c, p)))
                .collect();
            let done = map_parallel(&work, concurrency, "scoring traits", |&(c, p)| {
                if stopped() {
                    return None;
                }
                Some(judge.rate(&prompts[p].chat_messages(), &generations[c][p].response))
            });
            ctx.check_stop()?;
            let mut it = done.into_iter().flatten();
            for _ in 0..candidates.len() {
                rubric.push(it.by_ref().take(prompts.len()).collect());
            }
        }
    }
    let traits = judge
        .as_ref()
        .map(|j| j.traits().to_vec())
        .unwrap_or_default();
    let judge_models = judge.as_ref().map(|j| vec![j.name()]).unwrap_or_default();
    let mut outcome = Outcome {
        prompts,
        candidates,
        generations,
        val_loss,
        tasks: task_scores,
        task_names: tasks.iter().map(|t| t.name.clone()).collect(),
        pairs,
        judgments,
        rubric,
        traits,
        judge_models,
        report: EvalReport::default(),
    };
    outcome.report = report::build(cfg, &outcome, baseline)?;
    report::write(out, &outcome)?;
    Ok(outcome)
}
