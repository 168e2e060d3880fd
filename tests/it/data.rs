//! Datasets, chat templates and loss masks. Expected renderings were produced by transformers'
//! own Jinja environment (`transformers.utils.chat_template_utils._compile_jinja_template`,
//! transformers 5.23, jinja2 3.1.6); the fixture tests compare against scripts/make_fixtures.py.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use lora_train::data::dataset::{parse_messages_json, read_jsonl, read_jsonl_numbered};
use lora_train::data::mask::{format_inspect, tokenize_conversation};
use lora_train::data::template::builtin_template_name;
use lora_train::data::{ChatTemplate, ChatTokenizer, Conversation, LossOn, Message, Role};
use lora_train::Error;
use serde_json::{json, Value};

const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn msg(role: Role, content: &str) -> Message {
    Message::new(role, content)
}

fn with_system() -> Vec<Message> {
    vec![
        msg(Role::System, "Be brief."),
        msg(Role::User, "Hi there"),
        msg(Role::Assistant, "Hello!"),
    ]
}

fn without_system() -> Vec<Message> {
    vec![
        msg(Role::User, "  Hi  "),
        msg(Role::Assistant, " Hello! \n"),
        msg(Role::User, "Bye"),
    ]
}

fn gemma() -> ChatTemplate {
    ChatTemplate::builtin("gemma", Some("<bos>".into()), Some("<eos>".into())).unwrap()
}

fn render(source: &str, messages: &[Message]) -> String {
    ChatTemplate::new(source, None, None)
        .unwrap()
        .render(messages, false)
        .unwrap()
}

// ---------------------------------------------------------------- templates

