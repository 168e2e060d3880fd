//! `data synth`: the staged generator. Each example slot `i` draws its vars from a stream seeded
//! by `(seed, i)`, runs the stages in order (each through its own provider chain; a reply that
//! fails a gate is asked again with a follow-up turn saying why, up to `max_attempts`), becomes
//! one conversation, and is checked against the evaluation set and the kept examples. Slots run
//! `max_concurrency` at a time; each ends as one line of the detailed file (accepted, rejected,
//! duplicate, contaminated, or failed with its error), written after its training row, so the
//! run can stop anywhere and a re-run does only the slots that did not finish (failed ones are
//! tried again). Calls go through the providers' response cache, which keeps only successful
//! replies, so an interrupted example's finished stages are not paid for twice.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::formats::read_records;
use crate::data::{Message, Role};
use crate::fsutil::write_atomic;
use crate::harness::pool::progress;
use crate::providers::chat::{
    build_chat_client, ChatClient, ChatMessage, ChatProviderConfig, ChatRequest,
};
use crate::providers::Env;
use crate::synth::config::{strict_env, template_error, SynthConfig};
use crate::synth::dedupe::{Contamination, NearDuplicates};
use crate::synth::journal::{open_derived, Journal};
use crate::synth::{hash_json, utc_now, Call, SynthError};

/// How an example slot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    /// A stage's reply failed its gate `max_attempts` times.
    Rejected,
    /// A near-duplicate of an accepted example.
    Duplicate,
    /// Too much of it is in the evaluation set.
    Contaminated,
    /// A call failed on every provider of its chain; the slot is tried again on a re-run.
    Failed,
}

impl Status {
    /// Whether a re-run skips the slot.
    pub fn is_finished(self) -> bool {
        self != Status::Failed
    }
}

/// One try of a stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// 1 for the first try, 2 for the first regeneration, ...
    pub attempt: usize,
    #[serde(flatten)]
    pub call: Call,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<usize>,
    /// The gate the reply failed (`min_words: 12 words, at least 100 wanted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// One stage of an example.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    /// The accepted reply; `None` when the stage failed or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Who answered the accepted reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub attempts: Vec<CallRecord>,
}

/// One line of `<stem>_detailed.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetailedRow {
    pub id: String,
    pub index: usize,
    pub status: Status,
    /// Why it was not accepted (`document: min_words: ...`, `near-duplicate: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The failed call's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub vars: BTreeMap<String, String>,
    pub stages: Vec<StageRecord>,
    /// The training conversation (also for duplicates and contaminated examples, to inspect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    pub started: String,
    pub finished: String,
    pub latency_s: f64,
}

/// Use of one provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProviderUse {
    /// Replies received from the network.
    pub replies: u64,
    pub cache_hits: u64,
    /// Calls this provider failed (after its retries).
    pub failures: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Counts of the slots, by their last line in the detailed file.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub accepted: usize,
    pub rejected: usize,
    pub duplicates: usize,
    pub contaminated: usize,
    pub failed: usize,
    /// Slots of `examples` not yet run.
    pub pending: usize,
}

