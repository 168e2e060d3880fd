//! The candidates of an evaluation and their answers. A local model (or a training run's base
//! and adapter) generates greedily by default; a remote model is asked through its provider's
//! client, several prompts at once; a `responses` file reuses answers made earlier. Local
//! answers are cached under a hash of the model, settings and prompt, so a re-run makes none
//! twice; remote ones go through the provider's own response cache. A caller that holds a model
//! already (a training run) lends it through [`ModelLender`] instead of the harness loading it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config::job::{DeviceName, DtypeName, JobConfig};
use crate::data::dataset::line_id;
use crate::data::mask::tokenize_conversation;
use crate::data::prepare::{fit_to_length, Fit};
use crate::data::{Conversation, LossOn, Message, Role};
use crate::eval::score_examples;
use crate::generate::{check_prompt_fits, prompt_ids, replies, GenerateOptions};
use crate::harness::config::{CandidateSection, GenerationSection};
use crate::harness::pool::{map_parallel, progress};
use crate::harness::prompts::EvalPrompt;
use crate::harness::tasks::{score_task, Question, TaskScore};
use crate::harness::EvalError;
use crate::model::{load_with_adapter, LoadOptions, LoadedModel};
use crate::providers::cache::ResponseCache;
use crate::providers::chat::{ChatClient, ChatProviderConfig, ChatRequest, FinishReason};
use crate::quant::Quantize;

/// One answer, as a line of `generations/<name>.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub id: String,
    pub response: String,
    pub output_tokens: u64,
    pub latency_s: f64,
    pub finish_reason: String,
}

/// Where a candidate's answers come from.
#[derive(Debug, Clone)]
pub enum Source {
    Local(LocalModel),
    Remote(Box<ChatProviderConfig>),
    Responses(PathBuf),
}

/// A local model and how it is held.
#[derive(Debug, Clone)]
pub struct LocalModel {
    pub model: String,
    pub adapter: Option<PathBuf>,
    /// The adapter's weights file's SHA-256, read once: it keys the cache and the report.
    pub adapter_sha256: Option<String>,
    pub quantize: Quantize,
    pub dtype: DtypeName,
    pub device: DeviceName,
}

impl LocalModel {
    fn new(
        model: String,
        adapter: Option<PathBuf>,
        quantize: Quantize,
        dtype: DtypeName,
        device: DeviceName,
    ) -> Self {
        let adapter_sha256 = adapter
            .as_deref()
            .and_then(crate::export::peft::adapter_sha256);
        LocalModel {
            model,
            adapter,
            adapter_sha256,
            quantize,
            dtype,
            device,
        }
    }
}

/// A named candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub source: Source,
}

impl Candidate {
    /// The candidate a `[[candidate]]` table describes; `run` folders are read here.
    pub fn from_section(c: &CandidateSection) -> Result<Self, EvalError> {
        let source = if let Some(provider) = &c.provider {
            let mut table = toml::Table::new();
            table.insert("provider".into(), provider.clone().into());
            table.insert("model".into(), c.model.clone().unwrap_or_default().into());
            if let Some(url) = &c.base_url {
                table.insert("base_url".into(), url.clone().into());
            }
            let cfg = ChatProviderConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
                EvalError::Template(format!("candidate `{}`: {}", c.name, e.message()))
            })?;
            Source::Remote(Box::new(cfg))
        } else if let Some(run) = &c.run {
            let job_file = run.join("job.toml");
            if !job_file.is_file() {
                return Err(EvalError::Input {
                    file: run.clone(),
                    line: None,
                    msg: format!(
                        "candidate `{}`: not a training run folder (it has no job.toml)",
                        c.name
                    ),
                });
            }
            let job = JobConfig::load(&job_file, &[])?;
            let adapter = run.join("adapter");
            if !adapter.join("adapter_config.json").is_file() {
                return Err(EvalError::Input {
                    file: adapter,
                    line: None,
                    msg: format!("candidate `{}`: the run has no exported adapter", c.name),
                });
            }
            Source::Local(LocalModel::new(
                job.model.source.clone(),
                Some(adapter),
                c.quantize.unwrap_or(job.model.quantize),
                c.dtype.unwrap_or(job.model.dtype),
                c.device.unwrap_or(DeviceName::Cpu),
            ))
        } else if let Some(file) = &c.responses {
            Source::Responses(file.clone())
        } else {
            Source::Local(LocalModel::new(
                c.model.clone().unwrap_or_default(),
                c.adapter.clone(),
                c.quantize.unwrap_or(Quantize::None),
                c.dtype.unwrap_or(DtypeName::F32),
                c.device.unwrap_or(DeviceName::Cpu),
            ))
        };
        Ok(Candidate {
            name: c.name.clone(),
            source,
        })
    }

    /// What the report shows as the source: the kind, the model, and the adapter with its
    /// SHA-256 when there is one.
    pub fn describe(&self) -> (String, String, Option<&LocalModel>) {
        match &self.source {
            Source::Local(l) => ("local".into(), l.model.clone(), Some(l)),
            Source::Remote(cfg) => (cfg.provider.as_str().into(), cfg.model.clone(), None),
            Source::Responses(file) => ("responses".into(), file.display().to_string(), None),
        }
    }
}

