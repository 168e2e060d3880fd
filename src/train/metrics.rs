//! The lines of `metrics.jsonl` (one JSON object per step, plus validation lines) and the
//! loss-curve plot drawn from them. No I/O here: [`super::run_log::RunLog`] writes both.

use serde::{Deserialize, Serialize};

/// One training step's line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_second: f64,
    pub elapsed_s: f64,
    /// Conversations trained on in the step (with `data.packing`, several per row; with DPO,
    /// pairs); absent in the logs of older runs.
    #[serde(default)]
    pub conversations: usize,
    /// DPO's rewards and log-probabilities (absent for SFT).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
}

/// DPO's measures of a step or a validation, named as TRL's `DPOTrainer` logs them: the
/// implicit rewards `β · (log π(y|x) − log π_ref(y|x))` of the chosen and rejected replies,
/// the fraction of pairs whose chosen reward is the higher, their mean difference, and the
/// replies' summed log-probabilities under the policy. Means over the pairs (over each
/// micro-batch, then over the step's micro-batches, as TRL averages what it logs).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct PreferenceMetrics {
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

impl PreferenceMetrics {
    /// `self + other · weight`, field by field: sums for weighted means.
    pub fn add_scaled(&mut self, other: &PreferenceMetrics, weight: f64) {
        self.rewards_chosen += other.rewards_chosen * weight;
        self.rewards_rejected += other.rewards_rejected * weight;
        self.rewards_accuracies += other.rewards_accuracies * weight;
        self.rewards_margins += other.rewards_margins * weight;
        self.logps_chosen += other.logps_chosen * weight;
        self.logps_rejected += other.logps_rejected * weight;
    }
}

/// One validation line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalMetrics {
    pub step: usize,
    pub epoch: f64,
    pub val_loss: f64,
    pub val_tokens: usize,
    /// DPO's measures on the validation pairs (absent for SFT).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
}

/// A line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MetricsLine {
    Eval(EvalMetrics),
    Step(StepMetrics),
}

impl MetricsLine {
    pub fn step(&self) -> usize {
        match self {
            MetricsLine::Eval(e) => e.step,
            MetricsLine::Step(s) => s.step,
        }
    }
}

/// Train and validation loss against step as an SVG document; None without any loss.
pub fn loss_plot_svg(lines: &[MetricsLine], title: &str) -> Option<String> {
    let train = step_points(lines, |s| Some(s.loss));
    let val: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Eval(e) => Some((e.step as f64, e.val_loss)),
            _ => None,
        })
        .collect();
    line_plot_svg(
        title,
        "optimizer step",
        "loss",
        &[
            Series {
                label: "train loss".into(),
                color: "#1f77b4",
                points: train,
                dots: false,
            },
            Series {
                label: "validation loss".into(),
                color: "#d62728",
                points: val,
                dots: true,
            },
        ],
    )
}

/// DPO's rewards (TRL's `rewards/chosen`, `rewards/rejected`, `rewards/margins`) against step
/// as an SVG document; None without DPO steps.
pub fn rewards_plot_svg(lines: &[MetricsLine], title: &str) -> Option<String> {
    let of = |f: fn(&PreferenceMetrics) -> f64| {
        step_points(lines, move |s| s.preference.as_ref().map(f))
    };
    let series = [
        ("rewards/chosen", "#2ca02c", of(|p| p.rewards_chosen)),
        ("rewards/rejected", "#d62728", of(|p| p.rewards_rejected)),
        ("rewards/margins", "#1f77b4", of(|p| p.rewards_margins)),
    ];
    let series: Vec<Series> = series
        .into_iter()
        .map(|(label, color, points)| Series {
            label: label.into(),
            color,
            points,
            dots: false,
        })
        .collect();
    line_plot_svg(title, "optimizer step", "reward", &series)
}

fn step_points(lines: &[MetricsLine], y: impl Fn(&StepMetrics) -> Option<f64>) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter_map(|l| match l {
            MetricsLine::Step(s) => y(s).map(|v| (s.step as f64, v)),
            _ => None,
        })
        .collect()
}

/// One line of a plot.
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    /// Mark each point (sparse series such as validations).
    pub dots: bool,
}

