//! `data validate`: every problem of a dataset file, each naming its line and field, instead of
//! the first one training would stop at. Lines are read through the format table
//! ([`crate::data::formats`]); conversations are checked for roles, their order, empty content,
//! weights and a reply to train on, preference pairs for a prompt and two different replies, and,
//! given a tokenizer and template, for the fit into `max_seq_len` as training fits them. The
//! providers' own upload rules are checked a layer up (`providers::hosted::validate`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::formats::{json_lines_lenient, read_record, resolve_format, Format, Record};
use crate::data::mask::tokenize_conversation;
use crate::data::prepare::{fit_to_length, Fit, FitReport};
use crate::data::{ChatTemplate, ChatTokenizer, Conversation, LossOn, Message, Role};
use crate::Result;

/// How bad a problem is: an error stops training or an upload, a warning may be intended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem, at a line (1-based; `None` for the whole file) and a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: Option<usize>,
    pub severity: Severity,
    /// The field at fault (`messages[2].content`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    fn at(line: usize, severity: Severity, field: Option<String>, message: String) -> Self {
        Problem {
            line: Some(line),
            severity,
            field,
            message,
        }
    }

    /// `path:line: error: field: message`.
    pub fn display(&self, path: &Path) -> String {
        let line = self.line.map(|l| format!(":{l}")).unwrap_or_default();
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let field = self
            .field
            .as_deref()
            .map(|f| format!("{f}: "))
            .unwrap_or_default();
        format!(
            "{}{line}: {severity}: {field}{}",
            path.display(),
            self.message
        )
    }
}

/// What the check of a file found.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub path: PathBuf,
    pub format: Format,
    /// Why the format was chosen, when it was detected rather than given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_from: Option<&'static str>,
    /// Records read (good or not).
    pub records: usize,
    pub errors: usize,
    pub warnings: usize,
    /// How the conversations fit `max_seq_len`, when a tokenizer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fit: Option<FitReport>,
    pub problems: Vec<Problem>,
}

impl ValidationReport {
    pub fn is_ok(&self) -> bool {
        self.errors == 0
    }

    /// Adds problems found elsewhere (the providers' rules), keeping the counts and line order.
    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.problems.extend(problems);
        self.problems.sort_by_key(|p| p.line.unwrap_or(0));
        self.recount();
    }

    fn recount(&mut self) {
        self.errors = self
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        self.warnings = self.problems.len() - self.errors;
    }
}

/// The model side of a check: conversations are rendered and tokenized as training does and
/// fitted into `max_seq_len`.
pub struct TokenCheck<'a> {
    pub template: &'a ChatTemplate,
    pub tokenizer: &'a ChatTokenizer,
    pub loss_on: LossOn,
    pub max_seq_len: usize,
}

