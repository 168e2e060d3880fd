//! Offline checks of a reply, needing no judge and no key: a name and exactly one rule
//! (`contains`, `not_contains`, `starts_with`, `ends_with`, `regex`, `json_valid`, `json_fields`,
//! `matches_reference`), declared in [`crate::config::eval`] and applied here.
//! A reply "is JSON" when its text, or the one fenced code block it holds, parses as JSON.

pub use crate::config::eval::{CheckRule as Rule, CheckSection};

/// A named rule.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub rule: Rule,
}

impl Check {
    /// The check a table describes, or why it is not one (the message names the key).
    pub fn from_spec(spec: &CheckSection) -> Result<Self, String> {
        Ok(Check {
            name: spec.name.clone(),
            rule: spec.rule()?,
        })
    }

    /// Whether `reply` passes; `None` when the rule needs a reference and there is none.
    pub fn passes(&self, reply: &str, reference: Option<&str>) -> Option<bool> {
        Some(match &self.rule {
            Rule::Contains(s) => reply.contains(s.as_str()),
            Rule::NotContains(s) => !reply.contains(s.as_str()),
            Rule::StartsWith(s) => reply.trim().starts_with(s.as_str()),
            Rule::EndsWith(s) => reply.trim().ends_with(s.as_str()),
            Rule::Regex(re) => re.is_match(reply),
            Rule::JsonValid => as_json(reply).is_some(),
            Rule::JsonFields(keys) => as_json(reply)
                .and_then(|v| v.as_object().cloned())
                .is_some_and(|o| keys.iter().all(|k| o.contains_key(k))),
            Rule::MatchesReference { normalized } => {
                let reference = reference?;
                if *normalized {
                    normalize(reply) == normalize(reference)
                } else {
                    reply == reference
                }
            }
        })
    }
}

/// Lower case, runs of whitespace as one space, and no surrounding whitespace or final `.!?`.
pub fn normalize(text: &str) -> String {
    let joined = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    joined.trim_end_matches(['.', '!', '?']).trim().to_string()
}

/// The reply as JSON: its whole text, else the body of a single fenced block.
fn as_json(reply: &str) -> Option<serde_json::Value> {
    if let Ok(v) = serde_json::from_str(reply.trim()) {
        return Some(v);
    }
    let start = reply.find("```")?;
    let after = &reply[start + 3..];
    let body_start = after.find('\n')? + 1;
    let end = after[body_start..].find("```")?;
    serde_json::from_str(after[body_start..body_start + end].trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: CheckSection) -> Check {
        Check::from_spec(&spec).unwrap()
    }

    #[test]
    fn each_rule_passes_and_fails() {
        let contains = check(CheckSection {
            contains: Some("Captain".into()),
            ..CheckSection::default()
        });
        assert_eq!(contains.passes("Aye, Captain Byte", None), Some(true));
        assert_eq!(contains.passes("aye", None), Some(false));
        let not = check(CheckSection {
            not_contains: Some("As an AI".into()),
            ..CheckSection::default()
        });
        assert_eq!(not.passes("As an AI, I", None), Some(false));
        let starts = check(CheckSection {
            starts_with: Some("Ahoy!".into()),
            ..CheckSection::default()
        });
        assert_eq!(starts.passes("  Ahoy! matey", None), Some(true));
        assert_eq!(starts.passes("Well, Ahoy!", None), Some(false));
        let ends = check(CheckSection {
            ends_with: Some("— Byte".into()),
            ..CheckSection::default()
        });
        assert_eq!(ends.passes("Aye. — Byte\n", None), Some(true));
        assert_eq!(ends.passes("— Byte, aye", None), Some(false));
        let re = check(CheckSection {
            regex: Some(r"^\d{4}-\d{2}-\d{2}$".into()),
            ..CheckSection::default()
        });
        assert_eq!(re.passes("2026-12-02", None), Some(true));
        assert_eq!(re.passes("02/12/2026", None), Some(false));
        let json = check(CheckSection {
            json_valid: Some(true),
            ..CheckSection::default()
        });
        assert_eq!(
            json.passes("Here:\n```json\n{\"a\": 1}\n```", None),
            Some(true)
        );
        assert_eq!(json.passes("{\"a\": 1", None), Some(false));
        let fields = check(CheckSection {
            json_fields: Some(vec!["name".into(), "age".into()]),
            ..CheckSection::default()
        });
        assert_eq!(
            fields.passes(r#"{"name": "x", "age": 3}"#, None),
            Some(true)
        );
        assert_eq!(fields.passes(r#"{"name": "x"}"#, None), Some(false));
        assert_eq!(fields.passes("[1, 2]", None), Some(false));
        let exact = check(CheckSection {
            matches_reference: Some("exact".into()),
            ..CheckSection::default()
        });
        let loose = check(CheckSection {
            matches_reference: Some("normalized".into()),
            ..CheckSection::default()
        });
        assert_eq!(exact.passes("Paris.", Some("Paris.")), Some(true));
        assert_eq!(exact.passes("paris", Some("Paris.")), Some(false));
        assert_eq!(loose.passes("  paris ", Some("Paris.")), Some(true));
        assert_eq!(loose.passes("Paris", None), None);
    }
}
