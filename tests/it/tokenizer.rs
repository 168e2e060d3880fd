//! `ChatTokenizer` against the Hugging Face tokenizers of the two real models, and its errors.
//!
//! Reference ids come from tests/fixtures/tokenizer-encode.json (scripts/make_tokenizer_fixtures.py)
//! and the "encode" lists of tests/fixtures/{smollm2,gemma3}/expected.json (scripts/make_fixtures.py).
//! The models are found in `$LORA_TRAIN_MODELS`, else `./models`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use lora_train::data::ChatTokenizer;
use lora_train::Error;
use serde::Deserialize;

const SMOLLM2_GGUF: &str = "smollm2-135m-instruct.Q4_1.gguf";
const GEMMA3_GGUF: &str = "gemma-3-270m.Q4_K_M.gguf";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    std::env::var_os("LORA_TRAIN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("models"))
}

fn read_gguf(file: &str) -> (Content, PathBuf) {
    let path = models_dir().join(file);
    let mut reader = match std::fs::File::open(&path) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => panic!(
            "{}: {e}. The real-model tests need it: run scripts/fetch-models.sh \
             (or set LORA_TRAIN_MODELS to the folder that holds it)",
            path.display()
        ),
    };
    let content = Content::read(&mut reader).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (content, path)
}

fn load(file: &str) -> ChatTokenizer {
    let (content, path) = read_gguf(file);
    ChatTokenizer::from_gguf(&content, &path).unwrap_or_else(|e| panic!("{e}"))
}

fn smollm2() -> &'static ChatTokenizer {
    static TOKENIZER: OnceLock<ChatTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load(SMOLLM2_GGUF))
}

fn gemma3() -> &'static ChatTokenizer {
    static TOKENIZER: OnceLock<ChatTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load(GEMMA3_GGUF))
}

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    ids: Vec<u32>,
    #[serde(default)]
    ids_with_special: Option<Vec<u32>>,
    #[serde(default)]
    decoded: Option<String>,
}

#[derive(Deserialize)]
struct ModelFixture {
    gguf: String,
    /// String metadata to change in the GGUF before building the tokenizer.
    metadata_overrides: HashMap<String, String>,
    vocab_size: usize,
    encode: Vec<EncodeCase>,
}

fn tokenizer_fixture(model: &str) -> ModelFixture {
    static FIXTURE: OnceLock<HashMap<String, serde_json::Value>> = OnceLock::new();
    let all = FIXTURE.get_or_init(|| {
        let path = manifest_dir().join("tests/fixtures/tokenizer-encode.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (make it with scripts/make_tokenizer_fixtures.py)",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    });
    let value = all
        .get(model)
        .unwrap_or_else(|| panic!("no `{model}` in tokenizer-encode.json"));
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("tokenizer-encode.json `{model}`: {e}"))
}

