//! `data process`: improve the last assistant reply of each conversation, and turn the result
//! into SFT and DPO data. `feedback`: the critic chain critiques the reply, the writer chain
//! rewrites it with the critique; `alternative`: the writer writes a fresh reply. The improved
//! reply becomes an SFT row (earlier assistant turns `weight: 0`, so hosted providers train on the
//! last turn only) and the (improved, original) pair a DPO row. A pair whose replies are equal
//! is never written (distilabel's tie bug); with a `[judge]`, a pair is kept only when the
//! harness's pairwise judge prefers the improved reply in both orders, and the margin is
//! recorded. Records are committed one at a time as in [`crate::synth::generate`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::formats::{read_records, write_record, Format, Losses, PreferenceRecord, Record};
use crate::data::{Message, Role};
use crate::harness::judge::{Judge, JudgeCall};
use crate::harness::pool::progress;
use crate::harness::verdict::Verdict;
use crate::providers::chat::{
    build_chat_client, ChatClient, ChatMessage, ChatProviderConfig, ChatRequest, Role as ChatRole,
};
use crate::providers::Env;
use crate::synth::config::{strict_env, template_error, ProcessConfig};
use crate::synth::generate::{default_cache_dir, prepare_outputs, write_metadata};
use crate::synth::journal::{open_derived, Journal};
use crate::synth::{hash_json, utc_now, Call, SynthError};

/// How the improved reply is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// A critique, then a rewrite with it.
    #[serde(rename = "feedback_based")]
    Feedback,
    /// A fresh reply.
    #[serde(rename = "alternative")]
    Alternative,
}

impl Method {
    /// The name records use (the seeds' `generation_method`).
    pub fn record_name(self) -> &'static str {
        match self {
            Method::Feedback => "feedback_based",
            Method::Alternative => "alternative",
        }
    }
}

/// How a conversation's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A different reply, kept (by the judge too, when there is one): an SFT and a DPO row.
    Improved,
    /// The new reply equals the original: no pair.
    Unchanged,
    /// The judge did not prefer the new reply in both orders: no pair.
    JudgeRejected,
    /// A call failed on every provider of its chain; tried again on a re-run.
    Failed,
}

/// One call of a record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCall {
    /// `critic` or `writer`.
    pub role: String,
    #[serde(flatten)]
    pub call: Call,
}

/// The judge's view of a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// The verdict with the improved reply shown as A, and shown as B.
    pub improved_as_a: Option<String>,
    pub improved_as_b: Option<String>,
    /// The improved reply's mean score over both orders, from -1 (much worse twice) to 1.
    pub margin: Option<f64>,
    pub kept: bool,
    #[serde(default)]
    pub calls: Vec<Value>,
}

/// One line of the output: the seeds' record, with how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub conversation_id: String,
    /// True when an SFT and a DPO row were written for it.
    pub improved: bool,
    pub generation_method: Method,
    pub status: Outcome,
    pub original_assistant_response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub improved_assistant_response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critique: Option<String>,
    /// The messages before the improved reply.
    pub conversation_context: Vec<Message>,
    pub improvement_timestamp: String,
    /// The input line.
    pub line: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeRecord>,
    pub calls: Vec<ProcessCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the rows go.
#[derive(Debug, Clone)]
pub struct ProcessPaths {
    pub output: PathBuf,
    /// The SFT and DPO files per method.
    pub sft: BTreeMap<&'static str, PathBuf>,
    pub dpo: BTreeMap<&'static str, PathBuf>,
    pub metadata: PathBuf,
}

/// What to process, and how.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub methods: Vec<Method>,
    /// The SFT and DPO files; with two methods each gets the method before its extension.
    pub sft: Option<PathBuf>,
    pub dpo: Option<PathBuf>,
    pub dpo_format: Format,
    /// The first N conversations only.
    pub limit: Option<usize>,
    /// Overrides `process.delay_secs`.
    pub delay_secs: Option<f64>,
    pub force: bool,
    pub stop: Option<Arc<AtomicBool>>,
    pub stop_after: Option<usize>,
}

/// Counts by outcome, from each item's last record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessCounts {
    pub improved: usize,
    pub unchanged: usize,
    pub judge_rejected: usize,
    pub failed: usize,
    pub pending: usize,
}

