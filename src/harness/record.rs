//! An evaluation's report into the registry: the report, its candidates and judge, one
//! comparison row per judged pair, each candidate tied to a registered model version
//! (`name@version`) when its adapter is one, and that version's numbers (win rate and its CI,
//! Elo, validation loss, check and task rates) copied into its metrics for the models page.
//! Both `lora-train eval` and a training run's end-of-run report record through here.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::harness::report::EvalReport;
use crate::registry::{NewComparison, NewEvaluation, Registry, RegistryError};

/// Where an evaluation came from, for its row.
#[derive(Debug, Clone, Default)]
pub struct EvalSource<'a> {
    /// The job that ran it (a server-run eval, or the training run it reports on).
    pub job_id: Option<i64>,
    pub name: String,
    pub output_dir: Option<&'a Path>,
    /// Candidates the caller already knows as registered versions: candidate name →
    /// `name@version` (a training run's adapter is the version it just registered).
    pub known: BTreeMap<String, String>,
}

/// Records `report` and returns the evaluation's id.
pub fn record_evaluation(
    reg: &Registry,
    report: &EvalReport,
    source: &EvalSource,
) -> Result<i64, RegistryError> {
    let mut registered: BTreeMap<String, String> = BTreeMap::new();
    for c in &report.candidates {
        if let Some(known) = source.known.get(&c.name) {
            registered.insert(c.name.clone(), known.clone());
            continue;
        }
        let Some(adapter) = &c.adapter else { continue };
        let path = std::path::absolute(adapter).unwrap_or_else(|_| adapter.into());
        if let Some(v) = reg.version_with_adapter(&path.to_string_lossy())? {
            registered.insert(c.name.clone(), format!("{}@{}", v.name, v.version));
        }
    }
    let comparisons: Vec<NewComparison> = report
        .pairwise
        .iter()
        .filter_map(|p| {
            Some(NewComparison {
                candidate_a: p.a.clone(),
                candidate_b: p.b.clone(),
                model_a: registered.get(&p.a).cloned(),
                model_b: registered.get(&p.b).cloned(),
                wins: p.wins_a as i64,
                ties: p.ties as i64,
                losses: p.wins_b as i64,
                // A pair with no usable verdict has no win rate: nothing to compare.
                win_rate: p.win_rate_a?,
                ci: p.ci95,
            })
        })
        .collect();
    let candidates: Vec<Value> = report
        .candidates
        .iter()
        .map(|c| {
            let mut row = serde_json::to_value(c).unwrap_or_else(|_| json!({"name": c.name}));
            if let Some(obj) = row.as_object_mut() {
                obj.insert("registered".into(), json!(registered.get(&c.name)));
            }
            row
        })
        .collect();
    let judge = match report.judge.models.is_empty() {
        true => None,
        false => Some(report.judge.models.join(", ")),
    };
    let output_dir = source.output_dir.map(|d| {
        std::path::absolute(d)
            .unwrap_or_else(|_| d.to_path_buf())
            .to_string_lossy()
            .into_owned()
    });
    let id = reg.record_evaluation(&NewEvaluation {
        job_id: source.job_id,
        name: source.name.clone(),
        output_dir,
        report: serde_json::to_value(report).unwrap_or(Value::Null),
        candidates: Value::Array(candidates),
        judge,
        comparisons,
    })?;
    for (candidate, version) in &registered {
        let metrics = candidate_metrics(report, candidate, &registered, id);
        let Some((name, v)) = version.rsplit_once('@') else {
            continue;
        };
        let Ok(v) = v.parse::<i64>() else { continue };
        if !metrics.is_empty() {
            reg.add_model_metrics(name, v, &metrics)?;
        }
    }
    Ok(id)
}

