//! Multiple-choice log-likelihood tasks, as lm-evaluation-harness scores them: each choice is
//! the assistant's reply to the question, the model's summed log-probability of that reply picks
//! the answer (`acc`), and the same divided by the choice's byte length picks it again
//! (`acc_norm`). They need no judge and no key, and show whether fine-tuning hurt what the base
//! knew. Only local candidates have the log-probabilities.

use std::path::Path;

use crate::data::mask::tokenize_conversation;
use crate::data::{Conversation, LossOn, Message, Role};
use crate::eval::score_examples;
use crate::harness::EvalError;
use crate::model::LoadedModel;

/// One question with its choices and the index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub line: usize,
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// A task's score for one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskScore {
    pub correct: usize,
    pub correct_norm: usize,
    pub n: usize,
}

/// Reads `{"question", "choices": [...], "answer": i}` lines; errors name the line and field.
pub fn read_questions(path: &Path) -> Result<Vec<Question>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |msg: String| EvalError::Input {
            file: path.to_path_buf(),
            line: Some(i + 1),
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| fail(format!("not valid JSON: {e}")))?;
        let question = v
            .get("question")
            .and_then(|q| q.as_str())
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| fail("\"question\": missing or not a non-empty string".into()))?;
        let choices: Vec<String> = v
            .get("choices")
            .and_then(|c| c.as_array())
            .and_then(|c| {
                c.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .filter(|c| c.len() >= 2)
            .ok_or_else(|| fail("\"choices\": expected a list of at least two strings".into()))?;
        let answer = v
            .get("answer")
            .and_then(|a| a.as_u64())
            .map(|a| a as usize)
            .filter(|a| *a < choices.len())
            .ok_or_else(|| {
                fail(format!(
                    "\"answer\": expected an index below {}",
                    choices.len()
                ))
            })?;
        out.push(Question {
            line: i + 1,
            question: question.to_string(),
            choices,
            answer,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Input {
            file: path.to_path_buf(),
            line: None,
            msg: "the file has no questions".into(),
        });
    }
    Ok(out)
}

/// Scores `questions` with the model: each choice's summed log-probability as the reply.
pub fn score_task(m: &LoadedModel, questions: &[Question]) -> Result<TaskScore, EvalError> {
    let mut examples = Vec::new();
    for q in questions {
        for choice in &q.choices {
            let conv = Conversation {
                messages: vec![
                    Message::new(Role::User, q.question.clone()),
                    Message::new(Role::Assistant, choice.clone()),
                ],
            };
            examples.push(tokenize_conversation(
                &conv,
                &m.template,
                &m.tokenizer,
                LossOn::LastAssistant,
            )?);
        }
    }
    let report = score_examples(m.model.as_ref(), &examples, 8, false)?;
    let mut nll = vec![0.0; examples.len()];
    for e in &report.per_example {
        nll[e.index] = e.loss * e.target_tokens as f64;
    }
    let mut score = TaskScore {
        correct: 0,
        correct_norm: 0,
        n: questions.len(),
    };
    let mut at = 0;
    for q in questions {
        let logp: Vec<f64> = nll[at..at + q.choices.len()].iter().map(|x| -x).collect();
        at += q.choices.len();
        let best = |values: &[f64]| {
            (0..values.len()).fold(0, |b, i| if values[i] > values[b] { i } else { b })
        };
        let norm: Vec<f64> = logp
            .iter()
            .zip(&q.choices)
            .map(|(l, c)| l / c.len().max(1) as f64)
            .collect();
        score.correct += usize::from(best(&logp) == q.answer);
        score.correct_norm += usize::from(best(&norm) == q.answer);
    }
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn questions_are_read_and_bad_lines_name_the_field() {
        let f = write(
            "{\"question\": \"2+2?\", \"choices\": [\"3\", \"4\"], \"answer\": 1}\n\n\
             {\"question\": \"Sky?\", \"choices\": [\"blue\", \"green\", \"red\"], \"answer\": 0}\n",
        );
        let q = read_questions(f.path()).unwrap();
        assert_eq!((q.len(), q[1].line, q[1].answer), (2, 3, 0));
        for (line, field) in [
            (
                "{\"choices\": [\"a\", \"b\"], \"answer\": 0}",
                "\"question\"",
            ),
            (
                "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}",
                "\"choices\"",
            ),
            (
                "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}",
                "\"answer\"",
            ),
        ] {
            let f = write(line);
            let err = read_questions(f.path()).unwrap_err().to_string();
            assert!(err.contains(":1: ") && err.contains(field), "{err}");
        }
    }
}
