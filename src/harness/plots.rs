//! The report's plots as SVG written here (no image library, no fonts needed to write them):
//! ratings with their CI bars, the pairwise win-rate heatmap, win/tie/loss bars per pair, trait
//! means and check pass rates with their CIs. Each is drawn only when the report has its numbers.

use std::fmt::Write as _;
use std::path::Path;

use crate::fsutil::write_atomic;
use crate::harness::report::EvalReport;
use crate::harness::EvalError;

const WIDTH: f64 = 640.0;
const ROW: f64 = 28.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 40.0;
const WIN: &str = "#2e7d32";
const TIE: &str = "#9e9e9e";
const LOSS: &str = "#c62828";
const BAR: &str = "#1565c0";

/// Writes every plot the report has numbers for under `dir/plots/`; returns their file names.
pub fn write_plots(dir: &Path, r: &EvalReport) -> Result<Vec<String>, EvalError> {
    let mut written = Vec::new();
    for (name, svg) in [
        ("ratings.svg", ratings(r)),
        ("win_rates.svg", heatmap(r)),
        ("outcomes.svg", outcomes(r)),
        ("traits.svg", traits(r)),
        ("checks.svg", checks(r)),
    ] {
        if let Some(svg) = svg {
            write_atomic(&dir.join("plots").join(name), svg.as_bytes())?;
            written.push(name.to_string());
        }
    }
    Ok(written)
}

/// Text safe inside SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn open(height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{:.0}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        WIDTH / 2.0,
        esc(title)
    )
}

fn label(s: &mut String, y: f64, text: &str) {
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        LEFT - 8.0,
        y + 4.0,
        esc(text)
    );
}

/// Maps `v` in `[lo, hi]` onto the plot's width.
fn scale(v: f64, lo: f64, hi: f64) -> f64 {
    let span = if hi > lo { hi - lo } else { 1.0 };
    LEFT + (v - lo) / span * (WIDTH - LEFT - RIGHT)
}

fn axis(s: &mut String, y: f64, lo: f64, hi: f64, fmt: impl Fn(f64) -> String) {
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"black\"/>",
        WIDTH - RIGHT
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let x = scale(v, lo, hi);
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y + 16.0,
            fmt(v)
        );
    }
}

fn ratings(r: &EvalReport) -> Option<String> {
    let rows: Vec<_> = r
        .ratings
        .iter()
        .filter(|x| x.rating.is_some() || x.ci95.is_some())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|x| x.rating.into_iter().chain(x.ci95.into_iter().flatten()))
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min) - 10.0;
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 10.0;
    let height = TOP + ROW * rows.len() as f64 + 40.0;
    let mut s = open(height, "Bradley-Terry rating with 95% CI");
    for (i, x) in rows.iter().enumerate() {
        let y = TOP + ROW * (i as f64 + 0.5);
        label(&mut s, y, &format!("{} (rank {})", x.name, x.rank));
        if let Some([a, b]) = x.ci95 {
            let _ = writeln!(
                s,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{BAR}\" stroke-width=\"2\"/>",
                scale(a, lo, hi),
                scale(b, lo, hi)
            );
        }
        match x.rating {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{BAR}\"><title>{v:.0}</title></circle>",
                    scale(v, lo, hi)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\">unbounded</text>",
                    WIDTH - RIGHT - 60.0,
                    y + 4.0
                );
            }
        }
    }
    axis(&mut s, TOP + ROW * rows.len() as f64 + 6.0, lo, hi, |v| {
        format!("{v:.0}")
    });
    s.push_str("</svg>\n");
    Some(s)
}