#[test]
fn chatml_renders_like_transformers() {
    let t = ChatTemplate::new(SMOLLM2_TEMPLATE, Some("<|im_start|>".into()), None).unwrap();
    assert_eq!(
        t.render(&with_system(), false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n"
    );
    assert_eq!(
        t.render(&without_system(), true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n  Hi  <|im_end|>\n<|im_start|>assistant\n Hello! \n<|im_end|>\n\
         <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.end_of_turn_token().as_deref(), Some("<|im_end|>"));
}

#[test]
fn gemma_renders_like_transformers() {
    let t = gemma();
    assert_eq!(
        t.render(&with_system(), false).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    );
    assert_eq!(
        t.render(&without_system(), true).unwrap(),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(t.end_of_turn_token().as_deref(), Some("<end_of_turn>"));
}

#[test]
fn raise_exception_surfaces_as_template_error() {
    let err = gemma()
        .render(&[msg(Role::User, "a"), msg(Role::User, "b")], false)
        .unwrap_err();
    match err {
        Error::Template(m) => assert!(
            m.starts_with("Conversation roles must alternate user/assistant/user/assistant/..."),
            "{m}"
        ),
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn syntax_error_names_the_line() {
    let err = ChatTemplate::new(
        "{% for m in messages %}\n{{ m.role }\n{% endfor %}",
        None,
        None,
    )
    .unwrap_err();
    match err {
        Error::Template(m) => assert!(m.contains("syntax error") && m.contains("line 2"), "{m}"),
        other => panic!("expected a template error, got {other:?}"),
    }
}

#[test]
fn tojson_is_python_json_dumps() {
    let source = "{{ messages[0].content | tojson }}|{{ {'a': [1, 2.5, none, true], 'k\"': 1e20} | tojson(indent=2) }}|{{ [] | tojson }}|{{ {'b': 1, 'a': 0.0001, 'c': 0.00001} | tojson(sort_keys=true) }}";
    let out = render(
        source,
        &[msg(Role::User, "Ünïcode \"q\" \\ <tag> & \n\t\u{1}")],
    );
    assert_eq!(
        out,
        "\"Ünïcode \\\"q\\\" \\\\ <tag> & \\n\\t\\u0001\"|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"k\\\"\": 1e+20\n}|[]|{\"a\": 0.0001, \"b\": 1, \"c\": 1e-05}"
    );
    assert_eq!(
        render("{{ 'é' | tojson(ensure_ascii=true) }}", &[]),
        "\"\\u00e9\""
    );
}

#[test]
fn python_string_methods_and_values() {
    let out = render(
        "{{ messages[0].content.strip().title() }}|{{ messages[0].content.startswith('  he') }}|{{ messages[0].content.split() }}|{{ messages[0].content.strip().upper() }}|{{ messages[0].content.lstrip() }}.",
        &[msg(Role::User, "  hello wide world ")],
    );
    assert_eq!(
        out,
        "Hello Wide World|True|['hello', 'wide', 'world']|HELLO WIDE WORLD|hello wide world ."
    );
}

#[test]
fn jinja_environment_options_match_transformers() {
    // trim_blocks, lstrip_blocks, and one trailing newline dropped.
    assert_eq!(
        render(
            "{% if true %}\n  A\n{% endif %}\n    {% if true %}B{% endif %}\n",
            &[]
        ),
        "  A\nB"
    );
    // loop controls.
    assert_eq!(
        render(
            "{% for m in messages %}{% if loop.index0 == 2 %}{% break %}{% endif %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.role }};{% endfor %}",
            &with_system()
        ),
        "user;"
    );
    // Unset special tokens are undefined; message keys other than role and content are hidden;
    // tools is none.
    let mut weighted = msg(Role::Assistant, "x");
    weighted.weight = Some(1);
    assert_eq!(
        render(
            "[{{ bos_token }}]{{ messages[0].weight is defined }}{{ tools is none }}",
            &[weighted]
        ),
        "[]FalseTrue"
    );
    let year = render("{{ strftime_now('%Y') }}", &[]);
    assert!(
        year.len() == 4 && year.chars().all(|c| c.is_ascii_digit()),
        "{year}"
    );
}

#[test]
fn builtin_templates() {
    let llama3 = ChatTemplate::builtin("llama3", Some("<|begin_of_text|>".into()), None).unwrap();
    assert_eq!(
        llama3.render(&with_system(), true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(llama3.end_of_turn_token().as_deref(), Some("<|eot_id|>"));
    let chatml = ChatTemplate::builtin("chatml", None, None).unwrap();
    assert_eq!(
        chatml.render(&with_system()[1..], true).unwrap(),
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(matches!(
        ChatTemplate::builtin("vicuna", None, None),
        Err(Error::Template(_))
    ));
}

#[test]
fn builtin_choice_follows_architecture_and_vocabulary() {
    let chatml_vocab = char_tokenizer(&["<|im_start|>", "<|im_end|>"]);
    let llama3_vocab = char_tokenizer(&["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]);
    let plain_vocab = char_tokenizer(&[]);
    assert_eq!(
        builtin_template_name("llama", &chatml_vocab).unwrap(),
        "chatml"
    );
    assert_eq!(
        builtin_template_name("llama", &llama3_vocab).unwrap(),
        "llama3"
    );
    assert_eq!(
        builtin_template_name("gemma3", &plain_vocab).unwrap(),
        "gemma"
    );
    let err = builtin_template_name("llama", &plain_vocab)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no chat template") && err.contains("chat_template"),
        "{err}"
    );

    // A template from the tokenizer wins over the built-in one.
    let mut own = chatml_vocab.clone();
    own.chat_template = Some("{{ messages | length }}".into());
    assert_eq!(
        ChatTemplate::for_model("llama", &own)
            .unwrap()
            .render(&with_system(), false)
            .unwrap(),
        "3"
    );
    assert_eq!(
        ChatTemplate::for_model("llama", &chatml_vocab)
            .unwrap()
            .end_of_turn_token()
            .as_deref(),
        Some("<|im_end|>")
    );
}

// ---------------------------------------------------------------- datasets

fn write_temp(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

const GOOD: &str = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;

/// Writes `bad` as line 3 after a good line and a blank line, and returns the error message.
fn dataset_error_on_line_3(bad: &str) -> String {
    let file = write_temp(&format!("{GOOD}\n\n{bad}\n{GOOD}\n"));
    match read_jsonl(file.path()) {
        Err(Error::Dataset { path, line, msg }) => {
            assert_eq!(path, file.path());
            assert_eq!(line, 3, "{msg}");
            msg
        }
        other => panic!("expected a dataset error for {bad}, got {other:?}"),
    }
}

#[test]
fn dataset_reads_valid_lines() {
    let file = write_temp(&format!(
        "\u{feff}{GOOD}\r\n\n  \n{}\n",
        r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u", "name": "x"}, {"role": "assistant", "content": "a", "weight": 0}, {"role": "user", "content": "v"}, {"role": "assistant", "content": "b", "weight": 1}], "extra": true}"#
    ));
    let convs = read_jsonl(file.path()).unwrap();
    assert_eq!(convs.len(), 2);
    // Blank lines are skipped but still counted: the second conversation is on line 4.
    let lines: Vec<usize> = read_jsonl_numbered(file.path())
        .unwrap()
        .iter()
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(lines, [1, 4]);
    assert_eq!(
        convs[0].messages,
        vec![msg(Role::User, "hi"), msg(Role::Assistant, "hello")]
    );
    let roles: Vec<Role> = convs[1].messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant
        ]
    );
    assert_eq!(convs[1].messages[2].weight, Some(0));
    assert_eq!(convs[1].messages[4].weight, Some(1));
    assert_eq!(convs[1].messages[1].weight, None);
}

#[test]
fn dataset_errors_name_line_and_field() {
    let cases = [
        (r#"{"messages": [{"role": "user""#, "not valid JSON: "),
        (r#"{"msgs": []}"#, "missing \"messages\""),
        (
            r#"[1, 2]"#,
            "expected a JSON object with \"messages\", got a list",
        ),
        (
            r#"{"messages": {}}"#,
            "\"messages\": expected a list, got an object",
        ),
        (r#"{"messages": []}"#, "\"messages\" is empty"),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "bot", "content": "c"}]}"#,
            "messages[2].role: unknown role \"bot\" (expected system, user or assistant)",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}"#,
            "messages[1].role: unknown role \"tool\" (expected system, user or assistant)",
        ),
        (
            r#"{"messages": [{"content": "a"}]}"#,
            "messages[0].role: missing",
        ),
        (
            r#"{"messages": [{"role": 3, "content": "a"}]}"#,
            "messages[0].role: expected a string, got a number",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]}"#,
            "messages[1].content: expected a string",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}"#,
            "messages[1].content: missing",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null}]}"#,
            "messages[1].content: expected a string, got null",
        ),
        (
            r#"{"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]}"#,
            "no assistant turn",
        ),
        (
            r#"{"messages": [{"role": "assistant", "content": "a", "weight": 2}]}"#,
            "messages[0].weight: must be 0 or 1",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]}"#,
            "messages[0].weight: only assistant messages take a weight",
        ),
        (r#"["#, "not valid JSON: "),
        (
            "\"just a string\"",
            "expected a JSON object with \"messages\", got a string",
        ),
        ("messages", "not valid JSON: "),
    ];
    for (bad, want) in cases {
        let got = dataset_error_on_line_3(bad);
        assert!(
            got.starts_with(want),
            "for {bad}\n  got:  {got}\n  want: {want}..."
        );
    }
}

#[test]
fn dataset_error_display_is_one_line_with_path_and_line() {
    let file = write_temp(&format!("{GOOD}\n{{\"messages\": 1}}\n"));
    let shown = read_jsonl(file.path()).unwrap_err().to_string();
    assert_eq!(
        shown,
        format!(
            "{}:2: \"messages\": expected a list, got a number",
            file.path().display()
        )
    );
}

#[test]
fn empty_dataset_is_an_error() {
    for contents in ["", "\n\n  \n"] {
        let file = write_temp(contents);
        let err = read_jsonl(file.path()).unwrap_err();
        assert!(
            matches!(&err, Error::Dataset { msg, .. } if msg.contains("no conversations")),
            "{err:?}"
        );
    }
    let missing = read_jsonl("/nonexistent/data.jsonl").unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing:?}");
}

#[test]
fn invalid_utf8_is_an_error_not_a_panic() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(GOOD.as_bytes()).unwrap();
    file.write_all(b"\n{\"messages\": \"\xff\"}\n").unwrap();
    let err = read_jsonl(file.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Dataset { line: 2, msg, .. } if msg.starts_with("not valid UTF-8")),
        "{err:?}"
    );
}