/// `<stem>_metadata.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    /// SHA-256 of the config (without `examples`, `output`, `max_concurrency`, `cache_dir`).
    pub config_hash: String,
    /// `running`, `stopped` (Ctrl-C, a stop request) or `complete`.
    pub status: String,
    pub updated: String,
    pub examples: usize,
    pub counts: Counts,
    /// Examples not accepted, by stage and gate (`document: min_words`) or by check.
    pub rejects: BTreeMap<String, usize>,
    /// Every reply that failed a gate, regenerated or not, by stage and gate.
    pub gate_failures: BTreeMap<String, usize>,
    pub providers: BTreeMap<String, ProviderUse>,
    pub total_cost_usd: f64,
    pub files: BTreeMap<String, PathBuf>,
    /// The resolved config.
    pub parameters: Value,
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct SynthOptions {
    /// Start over when the outputs hold another config's run (or files this tool did not write).
    pub force: bool,
    /// A stop request (Ctrl-C): no new slot starts; those in flight finish and are written.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop after this many slots finished in this invocation (as a stop request does).
    pub stop_after: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct SynthOutcome {
    pub metadata: Metadata,
    /// Slots this invocation ran.
    pub ran: usize,
    pub stopped: bool,
}

/// The config's identity: what changes the examples a slot makes.
pub fn config_hash(cfg: &SynthConfig) -> String {
    let mut v = serde_json::to_value(&cfg.file).unwrap_or(Value::Null);
    if let Some(s) = v.get_mut("synth").and_then(Value::as_object_mut) {
        for k in ["examples", "output", "max_concurrency", "cache_dir"] {
            s.remove(k);
        }
    }
    hash_json(&v)
}

/// The id of slot `index`: stable across runs, so a re-run recognises finished slots.
pub fn example_id(seed: u64, index: usize) -> String {
    format!("s{seed}-{index:06}")
}

/// Runs the synth file: the slots not finished by an earlier run of the same config.
pub fn run_synth(
    cfg: &SynthConfig,
    env: &Env,
    opts: &SynthOptions,
) -> Result<SynthOutcome, SynthError> {
    let (train_path, detailed_path, meta_path) = cfg.output_paths();
    let hash = config_hash(cfg);
    prepare_outputs(
        &[&train_path, &detailed_path],
        &meta_path,
        &hash,
        opts.force,
    )?;
    let (detailed, values) = Journal::open(&detailed_path)?;
    let mut rows = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        rows.push(
            serde_json::from_value::<DetailedRow>(v).map_err(|e| crate::Error::Dataset {
                path: detailed_path.clone(),
                line: i + 1,
                msg: format!("not a detailed row ({e}); give --force to start over"),
            })?,
        );
    }
    let last = last_rows(&rows);
    let mut near = NearDuplicates::default();
    let mut accepted_lines = Vec::new();
    for row in rows.iter().filter(|r| r.status == Status::Accepted) {
        if let Some(m) = &row.messages {
            let _ = near.admit(&dedupe_text(m), 0.0);
            accepted_lines.push(training_line(m)?);
        }
    }
    let train = open_derived(&train_path, &accepted_lines)?;
    let mut files = BTreeMap::new();
    files.insert("training".to_string(), train_path.clone());
    files.insert("detailed".to_string(), detailed_path.clone());
    let chains = chains_with_defaults(cfg, &train_path);
    let names: Vec<Vec<String>> = chains
        .iter()
        .map(|c| c.iter().map(ChatProviderConfig::display_name).collect())
        .collect();
    let metadata = |rows: &[DetailedRow], status: &str| {
        summarize(cfg, &hash, rows, &names, status, files.clone())
    };
    write_metadata(&meta_path, &metadata(&rows, "running"))?;

    let clients = chains
        .iter()
        .map(|c| build_chat_client(c, env))
        .collect::<Result<Vec<_>, _>>()?;
    let contamination = match &cfg.file.synth.against {
        None => None,
        Some(path) => {
            let file = read_records(path, None)?;
            let texts: Vec<String> = file
                .records
                .iter()
                .flat_map(|(_, r)| r.conversation().into_iter().map(|m| m.content))
                .collect();
            Some(Contamination::from_texts(texts.iter().map(String::as_str)))
        }
    };
    let pipeline = Pipeline::new(cfg, clients, contamination)?;
    let seed = cfg.file.synth.seed;
    let todo: Vec<usize> = (0..cfg.file.synth.examples)
        .filter(|i| {
            !last
                .get(&example_id(seed, *i))
                .is_some_and(|s| s.is_finished())
        })
        .collect();
    let state = Mutex::new(Commit {
        detailed,
        train,
        near,
        rows,
        error: None,
    });
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let bar = progress(todo.len() as u64, "synth");
    let threshold = cfg.file.synth.dedupe_threshold;
    std::thread::scope(|scope| {
        for _ in 0..cfg.file.synth.max_concurrency.clamp(1, todo.len().max(1)) {
            scope.spawn(|| loop {
                let stop_asked = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                if stop_asked {
                    stopped.store(true, Ordering::SeqCst);
                    break;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&index) = todo.get(k) else { break };
                if opts.stop_after.is_some_and(|n| k >= n) {
                    stopped.store(true, Ordering::SeqCst);
                    break;
                }
                let row = pipeline.run(index);
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                if s.error.is_some() {
                    break;
                }
                if let Err(e) = s.commit(row, threshold) {
                    s.error = Some(e);
                    break;
                }
                done.fetch_add(1, Ordering::SeqCst);
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let state = state.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = state.error {
        return Err(e.into());
    }
    state.detailed.sync()?;
    state.train.sync()?;
    let ran = done.load(Ordering::SeqCst);
    let stopped = stopped.load(Ordering::SeqCst) && ran < todo.len();
    let meta = metadata(&state.rows, if stopped { "stopped" } else { "complete" });
    write_metadata(&meta_path, &meta)?;
    Ok(SynthOutcome {
        metadata: meta,
        ran,
        stopped,
    })
}

/// Refuses outputs that another config (or another tool) wrote, unless `force`, which removes
/// them; the metadata file holds the config's hash.
pub fn prepare_outputs(
    outputs: &[&PathBuf],
    meta_path: &PathBuf,
    hash: &str,
    force: bool,
) -> Result<(), SynthError> {
    let found = match std::fs::read(meta_path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("config_hash")?.as_str().map(String::from))
                .unwrap_or_default(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(crate::Error::io(meta_path, e).into()),
    };
    let existing: Vec<&PathBuf> = outputs.iter().copied().filter(|p| p.exists()).collect();
    let conflict = match &found {
        Some(found) if found != hash => Some(SynthError::ConfigChanged {
            path: meta_path.clone(),
            found: short(found),
            expected: short(hash),
        }),
        Some(_) => None,
        None => existing.first().map(|p| {
            crate::Error::WouldReplace {
                path: (*p).clone(),
                why: format!(
                    "exists, but {} does not say this run wrote it",
                    meta_path.display()
                ),
            }
            .into()
        }),
    };
    match (conflict, force) {
        (None, _) => Ok(()),
        (Some(e), false) => Err(e),
        (Some(_), true) => {
            for p in existing.into_iter().chain([meta_path]) {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(crate::Error::io(p, e).into()),
                }
            }
            Ok(())
        }
    }
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

pub fn write_metadata<T: Serialize>(path: &std::path::Path, meta: &T) -> Result<(), SynthError> {
    let text = serde_json::to_string_pretty(meta).map_err(|e| crate::Error::Json {
        what: path.display().to_string(),
        source: e,
    })?;
    write_atomic(path, (text + "\n").as_bytes())?;
    Ok(())
}

/// Each id's last status in file order.
fn last_rows(rows: &[DetailedRow]) -> HashMap<String, Status> {
    rows.iter().map(|r| (r.id.clone(), r.status)).collect()
}

/// The chains with the run's defaults: per-provider concurrency and the response cache.
fn chains_with_defaults(
    cfg: &SynthConfig,
    train: &std::path::Path,
) -> Vec<Vec<ChatProviderConfig>> {
    let cache = cfg
        .file
        .synth
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(train));
    cfg.chains
        .iter()
        .map(|chain| {
            chain
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    p.max_concurrency = p.max_concurrency.or(Some(cfg.file.synth.max_concurrency));
                    p.cache_dir = p.cache_dir.or_else(|| Some(cache.clone()));
                    p
                })
                .collect()
        })
        .collect()
}

/// `<dir>/<stem>_cache`.
pub fn default_cache_dir(output: &std::path::Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "synth".into());
    output.with_file_name(format!("{stem}_cache"))
}

fn training_line(messages: &[Message]) -> Result<String, crate::Error> {
    let conv = crate::data::Conversation {
        messages: messages.to_vec(),
    };
    serde_json::to_string(&conv).map_err(|e| crate::Error::Json {
        what: "a training row".into(),
        source: e,
    })
}

/// The text near-duplicates are judged on: the user turns and the reply (a shared system
/// prompt would make every pair look alike).
fn dedupe_text(messages: &[Message]) -> String {
    messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The writers, behind one lock: detailed rows commit the slots.
struct Commit {
    detailed: Journal,
    train: Journal,
    near: NearDuplicates,
    rows: Vec<DetailedRow>,
    error: Option<crate::Error>,
}

impl Commit {
    fn commit(&mut self, mut row: DetailedRow, threshold: f64) -> Result<(), crate::Error> {
        if row.status == Status::Accepted {
            let messages = row.messages.clone().unwrap_or_default();
            match self.near.admit(&dedupe_text(&messages), threshold) {
                Ok(()) => {
                    let mut line = training_line(&messages)?;
                    line.push('\n');
                    self.train.append_line(&line)?;
                }
                Err(similarity) => {
                    row.status = Status::Duplicate;
                    row.reason = Some(format!(
                        "near-duplicate: similarity {similarity:.2} to an accepted example (threshold {threshold})"
                    ));
                }
            }
        }
        self.detailed.append(&row)?;
        self.rows.push(row);
        Ok(())
    }
}

/// A stage's gate: why `text` fails it, as `gate: detail`.
fn gate(stage: &Stage, text: &str) -> Result<(), String> {
    let words = text.split_whitespace().count();
    if text.trim().is_empty() {
        return Err("empty: the reply is empty".into());
    }
    if words < stage.min_words {
        return Err(format!(
            "min_words: {words} words, at least {} wanted",
            stage.min_words
        ));
    }
    if let Some(max) = stage.max_words {
        if words > max {
            return Err(format!("max_words: {words} words, at most {max} wanted"));
        }
    }
    if let Some(re) = &stage.regex {
        if !re.is_match(text) {
            return Err(format!("regex: does not match `{}`", re.as_str()));
        }
    }
    Ok(())
}

struct Stage {
    name: String,
    min_words: usize,
    max_words: Option<usize>,
    regex: Option<Regex>,
    has_system: bool,
}

/// What runs one slot: templates, clients, checks.
struct Pipeline<'c> {
    cfg: &'c SynthConfig,
    templates: minijinja::Environment<'static>,
    stages: Vec<Stage>,
    clients: Vec<Box<dyn ChatClient>>,
    contamination: Option<Contamination>,
}

impl<'c> Pipeline<'c> {
    fn new(
        cfg: &'c SynthConfig,
        clients: Vec<Box<dyn ChatClient>>,
        contamination: Option<Contamination>,
    ) -> Result<Self, SynthError> {
        let mut env = strict_env();
        let mut add = |key: String, source: &str| {
            env.add_template_owned(key.clone(), source.to_string())
                .map_err(|e| SynthError::Template {
                    key,
                    msg: template_error(&e),
                })
        };
        let mut stages = Vec::new();
        for (i, st) in cfg.file.stage.iter().enumerate() {
            if let Some(sys) = &st.system {
                add(format!("stage.{i}.system"), sys)?;
            }
            add(format!("stage.{i}.prompt"), &st.prompt)?;
            let regex = match &st.regex {
                None => None,
                Some(r) => Some(Regex::new(r).map_err(|e| SynthError::Template {
                    key: format!("stage.{i}.regex"),
                    msg: e.to_string(),
                })?),
            };
            stages.push(Stage {
                name: st.name.clone(),
                min_words: st.min_words,
                max_words: st.max_words,
                regex,
                has_system: st.system.is_some(),
            });
        }
        if let Some(ex) = &cfg.file.example {
            for (k, t) in [
                ("system", &ex.system),
                ("user", &ex.user),
                ("assistant", &ex.assistant),
            ] {
                if let Some(t) = t {
                    add(format!("example.{k}"), t)?;
                }
            }
        }
        Ok(Pipeline {
            cfg,
            templates: env,
            stages,
            clients,
            contamination,
        })
    }

    fn render(
        &self,
        key: &str,
        ctx: &BTreeMap<String, minijinja::Value>,
    ) -> Result<String, String> {
        self.templates
            .get_template(key)
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("{key}: {}", template_error(&e)))
    }

    /// Runs slot `index` to its row; never fails (a failure is the row's status and error).
    fn run(&self, index: usize) -> DetailedRow {
        let synth = &self.cfg.file.synth;
        let id = example_id(synth.seed, index);
        let started = utc_now();
        let clock = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            synth.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut vars = BTreeMap::new();
        let mut ctx: BTreeMap<String, minijinja::Value> = BTreeMap::new();
        for (name, values) in &self.cfg.vars {
            let v = values[rng.random_range(0..values.len())].clone();
            ctx.insert(name.clone(), v.clone().into());
            vars.insert(name.clone(), v);
        }
        ctx.insert("system_prompt".into(), synth.system_prompt.clone().into());
        ctx.insert("index".into(), index.into());
        ctx.insert("id".into(), id.clone().into());
        let mut row = DetailedRow {
            id: id.clone(),
            index,
            status: Status::Accepted,
            reason: None,
            error: None,
            vars,
            stages: Vec::new(),
            messages: None,
            started,
            finished: String::new(),
            latency_s: 0.0,
        };
        let finish = |mut row: DetailedRow| {
            row.finished = utc_now();
            row.latency_s = clock.elapsed().as_secs_f64();
            row
        };
        let mut last_turn = (None, String::new(), String::new());
        for (i, stage) in self.stages.iter().enumerate() {
            let system = if stage.has_system {
                match self.render(&format!("stage.{i}.system"), &ctx) {
                    Ok(s) => Some(s).filter(|s| !s.trim().is_empty()),
                    Err(e) => return finish(fail(row, e)),
                }
            } else {
                None
            };
            let prompt = match self.render(&format!("stage.{i}.prompt"), &ctx) {
                Ok(p) => p,
                Err(e) => return finish(fail(row, e)),
            };
            let (record, outcome) = self.run_stage(i, stage, &id, system.as_deref(), &prompt);
            row.stages.push(record);
            match outcome {
                StageOutcome::Text(text) => {
                    ctx.insert(stage.name.clone(), text.clone().into());
                    last_turn = (system, prompt, text);
                }
                StageOutcome::Rejected(reason) => {
                    row.status = Status::Rejected;
                    row.reason = Some(format!("{}: {reason}", stage.name));
                    return finish(row);
                }
                StageOutcome::Failed(error) => {
                    row.status = Status::Failed;
                    row.error = Some(format!("{}: {error}", stage.name));
                    return finish(row);
                }
            }
        }
        let messages = match self.example_messages(&ctx, last_turn) {
            Ok(m) => m,
            Err(e) => return finish(fail(row, e)),
        };
        let text = messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if let Some(c) = &self.contamination {
            let share = c.overlap(&text);
            if share >= synth.contamination_threshold {
                row.status = Status::Contaminated;
                row.reason = Some(format!(
                    "contamination: {share:.2} of its 13-grams are in {} (threshold {})",
                    synth
                        .against
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    synth.contamination_threshold
                ));
            }
        }
        row.messages = Some(messages);
        finish(row)
    }

    fn example_messages(
        &self,
        ctx: &BTreeMap<String, minijinja::Value>,
        last: (Option<String>, String, String),
    ) -> Result<Vec<Message>, String> {
        let (system, user, assistant) = match &self.cfg.file.example {
            None => last,
            Some(ex) => {
                let system = match ex.system {
                    Some(_) => Some(self.render("example.system", ctx)?),
                    None => None,
                };
                (
                    system,
                    self.render("example.user", ctx)?,
                    self.render("example.assistant", ctx)?,
                )
            }
        };
        if user.trim().is_empty() || assistant.trim().is_empty() {
            return Err("example: the user turn or the reply renders empty".into());
        }
        let mut messages = Vec::new();
        if let Some(s) = system.filter(|s| !s.trim().is_empty()) {
            messages.push(Message::new(Role::System, s));
        }
        messages.push(Message::new(Role::User, user));
        messages.push(Message::new(Role::Assistant, assistant));
        Ok(messages)
    }

    fn run_stage(
        &self,
        i: usize,
        stage: &Stage,
        id: &str,
        system: Option<&str>,
        prompt: &str,
    ) -> (StageRecord, StageOutcome) {
        let mut record = StageRecord {
            name: stage.name.clone(),
            ..StageRecord::default()
        };
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(prompt));
        let max_attempts = self.cfg.file.synth.max_attempts;
        for attempt in 1..=max_attempts {
            let request = ChatRequest {
                cache_salt: Some(format!("{id}/{}", stage.name)),
                ..ChatRequest::new(messages.clone())
            };
            let (call, reply) = Call::send(self.clients[i].as_ref(), &request);
            let mut call = CallRecord {
                attempt,
                call,
                ..CallRecord::default()
            };
            let Some(reply) = reply else {
                let error = call.call.error.clone().unwrap_or_default();
                record.attempts.push(call);
                return (record, StageOutcome::Failed(error));
            };
            call.words = Some(reply.content.split_whitespace().count());
            match gate(stage, &reply.content) {
                Ok(()) => {
                    record.attempts.push(call);
                    record.text = Some(reply.content.clone());
                    record.provider = Some(reply.provider);
                    record.model = Some(reply.model);
                    return (record, StageOutcome::Text(reply.content));
                }
                Err(why) => {
                    call.rejected = Some(why.clone());
                    record.attempts.push(call);
                    if attempt == max_attempts {
                        return (record, StageOutcome::Rejected(why));
                    }
                    messages.push(ChatMessage::assistant(reply.content));
                    messages.push(ChatMessage::user(format!(
                        "Your reply does not meet a requirement ({why}). Write it again in full, \
                         meeting it, and reply with the text only."
                    )));
                }
            }
        }
        // max_attempts is at least 1, so the loop returned.
        (record, StageOutcome::Failed("no attempt was made".into()))
    }
}

