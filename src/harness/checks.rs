//! Offline checks of a reply, needing no judge and no key: a name and exactly one rule
//! (`contains`, `not_contains`, `regex`, `json_valid`, `json_fields`, `matches_reference`).
//! A reply "is JSON" when its text, or the one fenced code block it holds, parses as JSON.

use regex::Regex;

use crate::config::job::schema::job_section;

/// What a check asks of a reply.
#[derive(Debug, Clone)]
pub enum Rule {
    Contains(String),
    NotContains(String),
    Regex(Regex),
    JsonValid,
    /// A JSON object with every one of these keys.
    JsonFields(Vec<String>),
    /// Equal to the data's reference reply: exactly, or after [`normalize`].
    MatchesReference {
        normalized: bool,
    },
}

/// A named rule.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub rule: Rule,
}

job_section! {
    /// `[[check]]`: a name and exactly one rule.
    pub struct CheckSection {
        pub name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub contains: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub not_contains: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub regex: Option<String> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub json_valid: Option<bool> = None,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub json_fields: Option<Vec<String>> = None,
        /// `exact` or `normalized`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub matches_reference: Option<String> = None,
    }
}

impl Check {
    /// The check a table describes, or why it is not one (the message names the key).
    pub fn from_spec(spec: &CheckSection) -> Result<Self, String> {
        let mut rules = Vec::new();
        if let Some(s) = &spec.contains {
            rules.push(("contains", Rule::Contains(s.clone())));
        }
        if let Some(s) = &spec.not_contains {
            rules.push(("not_contains", Rule::NotContains(s.clone())));
        }
        if let Some(s) = &spec.regex {
            let re = Regex::new(s).map_err(|e| format!("regex: {e}"))?;
            rules.push(("regex", Rule::Regex(re)));
        }
        match spec.json_valid {
            Some(true) => rules.push(("json_valid", Rule::JsonValid)),
            Some(false) => return Err("json_valid: only `true` makes a check".into()),
            None => {}
        }
        if let Some(fields) = &spec.json_fields {
            if fields.is_empty() {
                return Err("json_fields: name at least one key".into());
            }
            rules.push(("json_fields", Rule::JsonFields(fields.clone())));
        }
        if let Some(mode) = &spec.matches_reference {
            let normalized = match mode.as_str() {
                "exact" => false,
                "normalized" => true,
                other => {
                    return Err(format!(
                        "matches_reference: `{other}` is not `exact` or `normalized`"
                    ))
                }
            };
            rules.push(("matches_reference", Rule::MatchesReference { normalized }));
        }
        match rules.len() {
            1 => Ok(Check {
                name: spec.name.clone(),
                rule: rules.remove(0).1,
            }),
            0 => Err(
                "a check needs one rule: contains, not_contains, regex, json_valid, \
                      json_fields or matches_reference"
                    .into(),
            ),
            _ => Err(format!(
                "a check has exactly one rule, this one has {}",
                rules.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Whether `reply` passes; `None` when the rule needs a reference and there is none.
    pub fn passes(&self, reply: &str, reference: Option<&str>) -> Option<bool> {
        Some(match &self.rule {
            Rule::Contains(s) => reply.contains(s.as_str()),
            Rule::NotContains(s) => !reply.contains(s.as_str()),
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

    #[test]
    fn a_check_has_exactly_one_valid_rule() {
        let none = Check::from_spec(&CheckSection::default()).unwrap_err();
        assert!(none.contains("needs one rule"), "{none}");
        let two = Check::from_spec(&CheckSection {
            contains: Some("a".into()),
            regex: Some("b".into()),
            ..CheckSection::default()
        })
        .unwrap_err();
        assert!(two.contains("contains, regex"), "{two}");
        let bad = Check::from_spec(&CheckSection {
            regex: Some("(".into()),
            ..CheckSection::default()
        })
        .unwrap_err();
        assert!(bad.starts_with("regex:"), "{bad}");
        let mode = Check::from_spec(&CheckSection {
            matches_reference: Some("fuzzy".into()),
            ..CheckSection::default()
        })
        .unwrap_err();
        assert!(mode.contains("`fuzzy`"), "{mode}");
    }
}