/// Lines against `x_label` (from 0) as an SVG document, with a legend; None without points.
pub fn line_plot_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Option<String> {
    let all: Vec<&(f64, f64)> = series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        return None;
    }
    let (w, h, ml, mr, mt, mb) = (800.0, 480.0, 70.0, 20.0, 40.0, 50.0);
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymin = all
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let ymax = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max) * 1.05;
    let ymax = if ymax > ymin { ymax } else { ymin + 1.0 };
    let sx = |x: f64| ml + (x / xmax) * (w - ml - mr);
    let sy = |y: f64| mt + (1.0 - (y - ymin) / (ymax - ymin)) * (h - mt - mb);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        xml_escape(title)
    );
    // Axes, ticks and grid.
    for i in 0..=5 {
        let y = ymin + (ymax - ymin) * i as f64 / 5.0;
        svg += &format!(
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.3}</text>\n",
            w - mr,
            ml - 6.0,
            sy(y) + 4.0,
            py = sy(y)
        );
        let x = xmax * i as f64 / 5.0;
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            sx(x),
            h - mb + 18.0,
            x.round()
        );
    }
    svg += &format!(
        "<line x1=\"{ml}\" x2=\"{ml}\" y1=\"{mt}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{ml}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        h - mb,
        w - mr,
        h - mb,
        h - mb,
        (w + ml) / 2.0,
        h - 10.0,
        xml_escape(x_label),
        h / 2.0,
        h / 2.0,
        xml_escape(y_label)
    );
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let width = if s.dots { 2.0 } else { 1.5 };
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{width}\" points=\"{}\"/>\n",
            s.color,
            pts.join(" ")
        );
        if s.dots {
            for (x, y) in &s.points {
                svg += &format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"/>\n",
                    sx(*x),
                    sy(*y),
                    s.color
                );
            }
        }
    }
    let (lx, ly) = (w - mr - 160.0, mt + 6.0);
    svg += &format!(
        "<rect x=\"{lx}\" y=\"{ly}\" width=\"150\" height=\"{}\" fill=\"white\" stroke=\"#999\"/>\n",
        8.0 + 18.0 * series.len() as f64
    );
    for (i, s) in series.iter().enumerate() {
        let y = ly + 14.0 + 18.0 * i as f64;
        svg += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            lx + 10.0,
            lx + 35.0,
            s.color,
            lx + 42.0,
            y + 4.0,
            xml_escape(&s.label)
        );
    }
    svg += "</svg>\n";
    Some(svg)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpo_lines_carry_trls_names_and_read_back() {
        let preference = Some(PreferenceMetrics {
            rewards_chosen: 0.5,
            rewards_rejected: -0.25,
            rewards_accuracies: 1.0,
            rewards_margins: 0.75,
            logps_chosen: -10.0,
            logps_rejected: -12.0,
        });
        let step = MetricsLine::Step(StepMetrics {
            step: 3,
            epoch: 0.5,
            loss: 0.6,
            lr: 1e-4,
            grad_norm: 1.0,
            tokens: 100,
            tokens_per_second: 10.0,
            elapsed_s: 1.0,
            conversations: 4,
            preference,
        });
        let eval = MetricsLine::Eval(EvalMetrics {
            step: 3,
            epoch: 0.5,
            val_loss: 0.7,
            val_tokens: 50,
            preference,
        });
        for line in [step, eval] {
            let text = serde_json::to_string(&line).unwrap();
            assert!(text.contains("\"rewards/margins\":0.75"), "{text}");
            assert!(text.contains("\"logps/chosen\":-10.0"), "{text}");
            assert_eq!(serde_json::from_str::<MetricsLine>(&text).unwrap(), line);
        }
        // An SFT line has none of them, and reads back without them.
        let sft = r#"{"step":1,"epoch":0.1,"loss":2.0,"lr":0.001,"grad_norm":1.0,"tokens":9,"tokens_per_second":1.0,"elapsed_s":1.0}"#;
        let MetricsLine::Step(s) = serde_json::from_str::<MetricsLine>(sft).unwrap() else {
            panic!("not a step line")
        };
        assert_eq!(s.preference, None);
        assert!(!serde_json::to_string(&s).unwrap().contains("rewards"));
    }
}