/// One candidate's numbers from the report, under the names the models page shows.
fn candidate_metrics(
    report: &EvalReport,
    name: &str,
    registered: &BTreeMap<String, String>,
    evaluation: i64,
) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: String, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            m.insert(k, v.into());
        }
    };
    // The candidate's first judged pair, oriented with it as `a`.
    let pair = report.pairwise.iter().find_map(|p| {
        let rate = p.win_rate_a?;
        match (p.a == name, p.b == name) {
            (true, _) => Some((p.b.clone(), rate, p.ci95)),
            (_, true) => Some((
                p.a.clone(),
                1.0 - rate,
                p.ci95.map(|c| [1.0 - c[1], 1.0 - c[0]]),
            )),
            _ => None,
        }
    });
    let mut against = None;
    if let Some((other, rate, ci)) = pair {
        put("win_rate".into(), Some(rate));
        put("win_rate_ci_low".into(), ci.map(|c| c[0]));
        put("win_rate_ci_high".into(), ci.map(|c| c[1]));
        against = Some(registered.get(&other).cloned().unwrap_or(other));
    }
    put(
        "elo".into(),
        report.elo.iter().find(|e| e.name == name).map(|e| e.rating),
    );
    put(
        "eval_val_loss".into(),
        report
            .candidates
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.val_loss),
    );
    // The models page's "average trait": the mean of the candidate's trait means.
    let traits: Vec<f64> = report
        .traits
        .iter()
        .filter(|t| t.candidate == name)
        .filter_map(|t| t.mean)
        .collect();
    if !traits.is_empty() {
        put(
            "trait_mean".into(),
            Some(traits.iter().sum::<f64>() / traits.len() as f64),
        );
    }
    for c in report.checks.iter().filter(|c| c.candidate == name) {
        put(format!("check_{}", c.check), c.rate);
    }
    for t in report.tasks.iter().filter(|t| t.candidate == name) {
        put(format!("task_{}", t.task), Some(t.acc));
    }
    if !m.is_empty() {
        if let Some(other) = against {
            m.insert("win_rate_vs".into(), other.into());
        }
        m.insert("evaluation_id".into(), evaluation.into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::{CandidateRow, EloRow, PairRow, TraitRow};
    use crate::registry::NewModelVersion;

    fn candidate(name: &str, adapter: Option<&str>) -> CandidateRow {
        CandidateRow {
            name: name.into(),
            source: "local".into(),
            model: "base-model".into(),
            adapter: adapter.map(Into::into),
            adapter_sha256: None,
            mean_response_tokens: 3.0,
            val_loss: Some(1.5),
        }
    }

    #[test]
    fn pairs_become_comparisons_of_registered_versions_with_their_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(&dir.path().join("r.db")).unwrap();
        let adapter = dir.path().join("runs/a/adapter");
        let adapter = adapter.to_string_lossy().into_owned();
        let registered = |path: &str| {
            reg.register_model(&NewModelVersion {
                name: "pirate".into(),
                base_model: "base-model".into(),
                adapter_path: Some(path.into()),
                ..Default::default()
            })
            .unwrap()
        };
        registered("/elsewhere/adapter");
        registered(&adapter);
        let report = EvalReport {
            candidates: vec![
                candidate("base", None),
                candidate("adapter", Some(&adapter)),
            ],
            pairwise: vec![PairRow {
                a: "adapter".into(),
                b: "base".into(),
                wins_a: 8,
                wins_b: 1,
                ties: 1,
                inconsistent: 0,
                judge_errors: 0,
                win_rate_a: Some(0.85),
                ci95: Some([0.62, 0.97]),
                lc_win_rate_a: None,
            }],
            elo: vec![EloRow {
                name: "adapter".into(),
                rating: 1040.0,
            }],
            traits: ["pirate", "helpful"]
                .iter()
                .zip([8.0, 6.0])
                .map(|(t, mean)| TraitRow {
                    candidate: "adapter".into(),
                    name: t.to_string(),
                    mean: Some(mean),
                    std: None,
                    ci95: None,
                    n: 10,
                    diff_vs_baseline: None,
                    diff_ci95: None,
                })
                .collect(),
            judge: crate::harness::report::JudgeRow {
                models: vec!["openai:judge".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let id = record_evaluation(
            &reg,
            &report,
            &EvalSource {
                name: "eval".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let e = reg.evaluation(id).unwrap();
        assert_eq!(e.judge.as_deref(), Some("openai:judge"));
        assert_eq!(e.candidates[1]["registered"], "pirate@2");
        assert!(e.candidates[0]["registered"].is_null());
        let c = &reg.comparisons(None).unwrap()[0];
        assert_eq!((c.wins, c.losses, c.ties), (8, 1, 1));
        assert_eq!(c.model_a.as_deref(), Some("pirate@2"));
        assert_eq!(c.model_b, None);
        assert_eq!((c.ci_low, c.ci_high), (Some(0.62), Some(0.97)));
        let v = reg.model_version("pirate", 2).unwrap();
        assert_eq!(v.metrics["win_rate"], 0.85);
        assert_eq!(v.metrics["win_rate_ci_low"], 0.62);
        assert_eq!(v.metrics["elo"], 1040.0);
        assert_eq!(v.metrics["trait_mean"], 7.0);
        assert_eq!(v.metrics["win_rate_vs"], "base");
        assert!(reg.model_version("pirate", 1).unwrap().metrics.is_empty());
    }
}
