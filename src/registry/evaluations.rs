//! Evaluations and comparisons: an eval run's `report.json` with its candidates and judge, and
//! one comparison row per judged pair (wins, ties, losses, win rate and its 95% CI), each
//! candidate tied to a registered model version when its adapter is one. Promotion gates
//! read these rows.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;

use super::{now, Registry, RegistryError, Result};

/// An evaluation to record.
#[derive(Debug, Clone, Default)]
pub struct NewEvaluation {
    pub job_id: Option<i64>,
    pub name: String,
    pub output_dir: Option<String>,
    pub report: serde_json::Value,
    pub candidates: serde_json::Value,
    pub judge: Option<String>,
    pub comparisons: Vec<NewComparison>,
}

/// One judged pair of an evaluation: `a`'s wins over `b`.
#[derive(Debug, Clone, Default)]
pub struct NewComparison {
    pub candidate_a: String,
    pub candidate_b: String,
    /// The registered versions the candidates are (`name@version`), when known.
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub wins: i64,
    pub ties: i64,
    pub losses: i64,
    pub win_rate: f64,
    pub ci: Option<[f64; 2]>,
}

/// An evaluation row.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub id: i64,
    pub job_id: Option<i64>,
    pub name: String,
    pub output_dir: Option<String>,
    pub report: serde_json::Value,
    pub candidates: serde_json::Value,
    pub judge: Option<String>,
    pub created_at: String,
}

/// A comparison row.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub id: i64,
    pub evaluation_id: i64,
    pub candidate_a: String,
    pub candidate_b: String,
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub wins: i64,
    pub ties: i64,
    pub losses: i64,
    pub win_rate: f64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub created_at: String,
}

fn comparison_from_row(r: &Row) -> rusqlite::Result<Comparison> {
    Ok(Comparison {
        id: r.get(0)?,
        evaluation_id: r.get(1)?,
        candidate_a: r.get(2)?,
        candidate_b: r.get(3)?,
        model_a: r.get(4)?,
        model_b: r.get(5)?,
        wins: r.get(6)?,
        ties: r.get(7)?,
        losses: r.get(8)?,
        win_rate: r.get(9)?,
        ci_low: r.get(10)?,
        ci_high: r.get(11)?,
        created_at: r.get(12)?,
    })
}

const COMPARISON_COLUMNS: &str = "id, evaluation_id, candidate_a, candidate_b, model_a, model_b, \
    wins, ties, losses, win_rate, ci_low, ci_high, created_at";