/// A candidate's answers, and for a local one its validation loss on the references.
pub struct Answers {
    pub generations: Vec<Generation>,
    pub val_loss: Option<f64>,
    /// Each task's score, for a local candidate.
    pub tasks: Vec<Option<TaskScore>>,
}

/// A multiple-choice task, read.
pub struct Task {
    pub name: String,
    pub questions: Vec<Question>,
}

/// Models already in memory that local candidates use instead of loading their own: a training
/// run lends its model, with the adapter attached for one candidate and detached for the other.
pub trait ModelLender {
    /// Runs `f` on the model of candidate `name` and returns true, or returns false without
    /// running it when this lender has no model for that candidate (the harness loads it).
    fn lend(
        &mut self,
        name: &str,
        f: &mut dyn FnMut(&LoadedModel) -> Result<(), EvalError>,
    ) -> Result<bool, EvalError>;
}

/// What an eval run may be given beyond its file: models to borrow, a stop flag, and how a
/// `data.limit` picks prompts.
#[derive(Default)]
pub struct RunContext<'a> {
    pub models: Option<&'a mut dyn ModelLender>,
    /// Checked before each local reply and each judge call: once set, the run ends with
    /// [`crate::Error::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
    /// A `data.limit` takes the first prompts of the file instead of a seeded sample (the
    /// job's `[report]` shorthand does).
    pub first_prompts: bool,
}

impl RunContext<'_> {
    /// [`crate::Error::Interrupted`] once the stop flag is set.
    pub fn check_stop(&self) -> Result<(), EvalError> {
        match self.stop {
            Some(stop) if stop.load(Ordering::SeqCst) => {
                Err(crate::Error::Interrupted("the evaluation".into()).into())
            }
            _ => Ok(()),
        }
    }
}

/// Every candidate's answers to `prompts`, in prompt order. `clients` holds a built client for
/// each remote candidate (built first, so a missing key fails before any work); `ctx` may
/// lend local candidates their models.
pub fn answer_all(
    candidates: &[Candidate],
    clients: &HashMap<String, Box<dyn ChatClient>>,
    prompts: &[EvalPrompt],
    settings: &GenerationSection,
    tasks: &[Task],
    cache_dir: &Path,
    ctx: &mut RunContext,
) -> Result<Vec<Answers>, EvalError> {
    let only = |generations: Result<Vec<Generation>, EvalError>| {
        generations.map(|generations| Answers {
            generations,
            val_loss: None,
            tasks: tasks.iter().map(|_| None).collect(),
        })
    };
    let mut all = Vec::with_capacity(candidates.len());
    for c in candidates {
        ctx.check_stop()?;
        all.push(match &c.source {
            Source::Local(local) => {
                answer_local(&c.name, local, prompts, settings, tasks, cache_dir, ctx)?
            }
            Source::Remote(_) => {
                let client = clients.get(&c.name).ok_or_else(|| {
                    EvalError::Template(format!("candidate `{}` has no client", c.name))
                })?;
                only(answer_remote(&c.name, client.as_ref(), prompts, settings))?
            }
            Source::Responses(file) => only(read_responses(file, prompts))?,
        });
    }
    Ok(all)
}

