//! Property tests over every parser a user's file reaches: the job TOML with `--set`, the JSONL
//! and messages-JSON datasets, chat templates (built-in and user-written), safetensors and GGUF
//! headers, and PEFT adapter folders. Inputs are random or mutated valid files; each must give
//! `Ok` or an `Err` with a message, never a panic. `LORA_TRAIN_FUZZ_CASES` sets the cases per
//! batch (default 24), `LORA_TRAIN_FUZZ_SECS` repeats batches for that long per target,
//! `LORA_TRAIN_FUZZ_SEED` picks the first seed, `LORA_TRAIN_FUZZ_LAST=FILE` keeps each input in
//! FILE before it runs (for an abort); `scripts/fuzz.sh` runs them for minutes.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

use lora_train::config::job::schema::all_names;
use lora_train::config::job::Section;
use lora_train::config::JobConfig;
use lora_train::data::dataset::{
    parse_messages_json, read_jsonl, read_jsonl_numbered, Message, Role,
};
use lora_train::data::formats::{read_records, write_record, Format, Losses};
use lora_train::data::stats::file_stats;
use lora_train::data::validate::validate_file;
use lora_train::data::ChatTemplate;
use lora_train::lora::peft::PeftAdapterConfig;
use lora_train::model::{self, LoadOptions};

// ---------------------------------------------------------------------------------------------
// The driver: batches of proptest cases under a time budget, with counts printed per target.

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `test` on values of `strategy`: one batch of `LORA_TRAIN_FUZZ_CASES` (or
/// `PROPTEST_CASES`) cases, or batches until `LORA_TRAIN_FUZZ_SECS` have passed. A panic or a
/// failed check fails the test with the shrunk input and the seed of its batch.
fn fuzz<S>(target: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_u64("LORA_TRAIN_FUZZ_CASES")
        .or_else(|| env_u64("PROPTEST_CASES"))
        .unwrap_or(24)
        .max(1) as u32;
    let budget = env_u64("LORA_TRAIN_FUZZ_SECS").map(Duration::from_secs);
    let first_seed = env_u64("LORA_TRAIN_FUZZ_SEED").unwrap_or(0x10_4a);
    let last_input = std::env::var_os("LORA_TRAIN_FUZZ_LAST").map(PathBuf::from);
    let start = Instant::now();
    let mut executed = 0u64;
    for batch in 0.. {
        let seed = first_seed.wrapping_add(batch);
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        seed_bytes[8..16].copy_from_slice(&(target.len() as u64).to_le_bytes());
        for (i, b) in target.bytes().enumerate() {
            seed_bytes[16 + i % 16] ^= b;
        }
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2048,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let run = |value: S::Value| {
            if let Some(last) = &last_input {
                // Kept before the case runs: an abort (out of memory, stack overflow) cannot be
                // shrunk or reported, but leaves its input here.
                let _ = std::fs::write(last, format!("{target}, seed {seed}:\n{value:#?}\n"));
            }
            test(value)
        };
        if let Err(e) = runner.run(&strategy, run) {
            panic!("fuzz {target}: failed in the batch with seed {seed} (LORA_TRAIN_FUZZ_SEED={seed}): {e}");
        }
        executed += u64::from(cases);
        match budget {
            Some(b) if start.elapsed() < b => continue,
            _ => break,
        }
    }
    eprintln!(
        "fuzz {target}: {executed} cases in {:.1} s, 0 panics",
        start.elapsed().as_secs_f64()
    );
}

/// An `Err` must say something.
fn check_result<T>(what: &str, r: lora_train::Result<T>) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                !msg.trim().is_empty(),
                "{what}: an empty error message: {e:?}"
            );
            Ok(None)
        }
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp folder")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write a fuzz input");
}

// ---------------------------------------------------------------------------------------------
// Byte mutations of a valid file.

#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Copies a run of the input over another place (duplicated keys, lengths, tags).
    Copy(Index, Index, usize),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Edit::Flip(i, bit)),
        3 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), prop::collection::vec(interesting_byte(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<Index>(), any::<Index>(), 1usize..16).prop_map(|(a, b, n)| Edit::Copy(a, b, n)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(b"\0\xff\x7f\x80\"'{}[]:,=.\\\n\r\t 0123456789-+eE#%".to_vec()),
    ]
}

fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 0..=max)
}

/// Applies `edits` to `bytes`, each at a place chosen within `[0, window)` (or the whole input).
fn mutate(bytes: &[u8], edits: &[Edit], window: Option<usize>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for e in edits {
        let len = out.len();
        let span = window.unwrap_or(len).min(len);
        let at = |i: &Index| if span == 0 { 0 } else { i.index(span) };
        match e {
            Edit::Flip(i, bit) if len > 0 => out[at(i)] ^= 1 << bit,
            Edit::Set(i, b) if len > 0 => out[at(i)] = *b,
            Edit::Insert(i, b) => {
                let p = if span == 0 { 0 } else { i.index(span + 1) };
                out.splice(p..p, b.iter().copied());
            }
            Edit::Delete(i, n) if len > 0 => {
                let p = at(i);
                out.drain(p..(p + n).min(len));
            }
            Edit::Copy(from, to, n) if len > 0 => {
                let (f, t) = (from.index(len), at(to));
                let n = (*n).min(len - f).min(len - t);
                let run = out[f..f + n].to_vec();
                out[t..t + n].copy_from_slice(&run);
            }
            Edit::Truncate(i) => out.truncate(if len == 0 { 0 } else { i.index(len + 1) }),
            _ => {}
        }
    }
    out
}