#[test]
fn messages_json_for_generate() {
    let list =
        write_temp(r#"[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]"#);
    assert_eq!(
        parse_messages_json(list.path()).unwrap(),
        vec![msg(Role::System, "s"), msg(Role::User, "u")]
    );
    let object = write_temp(r#"{"messages": [{"role": "user", "content": "u"}]}"#);
    assert_eq!(
        parse_messages_json(object.path()).unwrap(),
        vec![msg(Role::User, "u")]
    );
    let bad = write_temp("[\n{\"role\": \"user\", \"content\": \"u\"},\n{\"role\": \"robot\", \"content\": \"u\"}\n]");
    let err = parse_messages_json(bad.path()).unwrap_err().to_string();
    assert!(
        err.contains("messages[1].role: unknown role \"robot\""),
        "{err}"
    );
    let broken = write_temp("[\n{\"role\": \"user\",\n");
    assert!(matches!(
        parse_messages_json(broken.path()),
        Err(Error::Dataset { line: 3, .. })
    ));
}

// ---------------------------------------------------------------- masks

/// A character-level tokenizer (one token per character, plus `specials` as added tokens),
/// so token positions are easy to count by hand.
fn char_tokenizer(specials: &[&str]) -> ChatTokenizer {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), json!(0));
    for c in (' '..='~').chain(['\n', '\t']) {
        let id = vocab.len();
        vocab.insert(c.to_string(), json!(id));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": vocab.len() + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    tokenizer_from_json(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    }))
}

fn tokenizer_from_json(value: Value) -> ChatTokenizer {
    let inner = tokenizers::Tokenizer::from_str(&value.to_string()).unwrap();
    ChatTokenizer {
        inner,
        bos_token: None,
        eos_token: None,
        chat_template: None,
        eos_token_ids: vec![],
    }
}

fn chatml_setup() -> (ChatTemplate, ChatTokenizer) {
    (
        ChatTemplate::builtin("chatml", None, None).unwrap(),
        char_tokenizer(&["<|im_start|>", "<|im_end|>"]),
    )
}

fn two_turns() -> Conversation {
    Conversation {
        messages: vec![
            msg(Role::System, "S"),
            msg(Role::User, "Hi"),
            msg(Role::Assistant, "Yo"),
            msg(Role::User, "Q?"),
            msg(Role::Assistant, "Fine."),
            msg(Role::User, "unanswered"),
        ],
    }
}

/// The decoded text of each run of consecutive targets.
fn target_texts(example: &lora_train::data::TokenizedExample, tok: &ChatTokenizer) -> Vec<String> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    for (t, (&id, &target)) in example.input_ids.iter().zip(&example.targets).enumerate() {
        if target {
            if t == 0 || !example.targets[t - 1] {
                runs.push(Vec::new());
            }
            runs.last_mut().unwrap().push(id);
        }
    }
    runs.iter().map(|r| tok.decode(r, false).unwrap()).collect()
}