/// `<out stem>_metadata.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMetadata {
    pub config_hash: String,
    pub status: String,
    pub updated: String,
    pub input: PathBuf,
    pub methods: Vec<Method>,
    pub counts: BTreeMap<&'static str, ProcessCounts>,
    pub total_cost_usd: f64,
    pub files: BTreeMap<String, PathBuf>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct ProcessOutcome {
    pub metadata: ProcessMetadata,
    pub ran: usize,
    pub stopped: bool,
}

/// `dir/sft.jsonl` with `feedback_based` -> `dir/sft.feedback_based.jsonl`.
fn with_method(path: &Path, method: Method) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{}{ext}", method.record_name()))
}

impl ProcessOptions {
    pub fn paths(&self) -> ProcessPaths {
        let per = |p: &Option<PathBuf>| -> BTreeMap<&'static str, PathBuf> {
            let Some(p) = p else { return BTreeMap::new() };
            self.methods
                .iter()
                .map(|m| {
                    let path = if self.methods.len() > 1 {
                        with_method(p, *m)
                    } else {
                        p.clone()
                    };
                    (m.record_name(), path)
                })
                .collect()
        };
        let (_, _, metadata) = crate::synth::config::sibling_paths(&self.output);
        ProcessPaths {
            output: self.output.clone(),
            sft: per(&self.sft),
            dpo: per(&self.dpo),
            metadata,
        }
    }
}

/// A conversation to improve.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    line: usize,
    context: Vec<Message>,
    original: String,
    method: Method,
}

/// A conversation's id, input line, the messages before its last reply, and that reply.
type Source = (String, usize, Vec<Message>, String);

/// The conversations of `input`: each one's id (`conversation_id`, else `id`, else its line),
/// the messages before its last assistant reply, and that reply.
fn read_conversations(input: &Path, limit: Option<usize>) -> Result<Vec<Source>, SynthError> {
    let file = read_records(input, None)?;
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, record) in file.records.iter().take(limit.unwrap_or(usize::MAX)) {
        let err = |msg: String| SynthError::Input {
            file: input.to_path_buf(),
            line: *line,
            msg,
        };
        let Record::Chat(chat) = record else {
            return Err(err(format!(
                "a {} line is a preference pair; `data process` improves conversations",
                file.format
            )));
        };
        let id = ["conversation_id", "id"]
            .iter()
            .find_map(|k| match chat.extra.get(*k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| format!("line-{line}"));
        if let Some(first) = seen.insert(id.clone(), *line) {
            return Err(err(format!(
                "conversation_id `{id}` is also on line {first}; ids must be unique"
            )));
        }
        let Some(last) = chat
            .messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
        else {
            return Err(err("no assistant reply to improve".into()));
        };
        if chat.messages[last].content.trim().is_empty() {
            return Err(err(format!(
                "messages[{last}].content: the reply to improve is empty"
            )));
        }
        out.push((
            id,
            *line,
            chat.messages[..last].to_vec(),
            chat.messages[last].content.clone(),
        ));
    }
    Ok(out)
}

/// The SFT row and the DPO row of an improved record.
fn derived_rows(r: &ProcessRecord, dpo_format: Format) -> Result<(String, String), SynthError> {
    let improved = r.improved_assistant_response.clone().unwrap_or_default();
    let mut messages: Vec<Message> = r
        .conversation_context
        .iter()
        .map(|m| Message {
            weight: (m.role == Role::Assistant).then_some(0),
            ..m.clone()
        })
        .collect();
    messages.push(Message::new(Role::Assistant, improved.clone()));
    let sft = serde_json::to_string(&crate::data::Conversation { messages }).map_err(|e| {
        crate::Error::Json {
            what: "an SFT row".into(),
            source: e,
        }
    })?;
    let pair = Record::Preference(PreferenceRecord {
        prompt: r
            .conversation_context
            .iter()
            .map(|m| Message::new(m.role, m.content.clone()))
            .collect(),
        chosen: improved,
        rejected: r.original_assistant_response.clone(),
        extra: Default::default(),
    });
    let dpo = write_record(dpo_format, &pair, &mut Losses::default()).map_err(|msg| {
        SynthError::Input {
            file: PathBuf::from(dpo_format.name()),
            line: r.line,
            msg,
        }
    })?;
    Ok((sft, dpo))
}