fn text_atom() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_ ]{0,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(24).collect()),
        1 => prop::sample::select(vec![
            "", " ", "\n", "\u{feff}", "\u{0}", "é", "🦀", "\"", "'", "\\", "{{", "}}", "{%", "%}",
            "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<bos>", "\u{2028}", "\r\n",
        ])
        .prop_map(String::from),
    ]
}

// ---------------------------------------------------------------------------------------------
// The job file and `--set`.

fn job_bases() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("configs"))
        .expect("configs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.push(fixtures().join("roundtrip/smollm2.toml"));
    files.push(fixtures().join("roundtrip/tiny-gemma3.toml"));
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("a job file"))
        .collect()
}

fn job_key_names() -> Vec<String> {
    let mut names = Vec::new();
    all_names(<JobConfig as Section>::KEYS, "", &mut names);
    names.into_iter().map(|(n, _)| n).collect()
}

const TOML_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "-inf",
    "+nan",
    "1.5",
    "-0.0",
    "0.1",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "\"all-linear\"",
    "[]",
    "[\"q_proj\"]",
    "[1, 2]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "\"cpu\"",
    "\"cuda:99\"",
    "\"auto\"",
    "\"bf16\"",
    "\"nf4\"",
    "\"last_assistant\"",
    "\"../x\"",
    "'''multi\nline'''",
    "0x10",
    "1_000",
    "\"0.1\"",
    "[[]]",
    "\"cosine\"",
    "\"steps\"",
    "\"\\u0000\"",
    "4294967296",
    "65536",
];

const TOML_HEADERS: &[&str] = &[
    "[model]",
    "[lora]",
    "[data]",
    "[train]",
    "[output]",
    "[report]",
    "[hosted]",
    "[eval]",
    "[[eval.check]]",
    "[[model]]",
    "[train.x]",
    "[]",
    "[data",
    "[a.b.c]",
    "[\"model\"]",
];

#[derive(Debug, Clone)]
enum LineEdit {
    ReplaceValue(Index, usize),
    Delete(Index),
    Duplicate(Index),
    InsertKey(Index, Index, usize),
    InsertHeader(Index, usize),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let v = 0..TOML_VALUES.len();
    prop_oneof![
        4 => (any::<Index>(), v.clone()).prop_map(|(i, v)| LineEdit::ReplaceValue(i, v)),
        1 => any::<Index>().prop_map(LineEdit::Delete),
        1 => any::<Index>().prop_map(LineEdit::Duplicate),
        2 => (any::<Index>(), any::<Index>(), v).prop_map(|(i, k, v)| LineEdit::InsertKey(i, k, v)),
        1 => (any::<Index>(), 0..TOML_HEADERS.len()).prop_map(|(i, h)| LineEdit::InsertHeader(i, h)),
    ]
}

fn apply_line_edits(text: &str, edits: &[LineEdit], keys: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            LineEdit::ReplaceValue(i, v) => {
                // The next `key = value` line at or after the chosen one.
                let start = i.index(n);
                if let Some(j) = (start..n)
                    .chain(0..start)
                    .find(|&j| lines[j].contains(" = "))
                {
                    let key = lines[j].split(" = ").next().unwrap_or("").to_string();
                    lines[j] = format!("{key} = {}", TOML_VALUES[*v]);
                }
            }
            LineEdit::Delete(i) => {
                lines.remove(i.index(n));
            }
            LineEdit::Duplicate(i) => {
                let j = i.index(n);
                lines.insert(j, lines[j].clone());
            }
            LineEdit::InsertKey(i, k, v) => {
                let key = k.get(keys);
                let leaf = key.rsplit('.').next().unwrap_or(key);
                lines.insert(i.index(n + 1), format!("{leaf} = {}", TOML_VALUES[*v]));
            }
            LineEdit::InsertHeader(i, h) => {
                lines.insert(i.index(n + 1), TOML_HEADERS[*h].to_string());
            }
        }
    }
    lines.join("\n")
}

fn set_override(keys: Vec<String>) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => prop::sample::select(keys),
        1 => "[a-z_.]{0,16}",
        1 => text_atom(),
    ];
    let value = prop_oneof![
        4 => prop::sample::select(TOML_VALUES).prop_map(String::from),
        1 => text_atom(),
    ];
    let sep = prop::sample::select(vec!["=", "=", "=", " = ", "", "==", ":"]);
    (key, sep, value).prop_map(|(k, s, v)| format!("{k}{s}{v}"))
}