#[test]
fn last_assistant_targets_the_completion_only() {
    let (template, tok) = chatml_setup();
    let conv = two_turns();
    let ex = tokenize_conversation(&conv, &template, &tok, LossOn::LastAssistant).unwrap();
    // The trailing user turn is dropped: the sequence ends with the last assistant turn.
    assert_eq!(
        tok.decode(&ex.input_ids, false).unwrap(),
        template.render(&conv.messages[..5], false).unwrap()
    );
    assert_eq!(ex.targets.len(), ex.input_ids.len());
    assert_eq!(target_texts(&ex, &tok), ["Fine.<|im_end|>\n"]);
    assert_eq!(ex.num_targets(), "Fine.".len() + 2);
    let last = ex.input_ids.len() - 1;
    assert_eq!(ex.target_positions(), (last - 6..=last).collect::<Vec<_>>());
}

#[test]
fn all_assistant_targets_every_trained_turn() {
    let (template, tok) = chatml_setup();
    let mut conv = two_turns();
    let ex = tokenize_conversation(&conv, &template, &tok, LossOn::AllAssistant).unwrap();
    assert_eq!(
        target_texts(&ex, &tok),
        ["Yo<|im_end|>\n", "Fine.<|im_end|>\n"]
    );

    conv.messages[2].weight = Some(0);
    let ex = tokenize_conversation(&conv, &template, &tok, LossOn::AllAssistant).unwrap();
    assert_eq!(target_texts(&ex, &tok), ["Fine.<|im_end|>\n"]);
}

