//! What a judge's reply says: the pairwise verdict, on Arena-Hard's five levels, from the last
//! `{"verdict": ...}` object or `[[A>B]]` label in the reply; and the 1–5 trait scores from the
//! last `{"scores": {...}}` object. Anything else is a parse failure the caller may retry.

use std::collections::BTreeMap;

/// A judge's verdict on one call, about the replies it saw as A and B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    #[serde(rename = "A>>B")]
    MuchBetterA,
    #[serde(rename = "A>B")]
    BetterA,
    #[serde(rename = "A=B")]
    Tie,
    #[serde(rename = "B>A")]
    BetterB,
    #[serde(rename = "B>>A")]
    MuchBetterB,
}

impl Verdict {
    pub const LABELS: [&'static str; 5] = ["A>>B", "A>B", "A=B", "B>A", "B>>A"];

    pub fn from_label(label: &str) -> Option<Self> {
        Some(match label.trim() {
            "A>>B" => Verdict::MuchBetterA,
            "A>B" => Verdict::BetterA,
            "A=B" | "B=A" => Verdict::Tie,
            "B>A" => Verdict::BetterB,
            "B>>A" => Verdict::MuchBetterB,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }

    /// The same verdict with A and B swapped: what it says about the reply shown as B.
    pub fn swapped(self) -> Self {
        match self {
            Verdict::MuchBetterA => Verdict::MuchBetterB,
            Verdict::BetterA => Verdict::BetterB,
            Verdict::Tie => Verdict::Tie,
            Verdict::BetterB => Verdict::BetterA,
            Verdict::MuchBetterB => Verdict::MuchBetterA,
        }
    }

    /// +1 when A wins, -1 when B wins, 0 for a tie.
    pub fn direction(self) -> i8 {
        match self {
            Verdict::MuchBetterA | Verdict::BetterA => 1,
            Verdict::Tie => 0,
            Verdict::BetterB | Verdict::MuchBetterB => -1,
        }
    }

    pub fn strong(self) -> bool {
        matches!(self, Verdict::MuchBetterA | Verdict::MuchBetterB)
    }
}

/// The verdict of a pairwise judge reply: the last JSON object with a `verdict` field, else the
/// last `[[...]]` label. `None` when the reply has neither, or its label is not one of the five.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    let from_json = json_objects(reply).into_iter().rev().find_map(|v| {
        let label = v.get("verdict")?.as_str()?;
        Some(Verdict::from_label(label))
    });
    if let Some(found) = from_json {
        return found;
    }
    let mut last = None;
    let mut rest = reply;
    while let Some(start) = rest.find("[[") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("]]") else { break };
        last = Some(&after[..end]);
        rest = &after[end + 2..];
    }
    last.and_then(Verdict::from_label)
}

/// Why a rubric reply gave no usable score for a trait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScoreError {
    /// The reply has no `{"scores": {...}}` object.
    NoScores,
    /// The object has no score for the trait.
    Missing,
    /// The score is not an integer from 1 to 5; the text is what the judge wrote.
    OutOfRange(String),
}

/// The 1–5 score of each trait in a rubric reply's last `{"scores": {...}}` object.
pub fn parse_scores(reply: &str, traits: &[&str]) -> BTreeMap<String, Result<u8, ScoreError>> {
    let scores = json_objects(reply)
        .into_iter()
        .rev()
        .find_map(|v| v.get("scores").and_then(|s| s.as_object()).cloned());
    traits
        .iter()
        .map(|t| {
            let got = match &scores {
                None => Err(ScoreError::NoScores),
                Some(map) => match map.get(*t) {
                    None => Err(ScoreError::Missing),
                    Some(v) => match v.as_f64() {
                        Some(x) if x.fract() == 0.0 && (1.0..=5.0).contains(&x) => Ok(x as u8),
                        _ => Err(ScoreError::OutOfRange(v.to_string())),
                    },
                },
            };
            (t.to_string(), got)
        })
        .collect()
}

/// Every top-level JSON object in `text`, in order: each `{` starts a candidate, parsed as one
/// value with serde's streaming reader, so braces inside strings and nested objects are fine.
fn json_objects(text: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find('{') {
        let start = i + off;
        let mut stream =
            serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(v @ serde_json::Value::Object(_))) => {
                i = start + stream.byte_offset();
                found.push(v);
            }
            _ => i = start + 1,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_json_verdict_wins_over_earlier_ones_and_labels() {
        let reply = "A is short. {\"verdict\": \"B>A\"} On reflection [[A>B]] then\n\
                     ```json\n{\"verdict\": \"A>>B\", \"why\": \"a {brace} in text\"}\n```";
        assert_eq!(parse_verdict(reply), Some(Verdict::MuchBetterA));
    }

    #[test]
    fn arena_hard_labels_are_read_when_there_is_no_json() {
        assert_eq!(
            parse_verdict("My final verdict is [[B>>A]]."),
            Some(Verdict::MuchBetterB)
        );
        assert_eq!(parse_verdict("tie: [[A=B]]"), Some(Verdict::Tie));
        assert_eq!(
            parse_verdict("[[A>B]] but later [[B>A]]"),
            Some(Verdict::BetterB)
        );
    }

    #[test]
    fn unknown_or_missing_verdicts_do_not_parse() {
        assert_eq!(parse_verdict("I like A better."), None);
        assert_eq!(parse_verdict("{\"verdict\": \"A>>>B\"}"), None);
        assert_eq!(parse_verdict("[[C>A]]"), None);
        assert_eq!(parse_verdict("{\"verdict\": 3}"), None);
    }

    #[test]
    fn swapping_is_an_involution_that_flips_the_direction() {
        for label in Verdict::LABELS {
            let v = Verdict::from_label(label).unwrap();
            assert_eq!(v.label(), label);
            assert_eq!(v.swapped().swapped(), v);
            assert_eq!(v.swapped().direction(), -v.direction());
            assert_eq!(v.swapped().strong(), v.strong());
        }
    }

    #[test]
    fn scores_are_integers_from_one_to_five() {
        let reply = "Fine.\n{\"scores\": {\"helpfulness\": 4, \"clarity\": 6, \"tone\": 2.5}}";
        let got = parse_scores(reply, &["helpfulness", "clarity", "tone", "concision"]);
        assert_eq!(got["helpfulness"], Ok(4));
        assert_eq!(got["clarity"], Err(ScoreError::OutOfRange("6".into())));
        assert_eq!(got["tone"], Err(ScoreError::OutOfRange("2.5".into())));
        assert_eq!(got["concision"], Err(ScoreError::Missing));
        let none = parse_scores("no scores here", &["helpfulness"]);
        assert_eq!(none["helpfulness"], Err(ScoreError::NoScores));
    }
}