/// Runs the conversations of `opts.input` not finished by an earlier run.
pub fn run_process(
    cfg: &ProcessConfig,
    env: &Env,
    opts: &ProcessOptions,
) -> Result<ProcessOutcome, SynthError> {
    if opts.dpo_format.kind() != crate::data::formats::Kind::Preference {
        return Err(crate::Error::Config(format!(
            "--dpo-format {}: not a preference format (dpo-openai, dpo-trl or dpo-seed)",
            opts.dpo_format
        ))
        .into());
    }
    let paths = opts.paths();
    let mut identity = serde_json::to_value(&cfg.file).unwrap_or(Value::Null);
    if let Some(p) = identity.get_mut("process").and_then(Value::as_object_mut) {
        for k in ["max_concurrency", "delay_secs", "cache_dir"] {
            p.remove(k);
        }
    }
    let hash = hash_json(&serde_json::json!({
        "config": identity,
        "input": opts.input,
        "dpo_format": opts.dpo_format.name(),
    }));
    let mut outputs: Vec<&PathBuf> = vec![&paths.output];
    outputs.extend(paths.sft.values());
    outputs.extend(paths.dpo.values());
    prepare_outputs(&outputs, &paths.metadata, &hash, opts.force)?;
    let conversations = read_conversations(&opts.input, opts.limit)?;

    let (journal, values) = Journal::open(&paths.output)?;
    let mut records = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        records.push(serde_json::from_value::<ProcessRecord>(v).map_err(|e| {
            crate::Error::Dataset {
                path: paths.output.clone(),
                line: i + 1,
                msg: format!("not a process record ({e}); give --force to start over"),
            }
        })?);
    }
    let mut expected: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut finished: HashSet<(String, Method)> = HashSet::new();
    for r in &records {
        if r.status != Outcome::Failed {
            finished.insert((r.conversation_id.clone(), r.generation_method));
        }
        if r.improved {
            let (sft, dpo) = derived_rows(r, opts.dpo_format)?;
            let e = expected
                .entry(r.generation_method.record_name())
                .or_default();
            e.0.push(sft);
            e.1.push(dpo);
        }
    }
    let mut sft_files = BTreeMap::new();
    let mut dpo_files = BTreeMap::new();
    for m in &opts.methods {
        let name = m.record_name();
        let e = expected.get(name).cloned().unwrap_or_default();
        if let Some(p) = paths.sft.get(name) {
            sft_files.insert(name, open_derived(p, &e.0)?);
        }
        if let Some(p) = paths.dpo.get(name) {
            dpo_files.insert(name, open_derived(p, &e.1)?);
        }
    }
    let mut files = BTreeMap::new();
    files.insert("records".to_string(), paths.output.clone());
    for (m, p) in &paths.sft {
        files.insert(format!("sft.{m}"), p.clone());
    }
    for (m, p) in &paths.dpo {
        files.insert(format!("dpo.{m}"), p.clone());
    }
    let meta = |records: &[ProcessRecord], status: &str| ProcessMetadata {
        config_hash: hash.clone(),
        status: status.into(),
        updated: utc_now(),
        input: opts.input.clone(),
        methods: opts.methods.clone(),
        counts: count(records, &conversations, &opts.methods),
        total_cost_usd: records
            .iter()
            .flat_map(|r| &r.calls)
            .map(|c| c.call.paid_usd())
            .sum(),
        files: files.clone(),
    };
    write_metadata(&paths.metadata, &meta(&records, "running"))?;

    let cache = cfg
        .file
        .process
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_cache_dir(&paths.output));
    let with_defaults = |chain: &[ChatProviderConfig]| -> Vec<ChatProviderConfig> {
        chain
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.max_concurrency = p.max_concurrency.or(Some(cfg.file.process.max_concurrency));
                p.cache_dir = p.cache_dir.or_else(|| Some(cache.clone()));
                p
            })
            .collect()
    };
    let critic = build_chat_client(&with_defaults(&cfg.critic), env)?;
    let writer = build_chat_client(&with_defaults(&cfg.writer), env)?;
    let judge = match &cfg.judge {
        None => None,
        Some(chain) => {
            let template = match cfg.file.judge.as_ref().and_then(|j| j.template.as_ref()) {
                None => None,
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| crate::Error::io(p, e))?),
            };
            let client = build_chat_client(&with_defaults(chain), env)?;
            Some(Judge::new(client, template, None, Vec::new())?)
        }
    };
    let worker = Worker::new(cfg, critic, writer, judge, opts)?;
    let items: Vec<Item> = conversations
        .iter()
        .flat_map(|(id, line, context, original)| {
            opts.methods.iter().map(move |m| Item {
                id: id.clone(),
                line: *line,
                context: context.clone(),
                original: original.clone(),
                method: *m,
            })
        })
        .filter(|it| !finished.contains(&(it.id.clone(), it.method)))
        .collect();

    struct State {
        journal: Journal,
        sft: BTreeMap<&'static str, Journal>,
        dpo: BTreeMap<&'static str, Journal>,
        records: Vec<ProcessRecord>,
        error: Option<SynthError>,
    }
    let state = Mutex::new(State {
        journal,
        sft: sft_files,
        dpo: dpo_files,
        records,
        error: None,
    });
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let bar = progress(items.len() as u64, "process");
    std::thread::scope(|scope| {
        for _ in 0..cfg
            .file
            .process
            .max_concurrency
            .clamp(1, items.len().max(1))
        {
            scope.spawn(|| loop {
                if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                    stopped.store(true, Ordering::SeqCst);
                    break;
                }
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(k) else { break };
                if opts.stop_after.is_some_and(|n| k >= n) {
                    stopped.store(true, Ordering::SeqCst);
                    break;
                }
                let record = worker.run(item);
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                if s.error.is_some() {
                    break;
                }
                let committed = (|| -> Result<(), SynthError> {
                    if record.improved {
                        let (sft, dpo) = derived_rows(&record, opts.dpo_format)?;
                        let name = record.generation_method.record_name();
                        if let Some(j) = s.sft.get_mut(name) {
                            j.append_line(&(sft + "\n"))?;
                        }
                        if let Some(j) = s.dpo.get_mut(name) {
                            j.append_line(&(dpo + "\n"))?;
                        }
                    }
                    s.journal.append(&record)?;
                    Ok(())
                })();
                if let Err(e) = committed {
                    s.error = Some(e);
                    break;
                }
                s.records.push(record);
                done.fetch_add(1, Ordering::SeqCst);
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let state = state.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(e) = state.error {
        return Err(e);
    }
    state.journal.sync()?;
    for j in state.sft.values().chain(state.dpo.values()) {
        j.sync()?;
    }
    let ran = done.load(Ordering::SeqCst);
    let stopped = stopped.load(Ordering::SeqCst) && ran < items.len();
    let metadata = meta(&state.records, if stopped { "stopped" } else { "complete" });
    write_metadata(&paths.metadata, &metadata)?;
    Ok(ProcessOutcome {
        metadata,
        ran,
        stopped,
    })
}

fn count(
    records: &[ProcessRecord],
    conversations: &[Source],
    methods: &[Method],
) -> BTreeMap<&'static str, ProcessCounts> {
    let mut last: HashMap<(&str, Method), Outcome> = HashMap::new();
    for r in records {
        last.insert((&r.conversation_id, r.generation_method), r.status);
    }
    methods
        .iter()
        .map(|m| {
            let mut c = ProcessCounts::default();
            for (id, ..) in conversations {
                match last.get(&(id.as_str(), *m)) {
                    None => c.pending += 1,
                    Some(Outcome::Improved) => c.improved += 1,
                    Some(Outcome::Unchanged) => c.unchanged += 1,
                    Some(Outcome::JudgeRejected) => c.judge_rejected += 1,
                    Some(Outcome::Failed) => c.failed += 1,
                }
            }
            (m.record_name(), c)
        })
        .collect()
}

/// The chains and templates every item uses.
struct Worker {
    critic: Box<dyn ChatClient>,
    writer: Box<dyn ChatClient>,
    judge: Option<Judge>,
    templates: minijinja::Environment<'static>,
    delay: Duration,
}

impl Worker {
    fn new(
        cfg: &ProcessConfig,
        critic: Box<dyn ChatClient>,
        writer: Box<dyn ChatClient>,
        judge: Option<Judge>,
        opts: &ProcessOptions,
    ) -> Result<Self, SynthError> {
        let mut env = strict_env();
        let f = &cfg.file;
        for (key, source) in [
            ("critic.system", f.critic.system.as_deref()),
            ("critic.prompt", Some(f.critic.prompt.as_str())),
            ("writer.system", f.writer.system.as_deref()),
            (
                "writer.feedback_prompt",
                Some(f.writer.feedback_prompt.as_str()),
            ),
            (
                "writer.alternative_prompt",
                Some(f.writer.alternative_prompt.as_str()),
            ),
        ] {
            if let Some(source) = source {
                env.add_template_owned(key, source.to_string())
                    .map_err(|e| SynthError::Template {
                        key: key.into(),
                        msg: template_error(&e),
                    })?;
            }
        }
        let delay = opts.delay_secs.unwrap_or(f.process.delay_secs);
        Ok(Worker {
            critic,
            writer,
            judge,
            templates: env,
            delay: Duration::from_secs_f64(delay.max(0.0)),
        })
    }

    fn render(&self, key: &str, ctx: &minijinja::Value) -> Result<Option<String>, String> {
        match self.templates.get_template(key) {
            Err(_) => Ok(None),
            Ok(t) => t
                .render(ctx)
                .map(|s| Some(s).filter(|s| !s.trim().is_empty()))
                .map_err(|e| format!("{key}: {}", template_error(&e))),
        }
    }

    /// Sends the rendered `system` and `prompt` templates through `client`.
    fn ask(
        &self,
        role: &str,
        client: &dyn ChatClient,
        keys: (&str, &str),
        ctx: &minijinja::Value,
        calls: &mut Vec<ProcessCall>,
    ) -> Result<String, String> {
        let system = self.render(keys.0, ctx)?;
        let prompt = self.render(keys.1, ctx)?.unwrap_or_default();
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(prompt));
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let (call, reply) = Call::send(client, &ChatRequest::new(messages));
        let error = call.error.clone();
        calls.push(ProcessCall {
            role: role.into(),
            call,
        });
        match reply {
            Some(r) if r.content.trim().is_empty() => Err(format!("{role}: the reply is empty")),
            Some(r) => Ok(r.content),
            None => Err(format!("{role}: {}", error.unwrap_or_default())),
        }
    }

    /// Processes one item to its record; never fails (a failure is the record's status).
    fn run(&self, item: &Item) -> ProcessRecord {
        let mut record = ProcessRecord {
            conversation_id: item.id.clone(),
            improved: false,
            generation_method: item.method,
            status: Outcome::Failed,
            original_assistant_response: item.original.clone(),
            improved_assistant_response: None,
            critique: None,
            conversation_context: item.context.clone(),
            improvement_timestamp: String::new(),
            line: item.line,
            judge: None,
            calls: Vec::new(),
            error: None,
        };
        let transcript = item
            .context
            .iter()
            .map(|m| format!("{}: {}", title(m.role), m.content))
            .collect::<Vec<_>>()
            .join("\n\n");
        let conversation: Vec<BTreeMap<&str, String>> = item
            .context
            .iter()
            .map(|m| BTreeMap::from([("role", m.role.to_string()), ("content", m.content.clone())]))
            .collect();
        let mut ctx = BTreeMap::from([
            (
                "conversation",
                minijinja::Value::from_serialize(&conversation),
            ),
            ("transcript", transcript.into()),
            ("response", item.original.clone().into()),
        ]);
        let mut calls = Vec::new();
        let outcome = (|| -> Result<String, String> {
            match item.method {
                Method::Feedback => {
                    let critique = self.ask(
                        "critic",
                        self.critic.as_ref(),
                        ("critic.system", "critic.prompt"),
                        &minijinja::Value::from_serialize(&ctx),
                        &mut calls,
                    )?;
                    record.critique = Some(critique.clone());
                    ctx.insert("critique", critique.into());
                    self.ask(
                        "writer",
                        self.writer.as_ref(),
                        ("writer.system", "writer.feedback_prompt"),
                        &minijinja::Value::from_serialize(&ctx),
                        &mut calls,
                    )
                }
                Method::Alternative => self.ask(
                    "writer",
                    self.writer.as_ref(),
                    ("writer.system", "writer.alternative_prompt"),
                    &minijinja::Value::from_serialize(&ctx),
                    &mut calls,
                ),
            }
        })();
        record.calls = calls;
        record.improvement_timestamp = utc_now();
        let improved = match outcome {
            Ok(text) => text,
            Err(e) => {
                record.error = Some(e);
                return record;
            }
        };
        record.improved_assistant_response = Some(improved.clone());
        if improved.trim() == item.original.trim() {
            record.status = Outcome::Unchanged;
            return record;
        }
        if let Some(judge) = &self.judge {
            let prompt: Vec<ChatMessage> = item
                .context
                .iter()
                .map(|m| ChatMessage {
                    role: match m.role {
                        Role::System => ChatRole::System,
                        Role::User => ChatRole::User,
                        Role::Assistant => ChatRole::Assistant,
                    },
                    content: m.content.clone(),
                })
                .collect();
            let j = judge.compare(&prompt, &improved, &item.original);
            let calls: Vec<Value> = j
                .calls
                .iter()
                .map(|c: &JudgeCall| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect();
            let (a, b) = (j.first_as_a, j.first_as_b);
            if let Some(err) = j.calls.iter().find_map(|c| c.error.clone()) {
                if a.is_none() || b.is_none() {
                    record.error = Some(format!("judge: {err}"));
                    record.judge = Some(JudgeRecord {
                        improved_as_a: a.map(|v| v.label().into()),
                        improved_as_b: b.map(|v| v.label().into()),
                        margin: None,
                        kept: false,
                        calls,
                    });
                    return record;
                }
            }
            let (Some(a), Some(b)) = (a, b) else {
                record.error = Some("judge: no verdict".into());
                return record;
            };
            // Improved wins shown as A (direction +1) and shown as B (direction -1).
            let kept = a.direction() == 1 && b.direction() == -1;
            let margin = (level(a) + level(b.swapped())) / 2.0;
            record.judge = Some(JudgeRecord {
                improved_as_a: Some(a.label().into()),
                improved_as_b: Some(b.label().into()),
                margin: Some(margin),
                kept,
                calls,
            });
            if !kept {
                record.status = Outcome::JudgeRejected;
                return record;
            }
        }
        record.status = Outcome::Improved;
        record.improved = true;
        record
    }
}

/// A verdict's score for the reply shown as A.
fn level(v: Verdict) -> f64 {
    match v {
        Verdict::MuchBetterA => 1.0,
        Verdict::BetterA => 0.5,
        Verdict::Tie => 0.0,
        Verdict::BetterB => -0.5,
        Verdict::MuchBetterB => -1.0,
    }
}

fn title(role: Role) -> &'static str {
    match role {
        Role::System => "System",
        Role::User => "User",
        Role::Assistant => "Assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_files_get_the_method_before_the_extension() {
        assert_eq!(
            with_method(Path::new("d/sft.jsonl"), Method::Feedback),
            Path::new("d/sft.feedback_based.jsonl")
        );
    }

    #[test]
    fn derived_rows_weight_earlier_replies_zero_and_never_pair_equal_texts() {
        let r = ProcessRecord {
            conversation_id: "c".into(),
            improved: true,
            generation_method: Method::Alternative,
            status: Outcome::Improved,
            original_assistant_response: "old".into(),
            improved_assistant_response: Some("new".into()),
            critique: None,
            conversation_context: vec![
                Message::new(Role::User, "a"),
                Message::new(Role::Assistant, "b"),
                Message::new(Role::User, "c"),
            ],
            improvement_timestamp: String::new(),
            line: 1,
            judge: None,
            calls: Vec::new(),
            error: None,
        };
        let (sft, dpo) = derived_rows(&r, Format::DpoOpenAi).unwrap();
        let sft: Value = serde_json::from_str(&sft).unwrap();
        assert_eq!(sft["messages"][1]["weight"], 0);
        assert_eq!(sft["messages"][3]["content"], "new");
        assert!(sft["messages"][3].get("weight").is_none());
        let dpo: Value = serde_json::from_str(&dpo).unwrap();
        assert_eq!(dpo["preferred_output"][0]["content"], "new");
        assert_eq!(dpo["non_preferred_output"][0]["content"], "old");
        assert_eq!(dpo["input"]["messages"].as_array().unwrap().len(), 3);
    }
}