/// Checks every case; reports all mismatches at once.
fn check_cases(tokenizer: &ChatTokenizer, cases: &[EncodeCase], source: &str) {
    let mut failures = Vec::new();
    for case in cases {
        let ids = tokenizer
            .encode(&case.text, false)
            .unwrap_or_else(|e| panic!("{e}"));
        if ids != case.ids {
            failures.push(format!(
                "{:?}: ids {ids:?}, expected {:?}",
                case.text, case.ids
            ));
            continue;
        }
        if let Some(expected) = &case.ids_with_special {
            let ids = tokenizer
                .encode(&case.text, true)
                .unwrap_or_else(|e| panic!("{e}"));
            if &ids != expected {
                failures.push(format!(
                    "{:?}: ids with special tokens {ids:?}, expected {expected:?}",
                    case.text
                ));
            }
        }
        let decoded = tokenizer
            .decode(&ids, false)
            .unwrap_or_else(|e| panic!("{e}"));
        let expected = case.decoded.as_deref().unwrap_or(&case.text);
        if decoded != expected {
            failures.push(format!(
                "{:?}: decoded {decoded:?}, expected {expected:?}",
                case.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{source}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_model(tokenizer: &ChatTokenizer, name: &str, gguf: &str) {
    let fixture = tokenizer_fixture(name);
    assert_eq!(fixture.gguf, gguf);
    assert_eq!(tokenizer.vocab_size(), fixture.vocab_size);
    assert!(
        fixture.encode.len() >= 20,
        "tokenizer-encode.json `{name}` has too few cases"
    );
    check_cases(
        tokenizer,
        &fixture.encode,
        &format!("tokenizer-encode.json {name}"),
    );

    // scripts/make_fixtures.py writes its own plain encodes with the same references.
    #[derive(Deserialize)]
    struct Expected {
        encode: Vec<EncodeCase>,
        template_ids: Vec<Rendered>,
    }
    #[derive(Deserialize)]
    struct Rendered {
        full_text: String,
        full_ids: Vec<u32>,
        prompt_text: String,
        prompt_ids: Vec<u32>,
    }
    let expected = manifest_dir().join(format!("tests/fixtures/{name}/expected.json"));
    let text = std::fs::read_to_string(&expected).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (make it with scripts/make_fixtures.py)",
            expected.display()
        )
    });
    let parsed: Expected =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
    assert!(
        !parsed.encode.is_empty(),
        "{}: empty encode list",
        expected.display()
    );
    check_cases(tokenizer, &parsed.encode, &expected.display().to_string());
    // Rendered chats, encoded without special tokens as transformers' apply_chat_template does.
    let rendered: Vec<EncodeCase> = parsed
        .template_ids
        .into_iter()
        .flat_map(|r| [(r.full_text, r.full_ids), (r.prompt_text, r.prompt_ids)])
        .map(|(text, ids)| EncodeCase {
            text,
            ids,
            ids_with_special: None,
            decoded: None,
        })
        .collect();
    assert!(
        !rendered.is_empty(),
        "{}: empty template_ids",
        expected.display()
    );
    check_cases(
        tokenizer,
        &rendered,
        &format!("{} template_ids", expected.display()),
    );
}

#[test]
fn smollm2_ids_match_hf_tokenizer() {
    check_model(smollm2(), "smollm2", SMOLLM2_GGUF);
}

#[test]
fn gemma3_ids_match_hf_tokenizer() {
    check_model(gemma3(), "gemma3", GEMMA3_GGUF);
}

/// The converter's other paths, on the real vocabularies with one metadata value changed.
fn check_variant(name: &str) {
    let fixture = tokenizer_fixture(name);
    assert!(!fixture.metadata_overrides.is_empty());
    let (mut content, path) = read_gguf(&fixture.gguf);
    for (key, value) in &fixture.metadata_overrides {
        content
            .metadata
            .insert(key.clone(), Value::String(value.clone()));
    }
    let tokenizer = ChatTokenizer::from_gguf(&content, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tokenizer.vocab_size(), fixture.vocab_size);
    check_cases(
        &tokenizer,
        &fixture.encode,
        &format!("tokenizer-encode.json {name}"),
    );
}

#[test]
fn sentencepiece_vocab_under_llama_architecture_matches_transformers() {
    check_variant("gemma3-as-llama");
}

#[test]
fn llama3_split_matches_transformers() {
    check_variant("smollm2-llama-bpe");
}

#[test]
fn smollm2_special_tokens_and_template() {
    let tok = smollm2();
    assert_eq!(tok.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.eos_token_ids[0], 2);
    assert!(
        tok.eos_token_ids.contains(&0),
        "<|endoftext|> ends generation too"
    );
    let template = tok.chat_template.as_deref().unwrap_or_default();
    assert!(
        template.contains("<|im_start|>"),
        "chat template: {template:?}"
    );
    // add_bos_token is false: no BOS even with special tokens.
    assert_eq!(
        tok.encode("Hi", true).unwrap(),
        tok.encode("Hi", false).unwrap()
    );
    // Special tokens are kept whole and skipped on request.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
}

#[test]
fn gemma3_special_tokens() {
    let tok = gemma3();
    assert_eq!(tok.bos_token.as_deref(), Some("<bos>"));
    assert_eq!(tok.eos_token.as_deref(), Some("<eos>"));
    assert_eq!(
        tok.chat_template, None,
        "the Gemma 3 270M base GGUF has no chat template"
    );
    assert_eq!(tok.token_to_id("<end_of_turn>"), Some(106));
    assert_eq!(tok.eos_token_ids[0], 1);
    assert!(
        tok.eos_token_ids.contains(&106),
        "<end_of_turn> ends generation"
    );
    assert_eq!(
        tok.encode("Hi", true).unwrap()[0],
        2,
        "add_bos_token is true"
    );
    assert_eq!(tok.encode("", true).unwrap(), vec![2]);
}

#[test]
fn hf_dir_loads_a_saved_tokenizer_json() {
    // A tokenizer.json saved from the GGUF-built tokenizer loads back through from_hf_dir
    // with the same ids; tokenizer_config.json and generation_config.json fill the rest.
    let tok = smollm2();
    let dir = tempfile::tempdir().unwrap();
    tok.inner
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "lstrip": false},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ messages }}"}
        ]
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [2, 0, 2]}"#,
    )
    .unwrap();
    let loaded = ChatTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(loaded.bos_token.as_deref(), Some("<|im_start|>"));
    assert_eq!(loaded.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(loaded.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(loaded.eos_token_ids, vec![2, 0]);
    let fixture = tokenizer_fixture("smollm2");
    check_cases(&loaded, &fixture.encode, "smollm2 via saved tokenizer.json");

    // chat_template.jinja wins over the config, as in transformers; null tokens are None.
    std::fs::write(dir.path().join("chat_template.jinja"), "JINJA").unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": null, "eos_token": "<|im_end|>", "chat_template": "CONFIG"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": 0}"#,
    )
    .unwrap();
    let loaded = ChatTokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(loaded.bos_token, None);
    assert_eq!(loaded.chat_template.as_deref(), Some("JINJA"));
    assert_eq!(loaded.eos_token_ids, vec![2, 0]);
}