#[test]
fn weight_zero_on_the_last_turn_moves_the_end_back() {
    let (template, tok) = chatml_setup();
    let mut conv = two_turns();
    conv.messages[4].weight = Some(0);
    let ex = tokenize_conversation(&conv, &template, &tok, LossOn::LastAssistant).unwrap();
    assert_eq!(
        tok.decode(&ex.input_ids, false).unwrap(),
        template.render(&conv.messages[..3], false).unwrap()
    );
    assert_eq!(target_texts(&ex, &tok), ["Yo<|im_end|>\n"]);

    conv.messages[2].weight = Some(0);
    for loss_on in [LossOn::LastAssistant, LossOn::AllAssistant, LossOn::All] {
        let err = tokenize_conversation(&conv, &template, &tok, loss_on).unwrap_err();
        assert!(
            err.to_string().contains("no assistant turn to train on"),
            "{err}"
        );
    }
}

#[test]
fn all_targets_every_token_but_the_first() {
    let (template, tok) = chatml_setup();
    let ex = tokenize_conversation(&two_turns(), &template, &tok, LossOn::All).unwrap();
    assert!(!ex.targets[0]);
    assert!(ex.targets[1..].iter().all(|t| *t));
    assert_eq!(ex.num_targets(), ex.input_ids.len() - 1);
}

#[test]
fn template_errors_propagate_from_tokenize() {
    let tok = char_tokenizer(&[]);
    let conv = Conversation {
        messages: vec![
            msg(Role::User, "a"),
            msg(Role::User, "b"),
            msg(Role::Assistant, "c"),
        ],
    };
    let err = tokenize_conversation(&conv, &gemma(), &tok, LossOn::LastAssistant).unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err:?}");
}

/// A word-level tokenizer where the generation prompt `A:` merges with the reply (`A:yo` is one
/// token), so the prompt is not a token prefix of the conversation.
#[test]
fn prompt_that_is_not_a_token_prefix_uses_the_common_prefix() {
    let tok = tokenizer_from_json(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "U:hi": 1, "A:": 2, "A:yo": 3}, "unk_token": "<unk>"}
    }));
    let template = ChatTemplate::new(
        "{% for m in messages %}{{ m.role[0] | upper }}:{{ m.content }} {% endfor %}{% if add_generation_prompt %}A:{% endif %}",
        None,
        None,
    )
    .unwrap();
    let conv = Conversation {
        messages: vec![msg(Role::User, "hi"), msg(Role::Assistant, "yo")],
    };
    let ex = tokenize_conversation(&conv, &template, &tok, LossOn::LastAssistant).unwrap();
    assert_eq!(ex.input_ids, [1, 3]);
    assert_eq!(ex.targets, [false, true]);
}

#[test]
fn loss_on_names() {
    for (name, value) in [
        ("last_assistant", LossOn::LastAssistant),
        ("all_assistant", LossOn::AllAssistant),
        ("all", LossOn::All),
    ] {
        assert_eq!(name.parse::<LossOn>().unwrap(), value);
        assert_eq!(value.to_string(), name);
        assert_eq!(
            serde_json::to_value(value).unwrap(),
            Value::String(name.into())
        );
        assert_eq!(
            serde_json::from_value::<LossOn>(Value::String(name.into())).unwrap(),
            value
        );
        // The command line's `--loss-on` offers these names and parses them with FromStr.
        assert!(LossOn::NAMES.contains(&name), "{name}");
    }
    assert_eq!(LossOn::default(), LossOn::LastAssistant);
    let err = "assistant".parse::<LossOn>().unwrap_err().to_string();
    assert!(
        err.contains("last_assistant, all_assistant or all"),
        "{err}"
    );
}

#[test]
fn inspect_view_shows_tokens_and_targets() {
    let (template, tok) = chatml_setup();
    let conv = Conversation {
        messages: vec![msg(Role::User, "Hi"), msg(Role::Assistant, "Yo")],
    };
    let ex = tokenize_conversation(&conv, &template, &tok, LossOn::LastAssistant).unwrap();
    let view = format_inspect(&ex, &tok).unwrap();
    assert!(view.contains("<|im_start|>user\nHi<|im_end|>\n"), "{view}");
    let token_lines: Vec<&str> = view
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(token_lines.len(), ex.input_ids.len(), "{view}");
    let newline_id = tok.token_to_id("\n").unwrap();
    let last = token_lines.last().unwrap();
    assert!(
        last.contains(&format!(" {newline_id} > \"\\n\"")),
        "newline target shown escaped: {last}"
    );
    assert!(!token_lines[0].contains(" > "), "{}", token_lines[0]);
    assert!(view.contains("\"Yo<|im_end|>\\n\""), "{view}");
    assert!(
        view.contains(&format!("{} tokens, 4 targets", ex.input_ids.len())),
        "{view}"
    );
}