fn heatmap(r: &EvalReport) -> Option<String> {
    if r.pairwise.is_empty() {
        return None;
    }
    let mut rows: Vec<&str> = Vec::new();
    let mut cols: Vec<&str> = Vec::new();
    for p in &r.pairwise {
        if !rows.contains(&p.a.as_str()) {
            rows.push(&p.a);
        }
        if !cols.contains(&p.b.as_str()) {
            cols.push(&p.b);
        }
    }
    let cell = ((WIDTH - LEFT - RIGHT) / cols.len() as f64).min(120.0);
    let height = TOP + 20.0 + cell.min(60.0) * rows.len() as f64 + 20.0;
    let h = cell.min(60.0);
    let mut s = open(height, "Win rate of the row against the column");
    for (j, c) in cols.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            LEFT + cell * (j as f64 + 0.5),
            TOP + 10.0,
            esc(c)
        );
    }
    for (i, a) in rows.iter().enumerate() {
        let y = TOP + 20.0 + h * i as f64;
        label(&mut s, y + h / 2.0, a);
        for (j, b) in cols.iter().enumerate() {
            let Some(p) = r.pairwise.iter().find(|p| p.a == *a && p.b == *b) else {
                continue;
            };
            let Some(w) = p.win_rate_a else { continue };
            // Red below ½, green above.
            let (red, green) = if w < 0.5 {
                (200, (200.0 * w * 2.0) as u8)
            } else {
                ((200.0 * (1.0 - w) * 2.0) as u8, 170)
            };
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{h:.1}\" fill=\"rgb({red},{green},80)\" stroke=\"white\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"white\">{:.0}%</text>",
                LEFT + cell * j as f64,
                LEFT + cell * (j as f64 + 0.5),
                y + h / 2.0 + 4.0,
                100.0 * w
            );
        }
    }
    s.push_str("</svg>\n");
    Some(s)
}

fn outcomes(r: &EvalReport) -> Option<String> {
    if r.pairwise.is_empty() {
        return None;
    }
    let height = TOP + ROW * r.pairwise.len() as f64 + 40.0;
    let mut s = open(
        height,
        "Wins, ties and losses per prompt (first named side)",
    );
    for (i, p) in r.pairwise.iter().enumerate() {
        let y = TOP + ROW * i as f64 + 4.0;
        label(&mut s, y + 10.0, &format!("{} vs {}", p.a, p.b));
        let n = (p.wins_a + p.wins_b + p.ties).max(1) as f64;
        let mut x = LEFT;
        for (count, color, what) in [
            (p.wins_a, WIN, "wins"),
            (p.ties, TIE, "ties"),
            (p.wins_b, LOSS, "losses"),
        ] {
            let w = (WIDTH - LEFT - RIGHT) * count as f64 / n;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"20\" fill=\"{color}\"><title>{count} {what}</title></rect>"
            );
            x += w;
        }
    }
    axis(
        &mut s,
        TOP + ROW * r.pairwise.len() as f64 + 6.0,
        0.0,
        1.0,
        |v| format!("{:.0}%", 100.0 * v),
    );
    s.push_str("</svg>\n");
    Some(s)
}

fn checks(r: &EvalReport) -> Option<String> {
    let rows: Vec<_> = r.checks.iter().filter(|c| c.rate.is_some()).collect();
    if rows.is_empty() {
        return None;
    }
    let height = TOP + ROW * rows.len() as f64 + 40.0;
    let mut s = open(height, "Offline checks: pass rate with 95% CI");
    for (i, c) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64 + 4.0;
        label(&mut s, y + 10.0, &format!("{} · {}", c.candidate, c.check));
        let rate = c.rate.unwrap_or(0.0);
        let _ = writeln!(
            s,
            "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"20\" fill=\"{WIN}\"><title>{}/{}</title></rect>",
            scale(rate, 0.0, 1.0) - LEFT,
            c.passed,
            c.n
        );
        if let Some([a, b]) = c.ci95 {
            let _ = writeln!(
                s,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
                scale(a, 0.0, 1.0),
                y + 10.0,
                scale(b, 0.0, 1.0),
                y + 10.0
            );
        }
    }
    axis(&mut s, TOP + ROW * rows.len() as f64 + 6.0, 0.0, 1.0, |v| {
        format!("{:.0}%", 100.0 * v)
    });
    s.push_str("</svg>\n");
    Some(s)
}

