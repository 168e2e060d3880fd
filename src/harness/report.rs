//! The evaluation's outputs: `report.json` (its schema is documented in `docs/eval.md` and kept
//! stable for the tools that read it), `report.md` for people, and `judgments.jsonl` with every
//! raw verdict. The numbers come from [`stats`](crate::harness::stats) and nowhere else.

use std::path::Path;

use serde::Serialize;

use crate::fsutil::write_atomic;
use crate::harness::checks::Check;
use crate::harness::config::EvalConfig;
use crate::harness::run::Outcome;
use crate::harness::stats::{
    bootstrap_ci, bradley_terry_ci, lc_win_rate, mean_ci, online_elo, summarize, wilson_ci, Game,
    PairTally, RatedGame,
};
use crate::harness::EvalError;

#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    pub candidates: Vec<CandidateRow>,
    pub prompts: usize,
    pub pairwise: Vec<PairRow>,
    pub ratings: Vec<RatingRow>,
    pub elo: Vec<EloRow>,
    pub traits: Vec<TraitRow>,
    pub checks: Vec<CheckRow>,
    pub tasks: Vec<TaskRow>,
    pub judge: JudgeRow,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub candidate: String,
    pub task: String,
    pub acc: f64,
    /// Chosen by log-probability per byte of the choice, as lm-evaluation-harness normalizes.
    pub acc_norm: f64,
    pub n: usize,
    /// Wilson's 95% interval of `acc`.
    pub ci95: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateRow {
    pub name: String,
    pub source: String,
    pub model: String,
    pub adapter: Option<String>,
    pub adapter_sha256: Option<String>,
    pub mean_response_tokens: f64,
    pub val_loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairRow {
    pub a: String,
    pub b: String,
    pub wins_a: usize,
    pub wins_b: usize,
    pub ties: usize,
    pub inconsistent: usize,
    /// Prompts left out because the judge gave no verdict in one order.
    pub judge_errors: usize,
    pub win_rate_a: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub lc_win_rate_a: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RatingRow {
    pub name: String,
    pub rating: Option<f64>,
    pub unbounded: bool,
    pub ci95: Option<[f64; 2]>,
    pub rank: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EloRow {
    pub name: String,
    pub rating: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraitRow {
    pub candidate: String,
    #[serde(rename = "trait")]
    pub name: String,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub n: usize,
    pub diff_vs_baseline: Option<f64>,
    pub diff_ci95: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub candidate: String,
    pub check: String,
    pub passed: usize,
    pub n: usize,
    pub rate: Option<f64>,
    pub ci95: Option<[f64; 2]>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JudgeRow {
    pub models: Vec<String>,
    pub calls: u64,
    pub cached: u64,
    pub errors: u64,
    pub position_consistency: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// The report's numbers from an evaluation's answers and verdicts.
pub fn build(
    cfg: &EvalConfig,
    o: &Outcome,
    baseline: Option<usize>,
) -> Result<EvalReport, EvalError> {
    let k = o.candidates.len();
    let n = o.prompts.len();
    let (rounds, seed, strong) = cfg.judge.as_ref().map_or((1000, 0, 1), |j| {
        (j.bootstrap, j.seed, j.strong_weight as u32)
    });
    let mut report = EvalReport {
        prompts: n,
        ..EvalReport::default()
    };
    for ((c, gens), val_loss) in o.candidates.iter().zip(&o.generations).zip(&o.val_loss) {
        let (source, model, local) = c.describe();
        let tokens: Vec<f64> = gens.iter().map(|g| g.output_tokens as f64).collect();
        report.candidates.push(CandidateRow {
            name: c.name.clone(),
            source,
            model,
            adapter: local
                .and_then(|l| l.adapter.as_ref())
                .map(|a| a.display().to_string()),
            adapter_sha256: local.and_then(|l| l.adapter_sha256.clone()),
            mean_response_tokens: summarize(&tokens).map_or(0.0, |s| s.mean),
            val_loss: *val_loss,
        });
    }

    // Pairwise: one game per prompt; prompts with a judge error are left out.
    let mut rated = Vec::new();
    let mut consistent = (0usize, 0usize);
    for (pair, judged) in o.pairs.iter().zip(&o.judgments) {
        let (a, b) = *pair;
        let mut games = Vec::new();
        let mut lc = Vec::new();
        for (p, j) in judged.iter().enumerate() {
            let Some(game) = j.game() else { continue };
            games.push(game);
            consistent.1 += 1;
            if game != Game::Inconsistent {
                consistent.0 += 1;
            }
            let dlen =
                o.generations[a][p].output_tokens as f64 - o.generations[b][p].output_tokens as f64;
            lc.push((game.score_first(), dlen));
            rated.push(RatedGame {
                prompt: p,
                first: a,
                second: b,
                game,
            });
        }
        let tally = PairTally::of(&games, strong);
        let ci = bootstrap_ci(games.len(), rounds, seed, |idx| {
            let sample: Vec<Game> = idx.iter().map(|&i| games[i]).collect();
            PairTally::of(&sample, strong).win_rate_first()
        });
        report.pairwise.push(PairRow {
            a: o.candidates[a].name.clone(),
            b: o.candidates[b].name.clone(),
            wins_a: tally.wins_first,
            wins_b: tally.wins_second,
            ties: tally.ties,
            inconsistent: tally.inconsistent,
            judge_errors: judged.len() - games.len(),
            win_rate_a: tally.win_rate_first(),
            ci95: ci,
            lc_win_rate_a: lc_win_rate(&lc),
        });
    }
    if !rated.is_empty() {
        rated.sort_by_key(|g| g.prompt);
        let anchor = baseline.unwrap_or(0);
        let ratings = bradley_terry_ci(k, &rated, anchor, strong, n, rounds, seed);
        for (c, r) in o.candidates.iter().zip(ratings) {
            report.ratings.push(RatingRow {
                name: c.name.clone(),
                rating: r.rating,
                unbounded: r.unbounded,
                ci95: r.ci95,
                rank: r.rank,
            });
        }
        for (c, r) in o.candidates.iter().zip(online_elo(k, &rated, strong)) {
            report.elo.push(EloRow {
                name: c.name.clone(),
                rating: r,
            });
        }
    }

    // Traits: per candidate, and paired with the baseline over the prompts both have.
    for (ci, scored) in o.rubric.iter().enumerate() {
        for t in &o.traits {
            let score = |c: usize, p: usize| -> Option<f64> {
                o.rubric[c][p]
                    .scores
                    .get(&t.name)?
                    .as_ref()
                    .ok()
                    .map(|s| *s as f64)
            };
            let values: Vec<f64> = (0..scored.len()).filter_map(|p| score(ci, p)).collect();
            let summary = summarize(&values);
            let ci95 = mean_ci(&values, rounds, seed);
            let diffs: Vec<f64> = match baseline {
                Some(b) if b != ci => (0..n)
                    .filter_map(|p| Some(score(ci, p)? - score(b, p)?))
                    .collect(),
                _ => Vec::new(),
            };
            report.traits.push(TraitRow {
                candidate: o.candidates[ci].name.clone(),
                name: t.name.clone(),
                mean: summary.map(|s| s.mean),
                std: summary.map(|s| s.std),
                ci95,
                n: values.len(),
                diff_vs_baseline: summarize(&diffs).map(|s| s.mean),
                diff_ci95: mean_ci(&diffs, rounds, seed),
            });
        }
    }

    // Offline checks.
    for (ci, gens) in o.generations.iter().enumerate() {
        for spec in &cfg.check {
            let check = Check::from_spec(spec).map_err(EvalError::Template)?;
            let results: Vec<bool> = gens
                .iter()
                .zip(&o.prompts)
                .filter_map(|(g, p)| check.passes(&g.response, p.reference.as_deref()))
                .collect();
            let passed = results.iter().filter(|r| **r).count();
            report.checks.push(CheckRow {
                candidate: o.candidates[ci].name.clone(),
                check: spec.name.clone(),
                passed,
                n: results.len(),
                rate: (!results.is_empty()).then(|| passed as f64 / results.len() as f64),
                ci95: wilson_ci(passed, results.len()),
            });
        }
    }

    // Multiple-choice tasks (local candidates only).
    for (ci, scores) in o.tasks.iter().enumerate() {
        for (name, s) in o.task_names.iter().zip(scores) {
            let Some(s) = s else { continue };
            report.tasks.push(TaskRow {
                candidate: o.candidates[ci].name.clone(),
                task: name.clone(),
                acc: s.correct as f64 / s.n.max(1) as f64,
                acc_norm: s.correct_norm as f64 / s.n.max(1) as f64,
                n: s.n,
                ci95: wilson_ci(s.correct, s.n),
            });
        }
    }

    // The judge's bill.
    let mut judge = JudgeRow {
        models: o.judge_models.clone(),
        position_consistency: (consistent.1 > 0).then(|| consistent.0 as f64 / consistent.1 as f64),
        ..JudgeRow::default()
    };
    let calls = o
        .judgments
        .iter()
        .flatten()
        .flat_map(|j| j.calls.iter())
        .chain(o.rubric.iter().flatten().map(|r| &r.call));
    for call in calls {
        judge.calls += call.requests as u64;
        judge.cached += call.cached as u64;
        judge.errors += u64::from(call.error.is_some());
        judge.input_tokens += call.input_tokens;
        judge.output_tokens += call.output_tokens;
        judge.cost_usd += call.cost_usd;
    }
    report.judge = judge;
    Ok(report)
}

/// Writes `report.json`, `report.md` and `judgments.jsonl` under `dir`.
pub fn write(dir: &Path, o: &Outcome) -> Result<(), EvalError> {
    let json = serde_json::to_string_pretty(&o.report).map_err(|source| crate::Error::Json {
        what: "report.json".into(),
        source,
    })?;
    write_atomic(&dir.join("report.json"), json.as_bytes())?;
    write_atomic(&dir.join("report.md"), render(&o.report).as_bytes())?;
    let mut lines = String::new();
    for (pair, judged) in o.pairs.iter().zip(&o.judgments) {
        for (p, j) in judged.iter().enumerate() {
            let record = serde_json::json!({
                "a": o.candidates[pair.0].name,
                "b": o.candidates[pair.1].name,
                "id": o.prompts[p].id,
                "a_shown_first": j.first_as_a.map(|v| v.label()),
                "b_shown_first": j.first_as_b.map(|v| v.label()),
                "calls": j.calls,
            });
            lines.push_str(&record.to_string());
            lines.push('\n');
        }
    }
    for (c, scored) in o.rubric.iter().enumerate() {
        for (p, r) in scored.iter().enumerate() {
            let record = serde_json::json!({
                "candidate": o.candidates[c].name,
                "id": o.prompts[p].id,
                "scores": r.scores,
                "call": r.call,
            });
            lines.push_str(&record.to_string());
            lines.push('\n');
        }
    }
    write_atomic(&dir.join("judgments.jsonl"), lines.as_bytes())?;
    crate::harness::plots::write_plots(dir, &o.report)?;
    Ok(())
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn ci_pct(ci: Option<[f64; 2]>) -> String {
    ci.map_or("-".into(), |[lo, hi]| {
        format!("{:.1}–{:.1}%", 100.0 * lo, 100.0 * hi)
    })
}

/// `report.md`: the tables a person reads.
pub fn render(r: &EvalReport) -> String {
    let mut s = format!("# Evaluation\n\n{} prompts.\n\n", r.prompts);
    s += "## Candidates\n\n| name | source | model | adapter | mean reply tokens | loss on references |\n|---|---|---|---|---|---|\n";
    for c in &r.candidates {
        s += &format!(
            "| {} | {} | {} | {} | {:.1} | {} |\n",
            c.name,
            c.source,
            c.model,
            c.adapter.as_deref().unwrap_or("-"),
            c.mean_response_tokens,
            c.val_loss.map_or("-".into(), |v| format!("{v:.4}"))
        );
    }
    if !r.pairwise.is_empty() {
        s += "\n## Pairwise (judged in both orders; a disagreement is a tie)\n\n";
        s += "| a | b | wins a | wins b | ties | inconsistent | judge errors | win rate a | 95% CI | length-controlled |\n|---|---|---|---|---|---|---|---|---|---|\n";
        for p in &r.pairwise {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.a,
                p.b,
                p.wins_a,
                p.wins_b,
                p.ties,
                p.inconsistent,
                p.judge_errors,
                pct(p.win_rate_a),
                ci_pct(p.ci95),
                pct(p.lc_win_rate_a)
            );
        }
    }
    if !r.ratings.is_empty() {
        s += "\n## Ratings (Bradley-Terry, Elo scale)\n\n| rank | name | rating | 95% CI | online Elo |\n|---|---|---|---|---|\n";
        let mut rows: Vec<(&RatingRow, Option<&EloRow>)> = r
            .ratings
            .iter()
            .map(|x| (x, r.elo.iter().find(|e| e.name == x.name)))
            .collect();
        rows.sort_by_key(|(x, _)| x.rank);
        for (x, e) in rows {
            let rating = match (x.rating, x.unbounded) {
                (Some(v), _) => format!("{v:.0}"),
                (None, _) => "unbounded".into(),
            };
            let ci = x
                .ci95
                .map_or("-".into(), |[lo, hi]| format!("{lo:.0}–{hi:.0}"));
            let elo = e.map_or("-".into(), |e| format!("{:.0}", e.rating));
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                x.rank, x.name, rating, ci, elo
            );
        }
    }
    if !r.traits.is_empty() {
        s += "\n## Traits (1–5)\n\n| candidate | trait | mean | std | 95% CI | n | vs baseline |\n|---|---|---|---|---|---|---|\n";
        for t in &r.traits {
            let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                t.candidate,
                t.name,
                f(t.mean),
                f(t.std),
                t.ci95
                    .map_or("-".into(), |[lo, hi]| format!("{lo:.2}–{hi:.2}")),
                t.n,
                f(t.diff_vs_baseline)
            );
        }
    }
    if !r.checks.is_empty() {
        s += "\n## Checks\n\n| candidate | check | passed | rate | 95% CI |\n|---|---|---|---|---|\n";
        for c in &r.checks {
            s += &format!(
                "| {} | {} | {}/{} | {} | {} |\n",
                c.candidate,
                c.check,
                c.passed,
                c.n,
                pct(c.rate),
                ci_pct(c.ci95)
            );
        }
    }
    if !r.tasks.is_empty() {
        s += "\n## Multiple-choice tasks\n\n| candidate | task | acc | 95% CI | acc_norm | n |\n|---|---|---|---|---|---|\n";
        for t in &r.tasks {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                t.candidate,
                t.task,
                pct(Some(t.acc)),
                ci_pct(t.ci95),
                pct(Some(t.acc_norm)),
                t.n
            );
        }
    }
    if !r.judge.models.is_empty() {
        let j = &r.judge;
        s += &format!(
            "\n## Judge\n\n{}: {} calls ({} from the cache), {} errors, position consistency {}, {} input and {} output tokens, ${:.4}.\n",
            j.models.join(", "),
            j.calls,
            j.cached,
            j.errors,
            pct(j.position_consistency),
            j.input_tokens,
            j.output_tokens,
            j.cost_usd
        );
    }
    s
}