// ---------------------------------------------------------------- fixtures from transformers

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Our ids and target positions for tests/fixtures/chats.jsonl equal those in
/// `tests/fixtures/<name>/score.json` (scripts/make_fixtures.py, `target_spans`).
fn check_tokenized_against_transformers(name: &str, arch: &str) {
    let dir = fixture(name);
    let tok = ChatTokenizer::from_hf_dir(&dir).unwrap();
    let template = ChatTemplate::for_model(arch, &tok).unwrap();
    let chats = read_jsonl(fixture("chats.jsonl")).unwrap();
    let score = read_json(&dir.join("score.json"));
    for loss_on in [LossOn::LastAssistant, LossOn::AllAssistant, LossOn::All] {
        let expected = score["tokenized"][loss_on.as_str()].as_array().unwrap();
        assert_eq!(expected.len(), chats.len());
        for (i, (conv, want)) in chats.iter().zip(expected).enumerate() {
            let ex = tokenize_conversation(conv, &template, &tok, loss_on).unwrap();
            let want_ids: Vec<u32> = serde_json::from_value(want["input_ids"].clone()).unwrap();
            let want_targets: Vec<usize> =
                serde_json::from_value(want["target_positions"].clone()).unwrap();
            assert_eq!(
                ex.input_ids, want_ids,
                "{name}, chat {i}, {loss_on}: input_ids"
            );
            assert_eq!(
                ex.target_positions(),
                want_targets,
                "{name}, chat {i}, {loss_on}: target positions"
            );
        }
    }
}

#[test]
fn tokenized_chats_match_transformers_tiny_llama() {
    check_tokenized_against_transformers("tiny-llama", "llama");
}

#[test]
fn tokenized_chats_match_transformers_tiny_gemma3() {
    check_tokenized_against_transformers("tiny-gemma3", "gemma3_text");
}

#[test]
fn tokenized_chats_match_transformers_tiny_gemma2() {
    check_tokenized_against_transformers("tiny-gemma2", "gemma2");
}

/// Mistral-7B-Instruct-v0.3's template: the system message inside the last user turn, no
/// generation prompt.
#[test]
fn tokenized_chats_match_transformers_tiny_mistral() {
    check_tokenized_against_transformers("tiny-mistral", "mistral");
}

/// Qwen2.5's template (its default system prompt when a chat has none) and a Qwen tokenizer
/// (NFC, one digit per piece, no BOS).
#[test]
fn tokenized_chats_match_transformers_tiny_qwen2() {
    check_tokenized_against_transformers("tiny-qwen2", "qwen2");
}

/// Qwen3's template: the last assistant turn gets an empty `<think>` block; with
/// `all_assistant`, an earlier turn rendered last (with the block) is not a token prefix of the
/// conversation, so by the prefix rule it adds no targets, as score.json records.
#[test]
fn tokenized_chats_match_transformers_tiny_qwen3() {
    check_tokenized_against_transformers("tiny-qwen3", "qwen3");
}

/// Reasoning under Qwen3's template (tests/fixtures/chats-think.jsonl, `tiny-qwen3/think.json`):
/// `reasoning_content` and inline `<think>…</think>` render as transformers renders them, earlier
/// turns' reasoning is dropped, and the last assistant turn's targets follow the prefix rule.
#[test]
fn reasoning_renders_and_masks_as_transformers_qwen3() {
    let dir = fixture("tiny-qwen3");
    let tok = ChatTokenizer::from_hf_dir(&dir).unwrap();
    let template = ChatTemplate::for_model("qwen3", &tok).unwrap();
    let chats = read_jsonl(fixture("chats-think.jsonl")).unwrap();
    let think = read_json(&dir.join("think.json"));
    let cases = think["cases"].as_array().unwrap();
    assert_eq!(cases.len(), chats.len());
    assert!(
        chats
            .iter()
            .any(|c| c.messages.iter().any(|m| m.reasoning_content.is_some())),
        "the fixture must carry reasoning_content"
    );
    for (i, (conv, case)) in chats.iter().zip(cases).enumerate() {
        let k = case["k"].as_u64().unwrap() as usize;
        assert_eq!(
            template.render(&conv.messages, false).unwrap(),
            case["full_text"].as_str().unwrap(),
            "chat {i}: full text"
        );
        assert_eq!(
            template.render(&conv.messages[..k], true).unwrap(),
            case["prompt_text"].as_str().unwrap(),
            "chat {i}: prompt text"
        );
        let ex = tokenize_conversation(conv, &template, &tok, LossOn::LastAssistant).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let want_targets: Vec<usize> =
            serde_json::from_value(case["target_positions"].clone()).unwrap();
        assert_eq!(ex.input_ids, want_ids, "chat {i}: input_ids");
        assert_eq!(ex.target_positions(), want_targets, "chat {i}: targets");
    }
}

