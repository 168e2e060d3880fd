//! `data stats`: what a dataset holds. Counts and turns per conversation from the file alone;
//! with a tokenizer and template, token lengths (prompt, target, total, as training renders and
//! masks them, so they equal `inspect`'s) with percentiles, the share cut or dropped at a
//! `max_seq_len`, and a length histogram as SVG.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::formats::{read_records, Format};
use crate::data::mask::tokenize_line;
use crate::data::prepare::{fit_to_length, Fit};
use crate::data::validate::TokenCheck;
use crate::data::{Conversation, LossOn, Role};
use crate::Result;

/// Percentiles of a list of counts (nearest rank).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub min: usize,
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p95: usize,
    pub p99: usize,
    pub max: usize,
}

impl Summary {
    pub fn of(values: &[usize]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        Summary {
            min: sorted[0],
            mean: sorted.iter().sum::<usize>() as f64 / sorted.len() as f64,
            p50: rank(50.0),
            p90: rank(90.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// One record's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowTokens {
    pub line: usize,
    /// Every token of the rendering up to the last trained reply.
    pub total: usize,
    /// Loss targets.
    pub target: usize,
    /// The rest: `total - target`.
    pub prompt: usize,
}

/// Token lengths with the model's template and tokenizer.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStats {
    pub max_seq_len: usize,
    pub loss_on: LossOn,
    pub prompt: Summary,
    pub target: Summary,
    pub total: Summary,
    /// Records within `max_seq_len`, cut from the left (the last reply kept), and dropped.
    pub kept: usize,
    pub truncated: usize,
    pub dropped: usize,
    /// `truncated / records`, and `dropped / records`.
    pub truncated_share: f64,
    pub dropped_share: f64,
    pub rows: Vec<RowTokens>,
}

/// What a dataset holds.
#[derive(Debug, Clone, Serialize)]
pub struct DataStats {
    pub path: PathBuf,
    pub format: Format,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detected_from: Option<&'static str>,
    pub records: usize,
    /// Records with a system message.
    pub with_system: usize,
    /// Messages per conversation (a pair counts its prompt and chosen reply).
    pub messages: Summary,
    /// Assistant turns per conversation.
    pub assistant_turns: Summary,
    /// Words of the last assistant reply.
    pub reply_words: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenStats>,
}

/// Reads `path` (as `format`, or the format its first line shows) and counts; with `tokens`,
/// renders and tokenizes every record as training does. A bad line is an error naming it.
pub fn file_stats(
    path: &Path,
    format: Option<Format>,
    tokens: Option<&TokenCheck>,
) -> Result<DataStats> {
    let file = read_records(path, format)?;
    let convs: Vec<(usize, Vec<crate::data::Message>)> = file
        .records
        .iter()
        .map(|(line, r)| (*line, r.conversation()))
        .collect();
    let count = |f: &dyn Fn(&[crate::data::Message]) -> usize| -> Vec<usize> {
        convs.iter().map(|(_, m)| f(m)).collect()
    };
    let messages = count(&|m| m.len());
    let assistant = count(&|m| m.iter().filter(|m| m.role == Role::Assistant).count());
    let words = count(&|m| {
        m.iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map_or(0, |m| m.content.split_whitespace().count())
    });
    let with_system = convs
        .iter()
        .filter(|(_, m)| m.iter().any(|m| m.role == Role::System))
        .count();
    let tokens = match tokens {
        None => None,
        Some(check) => Some(token_stats(path, &convs, check)?),
    };
    Ok(DataStats {
        path: path.to_path_buf(),
        format: file.format,
        detected_from: file.detected_from,
        records: file.records.len(),
        with_system,
        messages: Summary::of(&messages),
        assistant_turns: Summary::of(&assistant),
        reply_words: Summary::of(&words),
        tokens,
    })
}

fn token_stats(
    path: &Path,
    convs: &[(usize, Vec<crate::data::Message>)],
    check: &TokenCheck,
) -> Result<TokenStats> {
    let mut rows = Vec::with_capacity(convs.len());
    let (mut kept, mut truncated, mut dropped) = (0, 0, 0);
    for (line, messages) in convs {
        let conv = Conversation {
            messages: messages.clone(),
        };
        let ex = tokenize_line(
            &conv,
            path,
            *line,
            check.template,
            check.tokenizer,
            check.loss_on,
        )?;
        let (total, target) = (ex.input_ids.len(), ex.num_targets());
        rows.push(RowTokens {
            line: *line,
            total,
            target,
            prompt: total - target,
        });
        match fit_to_length(&ex, check.max_seq_len) {
            Fit::Kept(_) => kept += 1,
            Fit::Truncated(_) => truncated += 1,
            Fit::Dropped => dropped += 1,
        }
    }
    let of = |f: fn(&RowTokens) -> usize| Summary::of(&rows.iter().map(f).collect::<Vec<_>>());
    let n = rows.len().max(1) as f64;
    Ok(TokenStats {
        max_seq_len: check.max_seq_len,
        loss_on: check.loss_on,
        prompt: of(|r| r.prompt),
        target: of(|r| r.target),
        total: of(|r| r.total),
        kept,
        truncated,
        dropped,
        truncated_share: truncated as f64 / n,
        dropped_share: dropped as f64 / n,
        rows,
    })
}

/// A histogram of total token lengths as SVG, with `max_seq_len` marked.
pub fn length_histogram_svg(stats: &TokenStats, title: &str) -> String {
    use std::fmt::Write;
    const W: f64 = 640.0;
    const H: f64 = 320.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 40.0;
    const TOP: f64 = 32.0;
    let lengths: Vec<usize> = stats.rows.iter().map(|r| r.total).collect();
    let top = lengths
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(stats.max_seq_len)
        .max(1);
    let bins = 30usize;
    let width = top.div_ceil(bins).max(1);
    let mut counts = vec![0usize; bins];
    for l in &lengths {
        counts[(l / width).min(bins - 1)] += 1;
    }
    let highest = counts.iter().copied().max().unwrap_or(1).max(1);
    let plot_w = W - LEFT - 16.0;
    let plot_h = H - TOP - BOTTOM;
    let bar_w = plot_w / bins as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{}</text>",
        escape(title)
    );
    for (i, c) in counts.iter().enumerate() {
        let h = plot_h * *c as f64 / highest as f64;
        let x = LEFT + i as f64 * bar_w;
        let y = TOP + plot_h - h;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4c78a8\"><title>{}-{} tokens: {c}</title></rect>",
            (bar_w - 1.0).max(0.5),
            i * width,
            (i + 1) * width - 1
        );
    }
    let axis_y = TOP + plot_h;
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{axis_y}\" x2=\"{:.1}\" y2=\"{axis_y}\" stroke=\"black\"/>",
        LEFT + plot_w
    );
    let mark = LEFT + plot_w * stats.max_seq_len as f64 / (bins * width) as f64;
    let _ = writeln!(
        svg,
        "<line x1=\"{mark:.1}\" y1=\"{TOP}\" x2=\"{mark:.1}\" y2=\"{axis_y}\" stroke=\"#e45756\" stroke-dasharray=\"4 3\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#e45756\">max_seq_len {}</text>",
        mark + 4.0,
        TOP + 12.0,
        stats.max_seq_len
    );
    for (x, label) in [
        (LEFT, "0".to_string()),
        (LEFT + plot_w, (bins * width).to_string()),
    ] {
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            axis_y + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">tokens per conversation ({} conversations; tallest bar {highest})</text>",
        LEFT + plot_w / 2.0,
        axis_y + 32.0,
        lengths.len()
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<usize> = (1..=100).collect();
        let s = Summary::of(&values);
        assert_eq!(
            (s.min, s.p50, s.p90, s.p95, s.p99, s.max),
            (1, 50, 90, 95, 99, 100)
        );
        assert_eq!(s.mean, 50.5);
        let one = Summary::of(&[7]);
        assert_eq!((one.p50, one.p99), (7, 7));
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn the_histogram_is_an_svg_with_the_limit_marked() {
        let rows = (1..=50)
            .map(|i| RowTokens {
                line: i,
                total: i * 10,
                target: 5,
                prompt: i * 10 - 5,
            })
            .collect();
        let stats = TokenStats {
            max_seq_len: 256,
            loss_on: LossOn::LastAssistant,
            prompt: Summary::default(),
            target: Summary::default(),
            total: Summary::default(),
            kept: 25,
            truncated: 25,
            dropped: 0,
            truncated_share: 0.5,
            dropped_share: 0.0,
            rows,
        };
        let svg = length_histogram_svg(&stats, "a <b>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("max_seq_len 256") && svg.contains("a &lt;b&gt;"));
    }
}