// ---------------------------------------------------------------------------- errors

fn error_text(result: lora_train::Result<ChatTokenizer>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hf_dir_without_tokenizer_json_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let msg = error_text(ChatTokenizer::from_hf_dir(dir.path()));
    let expected = dir.path().join("tokenizer.json");
    assert!(msg.contains(&expected.display().to_string()), "{msg}");
}

#[test]
fn hf_dir_with_corrupt_files_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let msg = error_text(ChatTokenizer::from_hf_dir(dir.path()));
    assert!(msg.contains("tokenizer.json"), "{msg}");

    smollm2()
        .inner
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "[1, 2").unwrap();
    let msg = error_text(ChatTokenizer::from_hf_dir(dir.path()));
    assert!(msg.contains("tokenizer_config.json"), "{msg}");

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": 7}"#,
    )
    .unwrap();
    let msg = error_text(ChatTokenizer::from_hf_dir(dir.path()));
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("eos_token"),
        "{msg}"
    );

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": "two"}"#,
    )
    .unwrap();
    let msg = error_text(ChatTokenizer::from_hf_dir(dir.path()));
    assert!(
        msg.contains("generation_config.json") && msg.contains("eos_token_id"),
        "{msg}"
    );
}

/// A tiny byte-level vocabulary: the 4 letters, their merges, and two control tokens.
fn tiny_gguf(model: &str) -> Content {
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let metadata = HashMap::from([
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        (
            "tokenizer.ggml.model".to_string(),
            Value::String(model.into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            strings(&["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab"]),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array([3, 3, 1, 1, 1, 1, 1].into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            strings(&["a b", "Ġ ab"]),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(1)),
    ]);
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn gguf_error(content: &Content) -> String {
    match ChatTokenizer::from_gguf(content, Path::new("bad.gguf")) {
        Ok(_) => panic!("expected an error"),
        Err(e @ Error::Tokenizer(_)) => e.to_string(),
        Err(e) => panic!("expected Error::Tokenizer, got {e:?}"),
    }
}

#[test]
fn tiny_gguf_builds_a_working_tokenizer() {
    let tok = ChatTokenizer::from_gguf(&tiny_gguf("gpt2"), Path::new("tiny.gguf")).unwrap();
    assert_eq!(tok.encode("ab ab</s>", false).unwrap(), vec![4, 6, 1]);
    assert_eq!(tok.decode(&[4, 6, 1], true).unwrap(), "ab ab");
    assert_eq!(tok.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tok.eos_token_ids, vec![1]);
}

#[test]
fn gguf_with_unsupported_model_is_an_error() {
    let msg = gguf_error(&tiny_gguf("bert"));
    assert!(
        msg.contains("bad.gguf") && msg.contains("`bert`") && msg.contains("gpt2"),
        "{msg}"
    );
}

#[test]
fn gguf_with_broken_vocabulary_is_an_error() {
    // (key, new value or None to remove it, what the message must name)
    let cases: Vec<(&str, Option<Value>, &[&str])> = vec![
        (
            "tokenizer.ggml.model",
            None,
            &["bad.gguf", "tokenizer.ggml.model"],
        ),
        (
            "tokenizer.ggml.tokens",
            Some(Value::Array(Vec::new())),
            &["tokenizer.ggml.tokens", "empty"],
        ),
        (
            "tokenizer.ggml.tokens",
            Some(Value::Array(vec![Value::U32(1)])),
            &["tokenizer.ggml.tokens[0]"],
        ),
        (
            "tokenizer.ggml.eos_token_id",
            Some(Value::U32(7)),
            &["tokenizer.ggml.eos_token_id", "out of range"],
        ),
        (
            "tokenizer.ggml.bos_token_id",
            Some(Value::I32(-1)),
            &["tokenizer.ggml.bos_token_id"],
        ),
        (
            "tokenizer.ggml.token_type",
            Some(Value::Array(vec![Value::I32(1)])),
            &["tokenizer.ggml.token_type"],
        ),
        (
            "tokenizer.ggml.pre",
            Some(Value::U32(3)),
            &["tokenizer.ggml.pre", "string"],
        ),
    ];
    for (key, value, needles) in cases {
        let mut content = tiny_gguf("gpt2");
        match value {
            Some(value) => content.metadata.insert(key.to_string(), value),
            None => content.metadata.remove(key),
        };
        let msg = gguf_error(&content);
        assert!(needles.iter().all(|n| msg.contains(n)), "{key}: {msg}");
    }
}

#[test]
fn gguf_with_broken_merges_is_an_error() {
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let mut content = tiny_gguf("gpt2");
    content
        .metadata
        .insert("tokenizer.ggml.merges".into(), strings(&["ab"]));
    let msg = gguf_error(&content);
    assert!(msg.contains("tokenizer.ggml.merges[0]"), "{msg}");

    content
        .metadata
        .insert("tokenizer.ggml.merges".into(), strings(&["a c"]));
    let msg = gguf_error(&content);
    assert!(msg.contains("bad.gguf") && msg.contains("BPE"), "{msg}");

    content.metadata.remove("tokenizer.ggml.merges");
    let msg = gguf_error(&content);
    assert!(
        msg.contains("tokenizer.ggml.merges") && msg.contains("missing"),
        "{msg}"
    );

    // A SentencePiece vocabulary without merges needs scores to derive them.
    let mut content = tiny_gguf("llama");
    content.metadata.remove("tokenizer.ggml.merges");
    let msg = gguf_error(&content);
    assert!(msg.contains("tokenizer.ggml.scores"), "{msg}");
}