fn answer_local(
    name: &str,
    local: &LocalModel,
    prompts: &[EvalPrompt],
    settings: &GenerationSection,
    tasks: &[Task],
    cache_dir: &Path,
    ctx: &mut RunContext,
) -> Result<Answers, EvalError> {
    let fingerprint = serde_json::json!({
        "model": local.model,
        "adapter_sha256": local.adapter_sha256,
        "quantize": local.quantize.to_string(),
        "dtype": local.dtype.to_string(),
        "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "seed": settings.seed,
    });
    let cache = ResponseCache::new(cache_dir.join("generations"));
    let key = |p: &EvalPrompt| {
        let body = serde_json::json!({"candidate": fingerprint, "messages": p.messages});
        ResponseCache::key("local", &body)
    };
    let val_key = {
        let refs: Vec<_> = prompts
            .iter()
            .filter(|p| p.reference.is_some())
            .map(|p| (&p.messages, &p.reference))
            .collect();
        let body = serde_json::json!({"candidate": fingerprint, "val_loss_of": refs});
        ResponseCache::key("local-val-loss", &body)
    };
    let has_refs = prompts.iter().any(|p| p.reference.is_some());
    let mut val_loss: Option<f64> = if has_refs {
        cache.get::<f64>(&val_key)
    } else {
        None
    };
    let task_key = |t: &Task| {
        let qs: Vec<_> = t
            .questions
            .iter()
            .map(|q| (&q.question, &q.choices))
            .collect();
        let body = serde_json::json!({"candidate": fingerprint, "task": qs});
        ResponseCache::key("local-task", &body)
    };
    let mut task_scores: Vec<Option<TaskScore>> = tasks
        .iter()
        .map(|t| {
            cache
                .get::<(usize, usize, usize)>(&task_key(t))
                .map(|(correct, correct_norm, n)| TaskScore {
                    correct,
                    correct_norm,
                    n,
                })
        })
        .collect();
    let mut out: Vec<Option<Generation>> = prompts
        .iter()
        .map(|p| {
            cache.get::<Generation>(&key(p)).map(|mut g| {
                g.id = p.id.clone();
                g
            })
        })
        .collect();
    if out.iter().all(Option::is_some)
        && (val_loss.is_some() || !has_refs)
        && task_scores.iter().all(Option::is_some)
    {
        return Ok(Answers {
            generations: out.into_iter().flatten().collect(),
            val_loss,
            tasks: task_scores,
        });
    }
    let stop = ctx.stop;
    let mut work = |m: &LoadedModel| -> Result<(), EvalError> {
        if has_refs && val_loss.is_none() {
            let loss = reference_loss(m, prompts)?;
            if let Some(loss) = loss {
                cache.put(&val_key, &loss)?;
            }
            val_loss = loss;
        }
        for (t, slot) in tasks.iter().zip(task_scores.iter_mut()) {
            if slot.is_none() {
                let s = score_task(m, &t.questions).map_err(|e| match e {
                    EvalError::Core(source) => {
                        EvalError::Template(format!("task `{}`: {source}", t.name))
                    }
                    other => other,
                })?;
                cache.put(&task_key(t), &(s.correct, s.correct_norm, s.n))?;
                *slot = Some(s);
            }
        }
        let opts = GenerateOptions {
            max_new_tokens: settings.max_new_tokens,
            temperature: settings.temperature,
            top_p: settings.top_p,
            seed: settings.seed,
            stop_ids: Vec::new(),
        };
        let as_prompt_error = |p: &EvalPrompt, source| EvalError::Prompt {
            id: p.id.clone(),
            line: p.line,
            source: Box::new(source),
        };
        // Every prompt still to answer, checked before any is generated, longest first so that
        // a batch holds prompts of similar length and little padding.
        let mut todo = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            if out[i].is_none() {
                let ids = prompt_ids(m, &p.messages).map_err(|e| as_prompt_error(p, e))?;
                check_prompt_fits(ids.len(), opts.max_new_tokens, m.model.context_len())
                    .map_err(|e| as_prompt_error(p, e))?;
                todo.push((i, ids));
            }
        }
        todo.sort_by_key(|(i, ids)| (std::cmp::Reverse(ids.len()), *i));
        let bar = progress(prompts.len() as u64, &format!("generating {name}"));
        bar.inc((prompts.len() - todo.len()) as u64);
        for batch in todo.chunks(settings.batch_size) {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                bar.finish_and_clear();
                return Err(crate::Error::Interrupted("the evaluation".into()).into());
            }
            let ids: Vec<&[u32]> = batch.iter().map(|(_, ids)| ids.as_slice()).collect();
            let start = Instant::now();
            let rs = match replies(m, &ids, &opts) {
                Ok(rs) => rs,
                // Name the prompt the batch failed on: each alone, up to the first that fails.
                Err(_) if batch.len() > 1 => batch
                    .iter()
                    .map(|(i, ids)| {
                        replies(m, &[ids], &opts)
                            .map_err(|e| as_prompt_error(&prompts[*i], e))?
                            .pop()
                            .ok_or_else(|| EvalError::Template("no reply generated".into()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Err(e) => return Err(as_prompt_error(&prompts[batch[0].0], e)),
            };
            let latency_s = start.elapsed().as_secs_f64();
            for ((i, _), r) in batch.iter().zip(rs) {
                let p = &prompts[*i];
                let g = Generation {
                    id: p.id.clone(),
                    response: r.text,
                    output_tokens: r.output_tokens as u64,
                    latency_s,
                    finish_reason: if r.stopped { "stop" } else { "length" }.into(),
                };
                cache.put(&key(p), &g)?;
                out[*i] = Some(g);
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        Ok(())
    };
    let lent = match ctx.models.as_deref_mut() {
        Some(models) => models.lend(name, &mut work)?,
        None => false,
    };
    if !lent {
        let opts = LoadOptions {
            dtype: local.dtype.dtype(),
            device: crate::device::open(local.device)?,
            quantize: local.quantize,
        };
        work(&load_with_adapter(
            &local.model,
            &opts,
            local.adapter.as_deref(),
        )?)?;
    }
    Ok(Answers {
        generations: out.into_iter().flatten().collect(),
        val_loss,
        tasks: task_scores,
    })
}

/// The model's token-weighted loss on the references (the prompts' final assistant turns),
/// each conversation fitted to the model's context (at most 2048 tokens) as training fits it;
/// `None` when no reference fits.
fn reference_loss(m: &LoadedModel, prompts: &[EvalPrompt]) -> Result<Option<f64>, EvalError> {
    let max_len = m.model.context_len().min(2048);
    let mut examples = Vec::new();
    for p in prompts {
        let Some(reference) = &p.reference else {
            continue;
        };
        let mut messages = p.messages.clone();
        messages.push(Message::new(Role::Assistant, reference.clone()));
        let conv = Conversation { messages };
        let ex = tokenize_conversation(&conv, &m.template, &m.tokenizer, LossOn::LastAssistant)
            .map_err(|source| EvalError::Prompt {
                id: p.id.clone(),
                line: p.line,
                source: Box::new(source),
            })?;
        match fit_to_length(&ex, max_len) {
            Fit::Kept(ex) | Fit::Truncated(ex) => examples.push(ex),
            Fit::Dropped => tracing::warn!(
                "prompt `{}`: its reference does not fit {max_len} tokens; left out of val_loss",
                p.id
            ),
        }
    }
    if examples.is_empty() {
        return Ok(None);
    }
    let report = score_examples(m.model.as_ref(), &examples, 8, false)?;
    Ok(Some(report.mean_loss))
}

fn answer_remote(
    name: &str,
    client: &dyn ChatClient,
    prompts: &[EvalPrompt],
    settings: &GenerationSection,
) -> Result<Vec<Generation>, EvalError> {
    let replies = map_parallel(
        prompts,
        settings.concurrency,
        &format!("asking {name}"),
        |p| {
            let request = ChatRequest {
                temperature: Some(settings.temperature as f32),
                max_tokens: Some(settings.max_new_tokens as u32),
                seed: (settings.temperature > 0.0).then_some(settings.seed),
                ..ChatRequest::new(p.chat_messages())
            };
            let start = Instant::now();
            client
                .chat(&request)
                .map(|r| (r, start.elapsed().as_secs_f64()))
        },
    );
    prompts
        .iter()
        .zip(replies)
        .map(|(p, r)| {
            let (reply, latency_s) = r?;
            Ok(Generation {
                id: p.id.clone(),
                response: reply.content.trim().to_string(),
                output_tokens: reply.usage.output_tokens,
                latency_s,
                finish_reason: match reply.finish_reason {
                    FinishReason::Stop => "stop".into(),
                    FinishReason::Length => "length".into(),
                    FinishReason::ToolCalls => "tool_calls".into(),
                    FinishReason::ContentFilter => "content_filter".into(),
                    FinishReason::Other(s) => s,
                },
            })
        })
        .collect()
}

/// Answers from an earlier `generations/<name>.jsonl`, matched to the prompts by id.
fn read_responses(file: &Path, prompts: &[EvalPrompt]) -> Result<Vec<Generation>, EvalError> {
    let text = std::fs::read_to_string(file).map_err(|e| crate::Error::io(file, e))?;
    let mut by_id = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |msg: String| EvalError::Input {
            file: file.to_path_buf(),
            line: Some(i + 1),
            msg,
        };
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| fail(format!("not a JSON object: {e}")))?;
        let id = line_id(&value)
            .map_err(fail)?
            .ok_or_else(|| fail("\"id\": missing (a string or a number)".into()))?;
        // A numeric id, as the prompts file may give, is the same id written as text.
        value.insert("id".into(), id.clone().into());
        let g: Generation = serde_json::from_value(value.into())
            .map_err(|e| fail(format!("not a generation line: {e}")))?;
        by_id.insert(id, g);
    }
    prompts
        .iter()
        .map(|p| {
            by_id.remove(&p.id).ok_or_else(|| EvalError::Input {
                file: file.to_path_buf(),
                line: None,
                msg: format!(
                    "\"id\": no answer for prompt `{}` (data line {})",
                    p.id, p.line
                ),
            })
        })
        .collect()
}

/// Writes `generations/<name>.jsonl` under `dir`, atomically.
pub fn write_generations(dir: &Path, name: &str, gens: &[Generation]) -> Result<(), EvalError> {
    let mut text = String::new();
    for g in gens {
        let line = serde_json::to_string(g).map_err(|source| crate::Error::Json {
            what: format!("generations/{name}.jsonl"),
            source,
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    crate::fsutil::write_atomic(
        &dir.join("generations").join(format!("{name}.jsonl")),
        text.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(id: &str) -> EvalPrompt {
        EvalPrompt {
            id: id.into(),
            line: 1,
            messages: vec![Message::new(Role::User, "Q")],
            reference: None,
        }
    }

    #[test]
    fn earlier_answers_match_prompts_by_id_written_as_text_or_number() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let line = |id: &str, response: &str| {
            format!(
                r#"{{"id": {id}, "response": "{response}", "output_tokens": 1, "latency_s": 0.1, "finish_reason": "stop"}}"#
            )
        };
        std::fs::write(f.path(), [line("7", "r7"), line("\"x\"", "rx")].join("\n")).unwrap();
        let got = read_responses(f.path(), &[prompt("x"), prompt("7")]).unwrap();
        assert_eq!((got[0].id.as_str(), got[1].id.as_str()), ("x", "7"));
        assert_eq!(got[1].response, "r7");
        let err = read_responses(f.path(), &[prompt("y")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`y`"), "{err}");
        std::fs::write(f.path(), r#"{"response": "r"}"#).unwrap();
        let err = read_responses(f.path(), &[prompt("x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: \"id\": missing"), "{err}");
    }
}