/// Checks every line of `path`, read as `format` (or the format its first line shows). Only a
/// file that cannot be read at all, or whose format cannot be told, is an `Err`.
pub fn validate_file(
    path: &Path,
    format: Option<Format>,
    tokens: Option<&TokenCheck>,
) -> Result<ValidationReport> {
    let lines = json_lines_lenient(path)?;
    let mut problems = Vec::new();
    let Some((first_line, first)) = lines
        .iter()
        .find_map(|(l, o)| o.as_ref().ok().map(|o| (*l, o)))
    else {
        // No line is a JSON object: each says why, or the file is empty.
        problems.extend(
            lines
                .iter()
                .filter_map(|(line, o)| o.as_ref().err().map(|msg| not_an_object(*line, msg))),
        );
        if problems.is_empty() {
            problems.push(Problem {
                line: None,
                severity: Severity::Error,
                field: None,
                message: "the file has no records".into(),
            });
        }
        let mut report = ValidationReport {
            path: path.to_path_buf(),
            format: format.unwrap_or(Format::OpenAi),
            detected_from: None,
            records: lines.len(),
            errors: 0,
            warnings: 0,
            fit: None,
            problems,
        };
        report.recount();
        return Ok(report);
    };
    let (format, detected_from) = resolve_format(path, (first_line, first), format)?;
    let mut fit = tokens.map(|_| FitReport::default());
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (line, obj) in &lines {
        let line = *line;
        let obj = match obj {
            Ok(obj) => obj,
            Err(msg) => {
                problems.push(not_an_object(line, msg));
                continue;
            }
        };
        let record = match read_record(format, obj) {
            Ok(r) => r,
            Err(msg) => {
                let (field, message) = split_field(&msg);
                problems.push(Problem::at(line, Severity::Error, field, message));
                continue;
            }
        };
        let before = problems.len();
        match &record {
            Record::Chat(c) => check_conversation(line, &c.messages, &mut problems),
            Record::Preference(p) => {
                check_prompt(line, &p.prompt, &mut problems);
                for (field, text) in [("chosen", &p.chosen), ("rejected", &p.rejected)] {
                    if text.trim().is_empty() {
                        problems.push(Problem::at(
                            line,
                            Severity::Error,
                            Some(field.into()),
                            "empty reply".into(),
                        ));
                    }
                }
                if p.chosen.trim() == p.rejected.trim() {
                    problems.push(Problem::at(
                        line,
                        Severity::Error,
                        Some("rejected".into()),
                        "the same text as chosen: the pair teaches nothing".into(),
                    ));
                }
            }
        }
        let fine = problems[before..]
            .iter()
            .all(|p| p.severity != Severity::Error);
        let hash = fingerprint(&record);
        if let Some(first) = seen.get(&hash) {
            problems.push(Problem::at(
                line,
                Severity::Warning,
                None,
                format!("the same record as line {first}"),
            ));
        } else {
            seen.insert(hash, line);
        }
        if let (Some(check), Some(fit), true) = (tokens, fit.as_mut(), fine) {
            check_tokens(line, &record, check, fit, &mut problems);
        }
    }
    let mut report = ValidationReport {
        path: path.to_path_buf(),
        format,
        detected_from,
        records: lines.len(),
        errors: 0,
        warnings: 0,
        fit,
        problems,
    };
    report.recount();
    Ok(report)
}

fn not_an_object(line: usize, msg: &str) -> Problem {
    Problem::at(
        line,
        Severity::Error,
        None,
        format!("{msg} (every line must be one JSON object)"),
    )
}

/// `messages[2].role: unknown role` -> (`messages[2].role`, `unknown role`).
fn split_field(msg: &str) -> (Option<String>, String) {
    match msg.split_once(": ") {
        Some((field, rest))
            if !field.contains(' ') || field.starts_with('"') && field.ends_with('"') =>
        {
            (Some(field.trim_matches('"').to_string()), rest.to_string())
        }
        _ => (None, msg.to_string()),
    }
}

fn check_conversation(line: usize, messages: &[Message], out: &mut Vec<Problem>) {
    let field = |i: usize, k: &str| Some(format!("messages[{i}].{k}"));
    for (i, m) in messages.iter().enumerate() {
        if m.role == Role::System && i > 0 {
            out.push(Problem::at(
                line,
                Severity::Error,
                field(i, "role"),
                "a system message must come first".into(),
            ));
        }
        if i > 0 && messages[i - 1].role == m.role && m.role != Role::System {
            out.push(Problem::at(
                line,
                Severity::Warning,
                field(i, "role"),
                format!(
                    "two {} messages in a row (Together refuses this; some templates do too)",
                    m.role
                ),
            ));
        }
        if m.content.trim().is_empty() {
            let severity = if m.role == Role::Assistant && m.weight != Some(0) {
                Severity::Error
            } else {
                Severity::Warning
            };
            out.push(Problem::at(
                line,
                severity,
                field(i, "content"),
                format!("empty {} message", m.role),
            ));
        }
    }
    let first_turn = messages.iter().find(|m| m.role != Role::System);
    if first_turn.is_some_and(|m| m.role == Role::Assistant) {
        out.push(Problem::at(
            line,
            Severity::Warning,
            Some("messages".into()),
            "the conversation opens with an assistant turn".into(),
        ));
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        out.push(Problem::at(
            line,
            Severity::Error,
            Some("messages".into()),
            "no assistant turn to train on".into(),
        ));
    } else if !messages.iter().any(Message::is_trained_assistant) {
        out.push(Problem::at(
            line,
            Severity::Error,
            Some("messages".into()),
            "every assistant turn has weight 0: nothing to train on".into(),
        ));
    } else if messages.last().is_some_and(|m| m.role != Role::Assistant) {
        out.push(Problem::at(
            line,
            Severity::Warning,
            Some(format!("messages[{}]", messages.len() - 1)),
            "the conversation ends after its last reply; training leaves the rest out".into(),
        ));
    }
}