impl Registry {
    /// Records an evaluation and its comparisons; returns its id.
    pub fn record_evaluation(&self, e: &NewEvaluation) -> Result<i64> {
        let tx = self.conn.unchecked_transaction().map_err(|x| self.err(x))?;
        let t = now();
        tx.execute(
            "INSERT INTO evaluations (job_id, name, output_dir, report_json, candidates_json, \
             judge, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                e.job_id,
                e.name,
                e.output_dir,
                e.report.to_string(),
                e.candidates.to_string(),
                e.judge,
                t
            ],
        )
        .map_err(|x| self.err(x))?;
        let id = tx.last_insert_rowid();
        for c in &e.comparisons {
            tx.execute(
                "INSERT INTO comparisons (evaluation_id, candidate_a, candidate_b, model_a, \
                 model_b, wins, ties, losses, win_rate, ci_low, ci_high, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    id,
                    c.candidate_a,
                    c.candidate_b,
                    c.model_a,
                    c.model_b,
                    c.wins,
                    c.ties,
                    c.losses,
                    c.win_rate,
                    c.ci.map(|c| c[0]),
                    c.ci.map(|c| c[1]),
                    t
                ],
            )
            .map_err(|x| self.err(x))?;
        }
        tx.commit().map_err(|x| self.err(x))?;
        Ok(id)
    }

    /// Evaluation `id`.
    pub fn evaluation(&self, id: i64) -> Result<Evaluation> {
        self.conn
            .query_row(
                "SELECT id, job_id, name, output_dir, report_json, candidates_json, judge, \
                 created_at FROM evaluations WHERE id = ?1",
                [id],
                |r| {
                    let report: Option<String> = r.get(4)?;
                    let candidates: String = r.get(5)?;
                    Ok(Evaluation {
                        id: r.get(0)?,
                        job_id: r.get(1)?,
                        name: r.get(2)?,
                        output_dir: r.get(3)?,
                        report: report
                            .and_then(|t| serde_json::from_str(&t).ok())
                            .unwrap_or(serde_json::Value::Null),
                        candidates: serde_json::from_str(&candidates).unwrap_or_default(),
                        judge: r.get(6)?,
                        created_at: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| RegistryError::NotFound {
                what: "evaluation",
                id: id.to_string(),
            })
    }

    /// The evaluation a job recorded, if any.
    pub fn evaluation_of_job(&self, job: i64) -> Result<Option<i64>> {
        self.conn
            .query_row(
                "SELECT id FROM evaluations WHERE job_id = ?1 ORDER BY id DESC LIMIT 1",
                [job],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Comparisons, newest first; those of one model (`name`, any version) when given.
    pub fn comparisons(&self, model: Option<&str>) -> Result<Vec<Comparison>> {
        self.all(
            &format!(
                "SELECT {COMPARISON_COLUMNS} FROM comparisons WHERE ?1 IS NULL \
                 OR model_a LIKE ?1 || '@%' OR model_b LIKE ?1 || '@%' ORDER BY id DESC"
            ),
            [model],
            comparison_from_row,
        )
    }

    /// The newest comparison between two registered versions (`name@version`), oriented so
    /// that `a` is the first: wins and losses swap, and the win rate and CI mirror, when it
    /// was recorded the other way round.
    pub fn comparison_between(&self, a: &str, b: &str) -> Result<Option<Comparison>> {
        let found = self
            .conn
            .query_row(
                &format!(
                    "SELECT {COMPARISON_COLUMNS} FROM comparisons WHERE (model_a = ?1 AND \
                     model_b = ?2) OR (model_a = ?2 AND model_b = ?1) ORDER BY id DESC LIMIT 1"
                ),
                [a, b],
                comparison_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(found.map(|c| match c.model_a.as_deref() == Some(a) {
            true => c,
            false => Comparison {
                candidate_a: c.candidate_b,
                candidate_b: c.candidate_a,
                model_a: c.model_b,
                model_b: c.model_a,
                wins: c.losses,
                losses: c.wins,
                win_rate: 1.0 - c.win_rate,
                ci_low: c.ci_high.map(|x| 1.0 - x),
                ci_high: c.ci_low.map(|x| 1.0 - x),
                ..c
            },
        }))
    }

    /// The mean win rate of the first candidate over all comparisons (the overview's number).
    pub fn average_win_rate(&self) -> Result<Option<f64>> {
        self.conn
            .query_row("SELECT AVG(win_rate) FROM comparisons", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::registry;
    use super::*;

    #[test]
    fn a_comparison_reads_the_same_from_either_side() {
        let (_dir, reg) = registry();
        let id = reg
            .record_evaluation(&NewEvaluation {
                name: "eval".into(),
                report: serde_json::json!({"prompts": 10}),
                comparisons: vec![NewComparison {
                    candidate_a: "adapter".into(),
                    candidate_b: "base".into(),
                    model_a: Some("pirate@2".into()),
                    model_b: Some("pirate@1".into()),
                    wins: 7,
                    ties: 1,
                    losses: 2,
                    win_rate: 0.75,
                    ci: Some([0.6, 0.9]),
                }],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(reg.evaluation(id).unwrap().report["prompts"], 10);
        let back = reg
            .comparison_between("pirate@1", "pirate@2")
            .unwrap()
            .unwrap();
        assert_eq!((back.wins, back.losses), (2, 7));
        assert!((back.win_rate - 0.25).abs() < 1e-12);
        assert!((back.ci_low.unwrap() - 0.1).abs() < 1e-12);
        assert!((back.ci_high.unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(reg.comparisons(Some("pirate")).unwrap().len(), 1);
        assert!(reg.comparisons(Some("pir")).unwrap().is_empty());
        assert!(reg
            .comparison_between("pirate@1", "pirate@3")
            .unwrap()
            .is_none());
    }
}