#[test]
fn reasoning_content_is_read_on_assistant_turns_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    let good = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","reasoning_content":"r"}]}"#;
    std::fs::write(&path, format!("{good}\n")).unwrap();
    let convs = read_jsonl(&path).unwrap();
    assert_eq!(convs[0].messages[1].reasoning_content.as_deref(), Some("r"));
    for (bad, want) in [
        (
            r#"{"messages":[{"role":"user","content":"q","reasoning_content":"r"},{"role":"assistant","content":"a"}]}"#,
            "messages[0].reasoning_content: only assistant messages",
        ),
        (
            r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","reasoning_content":3}]}"#,
            "messages[1].reasoning_content: expected a string",
        ),
    ] {
        std::fs::write(&path, format!("{bad}\n")).unwrap();
        let e = read_jsonl(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(e.contains("d.jsonl"), "{e}");
    }
}

/// Our renderings of tests/fixtures/chats.jsonl equal transformers' for the real models'
/// templates (`template_ids` in `tests/fixtures/<name>/expected.json`).
fn check_rendering_against_transformers(name: &str) -> Value {
    let expected = read_json(&fixture(&format!("{name}/expected.json")));
    let string = |key: &str| expected[key].as_str().map(String::from);
    let template = ChatTemplate::new(
        &string("chat_template").unwrap(),
        string("bos_token"),
        string("eos_token"),
    )
    .unwrap();
    let chats = read_jsonl(fixture("chats.jsonl")).unwrap();
    let cases = expected["template_ids"].as_array().unwrap();
    assert_eq!(cases.len(), chats.len());
    for case in cases {
        let i = case["index"].as_u64().unwrap() as usize;
        let k = case["k"].as_u64().unwrap() as usize;
        let messages = &chats[i].messages;
        assert_eq!(
            template.render(messages, false).unwrap(),
            case["full_text"].as_str().unwrap(),
            "{name}, chat {i}: full text"
        );
        assert_eq!(
            template.render(&messages[..k], true).unwrap(),
            case["prompt_text"].as_str().unwrap(),
            "{name}, chat {i}: prompt text"
        );
    }
    expected
}

#[test]
fn smollm2_template_renders_like_transformers() {
    check_rendering_against_transformers("smollm2");
}

#[test]
fn gemma3_template_renders_like_transformers() {
    let expected = check_rendering_against_transformers("gemma3");
    assert_eq!(
        expected["chat_template"].as_str().unwrap(),
        gemma().source(),
        "the built-in Gemma template is the one transformers used"
    );
}

/// An SFT reader given a pair file trains on its prompts and chosen replies; a DPO job given
/// conversations says what the file is, naming the file and line.
#[test]
fn conversation_and_pair_readers_name_each_others_files() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\": \"Hi\", \"chosen\": \"Ahoy!\", \"rejected\": \"Hello.\"}\n",
    )
    .unwrap();
    let convs = lora_train::data::dataset::read_jsonl(&pairs).unwrap();
    let texts: Vec<&str> = convs[0]
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(texts, ["Hi", "Ahoy!"]);
    let convs = dir.path().join("chats.jsonl");
    std::fs::write(
        &convs,
        "\n{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello.\"}]}\n",
    )
    .unwrap();
    let e = lora_train::data::pairs::read_pairs(&convs).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("chats.jsonl:2: a conversation (openai), not a preference pair"),
        "{msg}"
    );
    std::fs::write(&convs, "[1, 2]\n").unwrap();
    let msg = lora_train::data::pairs::read_pairs(&convs)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("chats.jsonl:1: expected a JSON object, got a list"),
        "{msg}"
    );
}