enum StageOutcome {
    Text(String),
    Rejected(String),
    Failed(String),
}

fn fail(mut row: DetailedRow, error: String) -> DetailedRow {
    row.status = Status::Failed;
    row.error = Some(error);
    row
}

/// The metadata of the detailed rows: counts by each slot's last row, rejects by reason, and
/// every call's use by provider.
fn summarize(
    cfg: &SynthConfig,
    hash: &str,
    rows: &[DetailedRow],
    chain_names: &[Vec<String>],
    status: &str,
    files: BTreeMap<String, PathBuf>,
) -> Metadata {
    let mut last: HashMap<&str, &DetailedRow> = HashMap::new();
    for r in rows {
        last.insert(&r.id, r);
    }
    let mut counts = Counts::default();
    let mut rejects = BTreeMap::new();
    for r in last.values() {
        match r.status {
            Status::Accepted => counts.accepted += 1,
            Status::Rejected => counts.rejected += 1,
            Status::Duplicate => counts.duplicates += 1,
            Status::Contaminated => counts.contaminated += 1,
            Status::Failed => counts.failed += 1,
        }
        if r.status != Status::Accepted {
            let why = r.reason.as_deref().or(r.error.as_deref()).unwrap_or("");
            let key = match r.status {
                Status::Failed => format!(
                    "{}: every provider failed",
                    why.split(": ").next().unwrap_or("")
                ),
                Status::Duplicate => "near-duplicate".into(),
                Status::Contaminated => "contamination".into(),
                _ => why.splitn(3, ": ").take(2).collect::<Vec<_>>().join(": "),
            };
            *rejects.entry(key).or_default() += 1;
        }
    }
    let seed = cfg.file.synth.seed;
    counts.pending = (0..cfg.file.synth.examples)
        .filter(|i| !last.contains_key(example_id(seed, *i).as_str()))
        .count();
    let mut gate_failures = BTreeMap::new();
    let mut providers: BTreeMap<String, ProviderUse> = BTreeMap::new();
    let all_names: Vec<&String> = chain_names.iter().flatten().collect();
    for r in rows {
        for st in &r.stages {
            for c in &st.attempts {
                if let Some(why) = &c.rejected {
                    let gate = why.split(':').next().unwrap_or("");
                    *gate_failures
                        .entry(format!("{}: {gate}", st.name))
                        .or_default() += 1;
                }
                let c = &c.call;
                for f in &c.fallbacks {
                    providers.entry(f.provider.clone()).or_default().failures += 1;
                }
                if let Some(e) = &c.error {
                    for name in &all_names {
                        if e.contains(&format!("{name}: ")) {
                            providers.entry((*name).clone()).or_default().failures += 1;
                        }
                    }
                }
                if let Some(p) = &c.provider {
                    let u = providers.entry(p.clone()).or_default();
                    if c.cached {
                        u.cache_hits += 1;
                    } else {
                        u.replies += 1;
                        u.input_tokens += c.input_tokens;
                        u.output_tokens += c.output_tokens;
                        u.cost_usd += c.paid_usd();
                    }
                }
            }
        }
    }
    let total_cost_usd = providers.values().map(|u| u.cost_usd).sum();
    Metadata {
        config_hash: hash.to_string(),
        status: status.to_string(),
        updated: utc_now(),
        examples: cfg.file.synth.examples,
        counts,
        rejects,
        gate_failures,
        providers,
        total_cost_usd,
        files,
        parameters: serde_json::to_value(&cfg.file).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_say_which_rule_failed() {
        let stage = Stage {
            name: "doc".into(),
            min_words: 3,
            max_words: Some(5),
            regex: Some(Regex::new("^Dear").unwrap()),
            has_system: false,
        };
        assert!(gate(&stage, "Dear you, hello").is_ok());
        assert!(gate(&stage, "Dear you")
            .unwrap_err()
            .starts_with("min_words: 2 words"));
        assert!(gate(&stage, "Dear a b c d e")
            .unwrap_err()
            .starts_with("max_words: 6 words"));
        assert!(gate(&stage, "Hi you all")
            .unwrap_err()
            .starts_with("regex:"));
        assert!(gate(&stage, "  ").unwrap_err().starts_with("empty"));
    }

    #[test]
    fn ids_are_stable() {
        assert_eq!(example_id(7, 12), "s7-000012");
    }
}