#[test]
fn job_toml_and_set() {
    let bases = job_bases();
    let keys = job_key_names();
    let dir = tempdir();
    let path = dir.path().join("job.toml");
    let strategy = (
        0..bases.len(),
        prop::collection::vec(line_edit(), 0..6),
        edits(3),
        prop::collection::vec(set_override(keys.clone()), 0..4),
    );
    fuzz(
        "job_toml_and_set",
        strategy,
        |(base, lines, bytes, sets)| {
            let text = apply_line_edits(&bases[base], &lines, &keys);
            let text = String::from_utf8_lossy(&mutate(text.as_bytes(), &bytes, None)).into_owned();
            if let Some(job) = check_result("job", JobConfig::load_str(&text, &path, &sets))? {
                check_result("job as TOML", job.to_toml_string())?;
                check_result("validate", job.validate())?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Datasets: JSONL conversations and a messages JSON file.

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        prop::sample::select(vec![0i64, 1, 2, -1]).prop_map(Value::from),
        text_atom().prop_map(Value::from),
    ]
}

fn json_any() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text_atom(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn role_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(vec!["system", "user", "assistant"]).prop_map(Value::from),
        1 => prop::sample::select(vec!["tool", "", "Assistant", "bot"]).prop_map(Value::from),
        1 => json_leaf(),
    ]
}

fn message_value() -> impl Strategy<Value = Value> {
    let content = prop_oneof![6 => text_atom().prop_map(Value::from), 1 => json_any()];
    let weight = prop::option::weighted(0.2, json_leaf());
    prop_oneof![
        12 => (role_value(), content, weight, any::<bool>()).prop_map(|(r, c, w, extra)| {
            let mut m = serde_json::Map::new();
            m.insert("role".into(), r);
            m.insert("content".into(), c);
            if let Some(w) = w {
                m.insert("weight".into(), w);
            }
            if extra {
                m.insert("name".into(), json!("x"));
            }
            Value::Object(m)
        }),
        1 => json_any(),
    ]
}

fn conversation_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        10 => prop::collection::vec(message_value(), 0..5).prop_map(|m| json!({ "messages": m })),
        1 => json_any(),
    ]
}

#[test]
fn dataset_readers() {
    let dir = tempdir();
    let jsonl = dir.path().join("train.jsonl");
    let messages = dir.path().join("messages.json");
    let chats = std::fs::read(fixtures().join("chats.jsonl")).expect("chats.jsonl");
    let strategy = (
        prop_oneof![
            3 => prop::collection::vec(conversation_value(), 0..5).prop_map(|lines| {
                let mut text = String::new();
                for l in lines {
                    text.push_str(&l.to_string());
                    text.push('\n');
                }
                text.into_bytes()
            }),
            1 => Just(chats),
        ],
        any::<bool>(),
        edits(4),
        prop_oneof![
            prop::collection::vec(message_value(), 0..5).prop_map(Value::Array),
            conversation_value(),
        ],
        edits(3),
    );
    fuzz(
        "dataset_readers",
        strategy,
        |(lines, crlf, line_edits, msgs, msg_edits)| {
            let mut bytes = mutate(&lines, &line_edits, None);
            if crlf {
                bytes = String::from_utf8_lossy(&bytes)
                    .replace('\n', "\r\n")
                    .into_bytes();
            }
            write(&jsonl, &bytes);
            if let Some(convs) = check_result("read_jsonl_numbered", read_jsonl_numbered(&jsonl))? {
                prop_assert!(!convs.is_empty());
                for (line, c) in &convs {
                    prop_assert!(*line >= 1);
                    prop_assert!(c.messages.iter().any(|m| m.role == Role::Assistant));
                }
            }
            check_result("read_jsonl", read_jsonl(&jsonl))?;
            // The format table, every format read and every record written in every format,
            // and the checks and counts of `data validate` and `data stats`.
            for from in Format::ALL {
                if let Some(file) = check_result("read_records", read_records(&jsonl, Some(from)))?
                {
                    for (_, record) in &file.records {
                        for to in Format::ALL {
                            let _ = write_record(to, record, &mut Losses::default());
                        }
                    }
                }
            }
            if let Some(report) = check_result("validate_file", validate_file(&jsonl, None, None))?
            {
                prop_assert_eq!(report.errors + report.warnings, report.problems.len());
            }
            check_result("file_stats", file_stats(&jsonl, None, None))?;
            let text = serde_json::to_vec(&msgs).expect("JSON");
            write(&messages, &mutate(&text, &msg_edits, None));
            check_result("parse_messages_json", parse_messages_json(&messages))?;
            Ok(())
        },
    );
}

fn reply_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => text_atom().prop_map(Value::from),
        4 => prop::collection::vec(message_value(), 0..3).prop_map(Value::Array),
        1 => message_value(),
    ]
}

fn pair_value() -> impl Strategy<Value = Value> {
    let prompt = prop_oneof![
        3 => text_atom().prop_map(Value::from),
        3 => prop::collection::vec(message_value(), 0..4).prop_map(Value::Array),
        1 => json_leaf(),
    ];
    prop_oneof![
        4 => (prop::option::weighted(0.85, prompt), reply_value(), reply_value(), any::<bool>())
            .prop_map(|(p, c, r, meta)| {
                let mut m = serde_json::Map::new();
                if let Some(p) = p {
                    m.insert("prompt".into(), p);
                }
                m.insert("chosen".into(), c);
                m.insert("rejected".into(), r);
                if meta {
                    m.insert("metadata".into(), json!({"seed": 1}));
                }
                Value::Object(m)
            }),
        3 => (prop::collection::vec(message_value(), 0..4), reply_value(), reply_value())
            .prop_map(|(msgs, c, r)| json!({
                "input": {"messages": msgs},
                "preferred_output": c,
                "non_preferred_output": r,
            })),
        1 => conversation_value(),
        1 => json_any(),
    ]
}