fn traits(r: &EvalReport) -> Option<String> {
    let rows: Vec<_> = r.traits.iter().filter(|t| t.mean.is_some()).collect();
    if rows.is_empty() {
        return None;
    }
    let height = TOP + ROW * rows.len() as f64 + 40.0;
    let mut s = open(height, "Trait scores (1-5) with 95% CI");
    for (i, t) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64 + 4.0;
        label(&mut s, y + 10.0, &format!("{} · {}", t.candidate, t.name));
        let mean = t.mean.unwrap_or(1.0);
        let _ = writeln!(
            s,
            "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"20\" fill=\"{BAR}\"><title>{mean:.2}</title></rect>",
            scale(mean, 1.0, 5.0) - LEFT
        );
        if let Some([a, b]) = t.ci95 {
            let _ = writeln!(
                s,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
                scale(a, 1.0, 5.0),
                y + 10.0,
                scale(b, 1.0, 5.0),
                y + 10.0
            );
        }
    }
    axis(&mut s, TOP + ROW * rows.len() as f64 + 6.0, 1.0, 5.0, |v| {
        format!("{v:.0}")
    });
    s.push_str("</svg>\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::report::{PairRow, RatingRow, TraitRow};

    fn report() -> EvalReport {
        EvalReport {
            pairwise: vec![PairRow {
                a: "tuned <v2>".into(),
                b: "base".into(),
                wins_a: 6,
                wins_b: 2,
                ties: 2,
                inconsistent: 1,
                judge_errors: 0,
                win_rate_a: Some(0.7),
                ci95: Some([0.5, 0.9]),
                lc_win_rate_a: Some(0.68),
            }],
            ratings: vec![
                RatingRow {
                    name: "base".into(),
                    rating: Some(1000.0),
                    unbounded: false,
                    ci95: Some([1000.0, 1000.0]),
                    rank: 2,
                },
                RatingRow {
                    name: "tuned <v2>".into(),
                    rating: None,
                    unbounded: true,
                    ci95: Some([1100.0, 1300.0]),
                    rank: 1,
                },
            ],
            checks: vec![crate::harness::report::CheckRow {
                candidate: "base".into(),
                check: "signs-off".into(),
                passed: 3,
                n: 4,
                rate: Some(0.75),
                ci95: Some([0.3, 0.95]),
            }],
            traits: vec![TraitRow {
                candidate: "base".into(),
                name: "clarity".into(),
                mean: Some(3.5),
                std: Some(0.5),
                ci95: Some([3.2, 3.8]),
                n: 10,
                diff_vs_baseline: None,
                diff_ci95: None,
            }],
            ..EvalReport::default()
        }
    }

    #[test]
    fn every_plot_with_numbers_is_written_and_names_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let names = write_plots(dir.path(), &report()).unwrap();
        assert_eq!(
            names,
            [
                "ratings.svg",
                "win_rates.svg",
                "outcomes.svg",
                "traits.svg",
                "checks.svg"
            ]
        );
        for name in &names {
            let svg = std::fs::read_to_string(dir.path().join("plots").join(name)).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{name}"
            );
            assert!(!svg.contains("<v2>"), "{name} is not escaped");
        }
        let ratings = std::fs::read_to_string(dir.path().join("plots/ratings.svg")).unwrap();
        assert!(ratings.contains("tuned &lt;v2&gt; (rank 1)") && ratings.contains("unbounded"));
        let heat = std::fs::read_to_string(dir.path().join("plots/win_rates.svg")).unwrap();
        assert!(heat.contains(">70%<"), "{heat}");
    }

    #[test]
    fn a_report_without_numbers_draws_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_plots(dir.path(), &EvalReport::default())
            .unwrap()
            .is_empty());
        assert!(!dir.path().join("plots").exists());
    }
}