fn check_prompt(line: usize, prompt: &[Message], out: &mut Vec<Problem>) {
    if prompt.last().is_none_or(|m| m.role != Role::User) {
        out.push(Problem::at(
            line,
            Severity::Error,
            Some("prompt".into()),
            "a preference prompt must end with a user turn".into(),
        ));
    }
    for (i, m) in prompt.iter().enumerate() {
        if m.content.trim().is_empty() && m.role == Role::User {
            out.push(Problem::at(
                line,
                Severity::Error,
                Some(format!("prompt[{i}].content")),
                "empty user message".into(),
            ));
        }
    }
}

fn check_tokens(
    line: usize,
    record: &Record,
    check: &TokenCheck,
    fit: &mut FitReport,
    out: &mut Vec<Problem>,
) {
    let conv = Conversation {
        messages: record.conversation(),
    };
    let example = match tokenize_conversation(&conv, check.template, check.tokenizer, check.loss_on)
    {
        Ok(e) => e,
        Err(e) => {
            out.push(Problem::at(line, Severity::Error, None, e.to_string()));
            return;
        }
    };
    let len = example.input_ids.len();
    match fit_to_length(&example, check.max_seq_len) {
        Fit::Kept(_) => fit.kept += 1,
        Fit::Truncated(_) => {
            fit.truncated += 1;
            out.push(Problem::at(
                line,
                Severity::Warning,
                None,
                format!(
                    "{len} tokens: cut from the left to max_seq_len {} (the last reply is kept)",
                    check.max_seq_len
                ),
            ));
        }
        Fit::Dropped => {
            fit.dropped += 1;
            out.push(Problem::at(
                line,
                Severity::Error,
                None,
                format!(
                    "{len} tokens: the last reply alone does not fit max_seq_len {}; training drops it",
                    check.max_seq_len
                ),
            ));
        }
    }
}

fn fingerprint(record: &Record) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in record.conversation() {
        m.role.hash(&mut h);
        m.content.hash(&mut h);
        m.weight.hash(&mut h);
    }
    if let Record::Preference(p) = record {
        p.rejected.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> ValidationReport {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, text).unwrap();
        validate_file(&path, None, None).unwrap()
    }

    #[test]
    fn every_problem_names_its_line_and_field() {
        let r = check(concat!(
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": " "}]}"#,
            "\n\n",
            r#"{"messages": [{"role": "bot", "content": "hi"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
        ));
        let shown: Vec<String> = r
            .problems
            .iter()
            .map(|p| p.display(Path::new("d")))
            .collect();
        assert_eq!(r.records, 5);
        assert_eq!(
            shown,
            [
                "d:2: error: messages[1].role: a system message must come first",
                "d:2: error: messages[2].content: empty assistant message",
                "d:4: error: messages[0].role: unknown role \"bot\" (expected system, user or assistant)",
                "d:5: error: messages: every assistant turn has weight 0: nothing to train on",
                "d:6: warning: the same record as line 1",
            ],
            "{shown:#?}"
        );
        assert_eq!((r.errors, r.warnings), (4, 1));
    }

    #[test]
    fn a_pair_with_equal_replies_is_an_error() {
        let r = check(r#"{"prompt": "q", "chosen": "same", "rejected": "same "}"#);
        assert_eq!(r.format, Format::DpoTrl);
        assert_eq!(r.errors, 1);
        assert!(
            r.problems[0].message.contains("same text"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_line_that_is_not_json_is_one_problem() {
        let r = check("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\nnot json\n[1]\n");
        assert_eq!(r.errors, 2, "{:?}", r.problems);
        assert_eq!(r.problems[0].line, Some(2));
        assert!(r.problems[1]
            .message
            .starts_with("expected a JSON object, got a list"));
    }
}