/// DPO's pair files in their three shapes, valid and not: a result, never a panic, and every
/// pair read has a prompt that does not end with the assistant.
#[test]
fn pair_readers() {
    let dir = tempdir();
    let jsonl = dir.path().join("pairs.jsonl");
    let pairs = std::fs::read(fixtures().join("dpo/pairs.jsonl")).expect("dpo/pairs.jsonl");
    let strategy = (
        prop_oneof![
            3 => prop::collection::vec(pair_value(), 0..5).prop_map(|lines| {
                let mut text = String::new();
                for l in lines {
                    text.push_str(&l.to_string());
                    text.push('\n');
                }
                text.into_bytes()
            }),
            1 => Just(pairs),
        ],
        edits(4),
    );
    fuzz("pair_readers", strategy, |(lines, line_edits)| {
        write(&jsonl, &mutate(&lines, &line_edits, None));
        let read = lora_train::data::pairs::read_pairs(&jsonl);
        if let Some((_, pairs)) = check_result("read_pairs", read)? {
            prop_assert!(!pairs.is_empty());
            for (line, p) in &pairs {
                prop_assert!(*line >= 1);
                prop_assert!(p.prompt.last().is_some_and(|m| m.role != Role::Assistant));
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Chat templates.

fn message() -> impl Strategy<Value = Message> {
    let role = prop::sample::select(vec![Role::System, Role::User, Role::Assistant]);
    (role, text_atom(), prop::option::weighted(0.1, 0u8..2)).prop_map(|(role, content, weight)| {
        Message {
            role,
            content,
            weight,
            reasoning_content: None,
        }
    })
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    prop_oneof![
        // Alternating user/assistant turns, as most templates require.
        3 => (any::<bool>(), prop::collection::vec(text_atom(), 0..6)).prop_map(|(system, texts)| {
            let mut out = Vec::new();
            if system {
                out.push(Message::new(Role::System, "be brief"));
            }
            for (i, t) in texts.into_iter().enumerate() {
                let role = if i % 2 == 0 { Role::User } else { Role::Assistant };
                out.push(Message::new(role, t));
            }
            out
        }),
        2 => prop::collection::vec(message(), 0..6),
    ]
}

fn special_token() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.8,
        prop_oneof![
            prop::sample::select(vec![
                "<bos>",
                "<s>",
                "<|begin_of_text|>",
                "<eos>",
                "</s>",
                ""
            ])
            .prop_map(String::from),
            text_atom(),
        ],
    )
}

const BUILTIN_TEMPLATES: &[&str] = &["gemma", "llama3", "chatml"];

const JINJA_SNIPPETS: &[&str] = &[
    "{{ messages[0]['content'] }}",
    "{% for m in messages %}{{ m.role }}:{{ m['content'] }}{% endfor %}",
    "{{ raise_exception('bad conversation') }}",
    "{{ raise_exception('') }}",
    "{{ raise_exception() }}",
    "{{ strftime_now('%d %b %Y %H:%M:%S %j %a %A %B %y %p %I %m %e %Z %% %') }}",
    "{{ strftime_now() }}",
    "{{ strftime_now(1) }}",
    "{{ messages | tojson }}",
    "{{ messages | tojson(indent=2) }}",
    "{{ {'a': [1, 2.5, none, true, 'é\"']} | tojson }}",
    "{{ bos_token ~ eos_token }}",
    "{{ bos_token + 1 }}",
    "{{ tools }}{{ documents }}",
    "{% if messages | length > 1 %}",
    "{% endif %}",
    "{% endfor %}",
    "{{ loop.index }}",
    "{{ messages[0]['content'].split('a') }}",
    "{{ ' x '.strip().upper().title() }}",
    "{{ 'abc'.startswith('a') }}{{ 'abc'.endswith(('c', 'd')) }}",
    "{{ 'a,b'.split(',', 1) }}{{ 'abc'.replace('b', 'x', 1) }}",
    "{% set ns = namespace(x=1) %}{% set ns.x = ns.x + 1 %}{{ ns.x }}",
    "{{ {'a': 1}.items() | list }}{{ {'a': 1}.get('b', 2) }}",
    "{{ [1, 2.5, none, true, 'x', {'k': false}] }}",
    "{{ 1 / 0 }}",
    "{{ 1 // 0 }}",
    "{{ 5 % 0 }}",
    "{{ -9223372036854775808 // -1 }}",
    "{{ 9223372036854775807 + 1 }}",
    "{{ 2 ** 100 }}",
    "{{ 1e308 * 10 }}{{ -1e308 * 10 }}{{ (1e308 * 10) - (1e308 * 10) }}",
    "{{ [1e308 * 10] }}",
    "{{ [1e308 * 10] | tojson }}",
    "{{ range(5) | list }}",
    "{{ 'x' * 3 }}",
    "{{ messages[-1] }}",
    "{{ messages[100] }}",
    "{{ messages[0]['content'][::-1] }}",
    "{{ 'abc'[1:999] }}",
    "{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m(1) }}",
    "{{ messages | map(attribute='role') | join(',') }}",
    "{{ 'a' ~ none }}",
    "{{ x.y.z }}",
    "{{ none.x }}",
    "{% raw %}{{{% endraw %}",
    "{{ 'é'[0] }}{{ '🦀' | length }}",
    "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
    "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.content }}{% break %}{% endfor %}",
    "{#",
    "#}",
    "{%",
    "%}",
    "{{",
    "}}",
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}",
];

#[test]
fn chat_template_builtin_render() {
    let strategy = (
        prop::sample::select(vec!["gemma", "llama3", "chatml", "nope", ""]),
        special_token(),
        special_token(),
        messages(),
        any::<bool>(),
    );
    fuzz(
        "chat_template_builtin_render",
        strategy,
        |(name, bos, eos, msgs, gen)| {
            if let Some(t) = check_result("builtin", ChatTemplate::builtin(name, bos, eos))? {
                check_result("render", t.render(&msgs, gen))?;
            }
            Ok(())
        },
    );
}

#[test]
fn chat_template_source_render() {
    let bases: Vec<String> = BUILTIN_TEMPLATES
        .iter()
        .map(|n| {
            ChatTemplate::builtin(n, None, None)
                .expect("a built-in template")
                .source()
                .to_string()
        })
        .collect();
    let snippet = prop_oneof![
        4 => prop::sample::select(JINJA_SNIPPETS).prop_map(String::from),
        1 => text_atom().prop_map(|f| format!("{{{{ strftime_now({f:?}) }}}}")),
        1 => text_atom(),
    ];
    let strategy = (
        0..bases.len() + 1,
        prop::collection::vec((any::<Index>(), snippet), 0..4),
        edits(3),
        special_token(),
        special_token(),
        messages(),
        any::<bool>(),
    );
    fuzz(
        "chat_template_source_render",
        strategy,
        |(base, inserts, bytes, bos, eos, msgs, gen)| {
            let mut source = bases.get(base).cloned().unwrap_or_default();
            for (at, s) in inserts {
                // Insert at a char boundary.
                let mut p = at.index(source.len() + 1);
                while !source.is_char_boundary(p) {
                    p -= 1;
                }
                source.insert_str(p, &s);
            }
            let source =
                String::from_utf8_lossy(&mutate(source.as_bytes(), &bytes, None)).into_owned();
            if let Some(t) = check_result("compile", ChatTemplate::new(&source, bos, eos))? {
                check_result("render", t.render(&msgs, gen))?;
                let _ = t.end_of_turn_token();
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Safetensors: the tiny Llama's weights, header mutated or truncated, loaded as a model.

/// A copy of the tiny Llama fixture whose `model.safetensors` each case rewrites.
fn tiny_llama_copy(dir: &Path) {
    let src = fixtures().join("tiny-llama");
    for f in [
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy a fixture");
    }
}

fn safetensors_header(bytes: &[u8]) -> (usize, serde_json::Map<String, Value>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("a JSON header");
    let Value::Object(map) = header else {
        panic!("the fixture's header is an object")
    };
    (n, map)
}

#[derive(Debug, Clone)]
enum HeaderEdit {
    Dtype(Index, &'static str),
    Shape(Index, Vec<u64>),
    Offsets(Index, u64, u64),
    Field(Index, Value),
    Remove(Index),
    Rename(Index, String),
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let dim = prop_oneof![4 => 0u64..130, 1 => any::<u64>(), 1 => Just(u32::MAX as u64 + 1)];
    let offset = prop_oneof![4 => 0u64..600_000, 1 => any::<u64>()];
    prop_oneof![
        (
            any::<Index>(),
            prop::sample::select(vec![
                "F32", "F16", "BF16", "I64", "U8", "F8_E4M3", "BOOL", "X", "F64", "I32"
            ])
        )
            .prop_map(|(i, d)| HeaderEdit::Dtype(i, d)),
        (any::<Index>(), prop::collection::vec(dim, 0..4))
            .prop_map(|(i, s)| HeaderEdit::Shape(i, s)),
        (any::<Index>(), offset.clone(), offset).prop_map(|(i, a, b)| HeaderEdit::Offsets(i, a, b)),
        (any::<Index>(), json_any()).prop_map(|(i, v)| HeaderEdit::Field(i, v)),
        any::<Index>().prop_map(HeaderEdit::Remove),
        (
            any::<Index>(),
            prop::sample::select(vec![
                "model.norm.weight",
                "lm_head.weight",
                "__metadata__",
                "",
                "model.layers.9.mlp.up_proj.weight"
            ])
        )
            .prop_map(|(i, n)| HeaderEdit::Rename(i, n.to_string())),
    ]
}

/// Rewrites the header of a safetensors file with `edits` applied; the data stays.
fn edit_safetensors(bytes: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    let (n, mut map) = safetensors_header(bytes);
    for e in edits {
        let names: Vec<String> = map.keys().cloned().collect();
        if names.is_empty() {
            break;
        }
        let pick = |i: &Index| names[i.index(names.len())].clone();
        match e {
            HeaderEdit::Dtype(i, d) => {
                if let Some(Value::Object(t)) = map.get_mut(&pick(i)) {
                    t.insert("dtype".into(), json!(d));
                }
            }
            HeaderEdit::Shape(i, s) => {
                if let Some(Value::Object(t)) = map.get_mut(&pick(i)) {
                    t.insert("shape".into(), json!(s));
                }
            }
            HeaderEdit::Offsets(i, a, b) => {
                if let Some(Value::Object(t)) = map.get_mut(&pick(i)) {
                    t.insert("data_offsets".into(), json!([a, b]));
                }
            }
            HeaderEdit::Field(i, v) => {
                let name = pick(i);
                map.insert(name, v.clone());
            }
            HeaderEdit::Remove(i) => {
                map.remove(&pick(i));
            }
            HeaderEdit::Rename(i, to) => {
                if let Some(v) = map.remove(&pick(i)) {
                    map.insert(to.clone(), v);
                }
            }
        }
    }
    let header = serde_json::to_vec(&Value::Object(map)).expect("JSON");
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn safetensors_model_load() {
    let base = std::fs::read(fixtures().join("tiny-llama/model.safetensors")).expect("fixture");
    let (n, _) = safetensors_header(&base);
    let dir = tempdir();
    tiny_llama_copy(dir.path());
    let path = dir.path().join("model.safetensors");
    let spec = dir.path().to_string_lossy().into_owned();
    let strategy = (
        prop::collection::vec(header_edit(), 0..4),
        edits(4),
        prop::option::weighted(0.2, any::<Index>()),
    );
    fuzz(
        "safetensors_model_load",
        strategy,
        |(header, bytes, truncate)| {
            let mut file = edit_safetensors(&base, &header);
            // Byte edits mostly land in the length prefix and the header.
            file = mutate(&file, &bytes, Some(8 + n + 16));
            if let Some(t) = truncate {
                file.truncate(t.index(file.len() + 1));
            }
            write(&path, &file);
            check_result(
                "model::load",
                model::load(&spec, &LoadOptions::default()).map(|_| ()),
            )?;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// GGUF: a tiny Llama written in the test, its metadata and header mutated.

const GGUF_VOCAB: usize = 24;
const GGUF_HIDDEN: usize = 8;

fn gguf_tensors() -> Vec<(String, QTensor)> {
    let dev = Device::Cpu;
    let t = |shape: &[usize]| -> QTensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.05).collect();
        let t = Tensor::from_vec(v, shape, &dev).expect("a tensor");
        QTensor::quantize(&t, GgmlDType::F32).expect("an f32 QTensor")
    };
    let (h, ff, kv) = (GGUF_HIDDEN, 16, 4);
    // GGUF lists dims innermost first; candle's writer reverses the tensor's own shape.
    let mut out = vec![
        ("token_embd.weight".to_string(), t(&[GGUF_VOCAB, h])),
        ("output_norm.weight".to_string(), t(&[h])),
    ];
    for (name, shape) in [
        ("attn_norm.weight", vec![h]),
        ("ffn_norm.weight", vec![h]),
        ("attn_q.weight", vec![h, h]),
        ("attn_k.weight", vec![kv, h]),
        ("attn_v.weight", vec![kv, h]),
        ("attn_output.weight", vec![h, h]),
        ("ffn_gate.weight", vec![ff, h]),
        ("ffn_up.weight", vec![ff, h]),
        ("ffn_down.weight", vec![h, ff]),
    ] {
        out.push((format!("blk.0.{name}"), t(&shape)));
    }
    out
}

fn gguf_metadata() -> Vec<(String, GgufValue)> {
    let mut tokens: Vec<GgufValue> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| GgufValue::String(s.to_string()))
        .collect();
    for c in "abcdefghijklmnopqrs".chars() {
        tokens.push(GgufValue::String(c.to_string()));
    }
    tokens.push(GgufValue::String("ab".into()));
    tokens.push(GgufValue::String("Ġ".into()));
    assert_eq!(tokens.len(), GGUF_VOCAB);
    let s = |v: &str| GgufValue::String(v.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("general.alignment".into(), GgufValue::U32(32)),
        (
            "llama.embedding_length".into(),
            GgufValue::U32(GGUF_HIDDEN as u32),
        ),
        ("llama.feed_forward_length".into(), GgufValue::U32(16)),
        ("llama.block_count".into(), GgufValue::U32(1)),
        ("llama.attention.head_count".into(), GgufValue::U32(2)),
        ("llama.attention.head_count_kv".into(), GgufValue::U32(1)),
        ("llama.rope.dimension_count".into(), GgufValue::U32(4)),
        ("llama.context_length".into(), GgufValue::U32(64)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), GgufValue::F32(10000.0)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)),
        (
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(vec![s("a b")]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
        (
            "tokenizer.chat_template".into(),
            s(ChatTemplate::builtin("chatml", None, None)
                .expect("chatml")
                .source()),
        ),
    ]
}

fn write_gguf(metadata: &[(String, GgufValue)], tensors: &[(String, QTensor)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let md: Vec<(&str, &GgufValue)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &md, &ts).expect("write a GGUF");
    out.into_inner()
}

fn gguf_value() -> impl Strategy<Value = GgufValue> {
    let leaf = prop_oneof![
        4 => prop_oneof![0u32..70, Just(u32::MAX), Just(1 << 31)].prop_map(GgufValue::U32),
        1 => any::<u8>().prop_map(GgufValue::U8),
        1 => any::<i8>().prop_map(GgufValue::I8),
        1 => any::<u16>().prop_map(GgufValue::U16),
        1 => any::<i16>().prop_map(GgufValue::I16),
        1 => prop_oneof![any::<i32>(), -2i32..70].prop_map(GgufValue::I32),
        1 => prop_oneof![any::<u64>(), 0u64..70].prop_map(GgufValue::U64),
        1 => any::<i64>().prop_map(GgufValue::I64),
        1 => prop_oneof![any::<f32>(), Just(f32::NAN), Just(-1.0f32), Just(0.0f32)].prop_map(GgufValue::F32),
        1 => any::<f64>().prop_map(GgufValue::F64),
        1 => any::<bool>().prop_map(GgufValue::Bool),
        2 => text_atom().prop_map(GgufValue::String),
    ];
    // candle's writer wants every element of an array to be of one type.
    let array = prop_oneof![
        prop::collection::vec(0u32..40, 0..6)
            .prop_map(|v| GgufValue::Array(v.into_iter().map(GgufValue::U32).collect())),
        prop::collection::vec(any::<i32>(), 0..6)
            .prop_map(|v| GgufValue::Array(v.into_iter().map(GgufValue::I32).collect())),
        prop::collection::vec(any::<f32>(), 0..6)
            .prop_map(|v| GgufValue::Array(v.into_iter().map(GgufValue::F32).collect())),
        prop::collection::vec(text_atom(), 0..6)
            .prop_map(|v| GgufValue::Array(v.into_iter().map(GgufValue::String).collect())),
        prop::collection::vec(prop::collection::vec(text_atom(), 0..3), 0..3).prop_map(|v| {
            GgufValue::Array(
                v.into_iter()
                    .map(|a| GgufValue::Array(a.into_iter().map(GgufValue::String).collect()))
                    .collect(),
            )
        }),
    ];
    prop_oneof![6 => leaf, 1 => array]
}

#[derive(Debug, Clone)]
enum MetaEdit {
    Set(Index, GgufValue),
    Remove(Index),
    Add(&'static str, GgufValue),
}

const GGUF_EXTRA_KEYS: &[&str] = &[
    "llama.vocab_size",
    "llama.attention.key_length",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.scores",
    "general.alignment",
];

fn meta_edit() -> impl Strategy<Value = MetaEdit> {
    prop_oneof![
        4 => (any::<Index>(), gguf_value()).prop_map(|(i, v)| MetaEdit::Set(i, v)),
        1 => any::<Index>().prop_map(MetaEdit::Remove),
        2 => (prop::sample::select(GGUF_EXTRA_KEYS), gguf_value()).prop_map(|(k, v)| MetaEdit::Add(k, v)),
        1 => (prop::sample::select(vec!["tokenizer.ggml.model", "tokenizer.ggml.pre", "general.architecture"]),
              prop::sample::select(vec!["llama", "gpt2", "gemma3", "smollm", "llama-bpe", "qwen2", "default", "", "bert"]))
            .prop_map(|(k, v)| MetaEdit::Add(k, GgufValue::String(v.to_string()))),
    ]
}

#[test]
fn gguf_model_load() {
    let base_meta = gguf_metadata();
    let tensors = gguf_tensors();
    let dir = tempdir();
    let path = dir.path().join("tiny.gguf");
    let spec = path.to_string_lossy().into_owned();
    // The unmutated file loads: the cases below start from a valid model.
    write(&path, &write_gguf(&base_meta, &tensors));
    model::load(&spec, &LoadOptions::default()).expect("the tiny GGUF loads");
    let header_len = {
        let mut f = std::fs::File::open(&path).expect("open");
        gguf_file::Content::read(&mut f)
            .expect("read")
            .tensor_data_offset as usize
    };
    let strategy = (
        prop::collection::vec(meta_edit(), 0..4),
        edits(4),
        prop::option::weighted(0.2, any::<Index>()),
    );
    fuzz(
        "gguf_model_load",
        strategy,
        |(meta_edits, bytes, truncate)| {
            let mut meta = base_meta.clone();
            for e in meta_edits {
                match e {
                    MetaEdit::Set(i, v) if !meta.is_empty() => {
                        let j = i.index(meta.len());
                        meta[j].1 = v;
                    }
                    MetaEdit::Remove(i) if !meta.is_empty() => {
                        meta.remove(i.index(meta.len()));
                    }
                    MetaEdit::Add(k, v) => {
                        meta.retain(|(key, _)| key != k);
                        meta.push((k.to_string(), v));
                    }
                    _ => {}
                }
            }
            let mut file = write_gguf(&meta, &tensors);
            file = mutate(&file, &bytes, Some(header_len + 64));
            if let Some(t) = truncate {
                file.truncate(t.index(file.len() + 1));
            }
            write(&path, &file);
            check_result(
                "model::load",
                model::load(&spec, &LoadOptions::default()).map(|_| ()),
            )?;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// PEFT adapters: `adapter_config.json` and the adapter's safetensors, onto the tiny Llama.

fn adapter_config_value() -> impl Strategy<Value = Value> {
    let num = prop_oneof![
        4 => prop::sample::select(vec![json!(0), json!(1), json!(8), json!(16), json!(-1), json!(0.5)]),
        1 => json_leaf(),
    ];
    let targets = prop::sample::select(vec![
        json!(["q_proj", "v_proj"]),
        json!("all-linear"),
        json!(".*proj"),
        json!([]),
        json!(["nope"]),
        json!("("),
    ]);
    let field = prop::sample::select(vec![
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "use_rslora",
        "use_dora",
        "bias",
        "fan_in_fan_out",
        "modules_to_save",
        "init_lora_weights",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
    ]);
    (
        num.clone(),
        num,
        targets,
        prop::collection::vec((field, json_any()), 0..3),
    )
        .prop_map(|(r, alpha, targets, extra)| {
            let mut m = serde_json::Map::new();
            m.insert("peft_type".into(), json!("LORA"));
            m.insert("r".into(), r);
            m.insert("lora_alpha".into(), alpha);
            m.insert("target_modules".into(), targets);
            for (k, v) in extra {
                m.insert(k.to_string(), v);
            }
            Value::Object(m)
        })
}

#[test]
fn peft_adapter_load() {
    let fixture = fixtures().join("peft-train/tiny-llama/final_adapter");
    let config_text = std::fs::read(fixture.join("adapter_config.json")).expect("fixture");
    let weights = std::fs::read(fixture.join("adapter_model.safetensors")).expect("fixture");
    let (n, _) = safetensors_header(&weights);
    let tiny = fixtures().join("tiny-llama");
    let loaded = model::load(&tiny.to_string_lossy(), &LoadOptions::default()).expect("tiny llama");
    let model = Mutex::new(loaded.model);
    let dir = tempdir();
    let strategy = (
        prop_oneof![
            2 => edits(4).prop_map(Err),
            3 => adapter_config_value().prop_map(Ok),
        ],
        prop::collection::vec(header_edit(), 0..3),
        edits(2),
    );
    fuzz("peft_adapter_load", strategy, |(config, header, bytes)| {
        let config = match config {
            Err(e) => mutate(&config_text, &e, None),
            Ok(v) => serde_json::to_vec_pretty(&v).expect("JSON"),
        };
        write(&dir.path().join("adapter_config.json"), &config);
        let st = mutate(
            &edit_safetensors(&weights, &header),
            &bytes,
            Some(8 + n + 16),
        );
        write(&dir.path().join("adapter_model.safetensors"), &st);
        check_result(
            "PeftAdapterConfig::from_file",
            PeftAdapterConfig::from_file(&dir.path().join("adapter_config.json")),
        )?;
        let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
        check_result(
            "load_peft_adapter",
            lora_train::lora::load_peft_adapter(
                model.as_mut(),
                dir.path(),
                DType::F32,
                &Device::Cpu,
            ),
        )?;
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Inputs the fuzzer found, shrunk: each panicked or aborted before its fix.

/// minijinja 2.24 indexes past an empty string's end on a reverse slice.
#[test]
fn template_reverse_slice_of_an_empty_string_is_an_error() {
    let t = ChatTemplate::new("{{ messages[0]['content'][::-1] }}", None, None).expect("compiles");
    let err = t
        .render(&[Message::new(Role::System, "")], false)
        .expect_err("the engine fails");
    assert!(err.to_string().contains("template engine failed"), "{err}");
    // A non-empty string still reverses.
    let ok = t.render(&[Message::new(Role::User, "abc")], false);
    assert_eq!(ok.expect("renders"), "cba");
}

/// candle's GGUF reader divides by `general.alignment`.
#[test]
fn gguf_alignment_zero_is_an_error() {
    let mut meta = gguf_metadata();
    for (k, v) in &mut meta {
        if k == "general.alignment" {
            *v = GgufValue::U32(0);
        }
    }
    let dir = tempdir();
    let path = dir.path().join("tiny.gguf");
    write(&path, &write_gguf(&meta, &gguf_tensors()));
    let err = model::load(&path.to_string_lossy(), &LoadOptions::default())
        .err()
        .expect("an error");
    assert!(err.to_string().contains("general.alignment"), "{err}");
}

/// A layer count of 2^31 reserved 1.3 TB for the layer list and aborted the process.
#[test]
fn gguf_huge_block_count_is_an_error() {
    let mut meta = gguf_metadata();
    for (k, v) in &mut meta {
        if k == "llama.block_count" {
            *v = GgufValue::U32(1 << 31);
        }
    }
    let dir = tempdir();
    let path = dir.path().join("tiny.gguf");
    write(&path, &write_gguf(&meta, &gguf_tensors()));
    let err = model::load(&path.to_string_lossy(), &LoadOptions::default())
        .err()
        .expect("an error");
    assert!(err.to_string().contains("blk.1."), "{err}");
}

#[test]
fn mutate_keeps_inputs_in_bounds() {
    // The mutator itself must never panic, whatever it is given.
    fuzz(
        "mutate_keeps_inputs_in_bounds",
        (
            prop::collection::vec(any::<u8>(), 0..8),
            edits(8),
            prop::option::of(0usize..10),
        ),
        |(b, e, w)| {
            let _ = mutate(&b, &e, w);
            Ok(())
        },
    );
}
