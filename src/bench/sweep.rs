//! `bench --sweep seq=512,1024 --sweep batch=1,2`: the grid of points, what became of each
//! (measured, skipped by the memory check, killed by the OS, failed), and what a sweep shows:
//! a table, plots of tokens/s and peak memory against the swept value, and the longest
//! sequence that fits for each batch size, as in Unsloth's context table. The command runs
//! each point in a child process, so one that runs out of memory does not end the sweep.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::TrainBench;
use crate::train::metrics::{line_plot_svg, Series};
use crate::{Error, Result};

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepKey {
    /// The synthetic rows' length in tokens.
    Seq,
    /// `train.micro_batch_size`.
    Batch,
}

impl SweepKey {
    pub fn name(self) -> &'static str {
        match self {
            Self::Seq => "seq",
            Self::Batch => "batch",
        }
    }
}

/// One `--sweep KEY=V1,V2,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepSpec {
    pub key: SweepKey,
    pub values: Vec<usize>,
}

impl std::str::FromStr for SweepSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("--sweep {s:?}: {why}"));
        let (key, values) = s
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=V1,V2,... with KEY seq or batch"))?;
        let key = match key.trim() {
            "seq" => SweepKey::Seq,
            "batch" => SweepKey::Batch,
            other => return Err(bad(&format!("unknown key `{other}` (seq or batch)"))),
        };
        let values = values
            .split(',')
            .map(|v| match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(&format!("`{v}` is not a whole number above 0"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { key, values })
    }
}

/// One point of the grid: the row length and micro-batch size its child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub seq: usize,
    pub batch: usize,
}

/// Every combination of the specs' values (seq outermost), the unswept key at `seq`/`batch`.
pub fn grid(specs: &[SweepSpec], seq: usize, batch: usize) -> Result<Vec<SweepPoint>> {
    let values = |key: SweepKey, default: usize| -> Result<Vec<usize>> {
        let of_key: Vec<&SweepSpec> = specs.iter().filter(|s| s.key == key).collect();
        match of_key.as_slice() {
            [] => Ok(vec![default]),
            [one] => Ok(one.values.clone()),
            _ => Err(Error::Config(format!(
                "--sweep {} is given more than once; list its values in one --sweep",
                key.name()
            ))),
        }
    };
    let (seqs, batches) = (values(SweepKey::Seq, seq)?, values(SweepKey::Batch, batch)?);
    Ok(seqs
        .iter()
        .flat_map(|&seq| batches.iter().map(move |&batch| SweepPoint { seq, batch }))
        .collect())
}

/// What became of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PointOutcome {
    Measured {
        result: Box<TrainBench>,
    },
    /// The memory check refused it before the first step, with its reason.
    Skipped {
        reason: String,
    },
    /// The OS killed the child (SIGKILL: the out-of-memory killer).
    #[serde(rename = "out of memory (killed)")]
    OutOfMemory,
    /// It failed otherwise: the child's last error line.
    Failed {
        reason: String,
    },
}

impl PointOutcome {
    /// The table's word for it.
    pub fn summary(&self) -> String {
        match self {
            Self::Measured { .. } => "measured".into(),
            Self::Skipped { reason } => format!("skipped: {reason}"),
            Self::OutOfMemory => "out of memory (killed)".into(),
            Self::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// A point and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    #[serde(flatten)]
    pub point: SweepPoint,
    #[serde(flatten)]
    pub outcome: PointOutcome,
}

/// The longest measured sequence of one batch size (`None`: no point of it ran).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LargestFit {
    pub batch: usize,
    pub seq: Option<usize>,
}

/// What `bench --sweep --json` prints and `bench.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// The key on the plots' x axis: `seq` when swept, else `batch`.
    pub x: SweepKey,
    pub points: Vec<PointResult>,
    pub largest_fitting_seq: Vec<LargestFit>,
}

impl SweepReport {
    pub fn new(specs: &[SweepSpec], points: Vec<PointResult>) -> Self {
        let x = match specs.iter().any(|s| s.key == SweepKey::Seq) {
            true => SweepKey::Seq,
            false => SweepKey::Batch,
        };
        let mut largest: BTreeMap<usize, Option<usize>> = BTreeMap::new();
        for p in &points {
            let fit = largest.entry(p.point.batch).or_default();
            if let PointOutcome::Measured { .. } = p.outcome {
                *fit = Some(fit.map_or(p.point.seq, |s| s.max(p.point.seq)));
            }
        }
        Self {
            x,
            points,
            largest_fitting_seq: largest
                .into_iter()
                .map(|(batch, seq)| LargestFit { batch, seq })
                .collect(),
        }
    }

    /// The table of points and the largest fitting sequence per batch, as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| seq | batch | tokens/s (real) | tokens/s (padded) | step p50 s | peak RSS MiB | \
             peak GPU MiB | estimate MiB | MFU | prefill tok/s | decode tok/s | TTFT s | status |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        for p in &self.points {
            let SweepPoint { seq, batch } = p.point;
            match &p.outcome {
                PointOutcome::Measured { result: r } => {
                    let g = r.generate.as_ref();
                    let gen = |f: fn(&super::generation::GenerateBench) -> String| {
                        g.map(f).unwrap_or_default()
                    };
                    out += &format!(
                        "| {seq} | {batch} | {:.1} | {:.1} | {:.3} | {} | {} | {} | {:.2}% | {} | {} | {} | measured |\n",
                        r.real_tokens_per_second,
                        r.padded_tokens_per_second,
                        r.step_time_p50_s,
                        opt(r.peak_rss_mib),
                        opt(r.peak_gpu_mib),
                        r.estimated_peak_mib,
                        100.0 * r.mfu,
                        gen(|g| format!("{:.1}", g.prefill_tokens_per_second)),
                        gen(|g| format!("{:.1}", g.decode_tokens_per_second)),
                        gen(|g| format!("{:.3}", g.time_to_first_token_s)),
                    )
                }
                other => {
                    out += &format!(
                        "| {seq} | {batch} | | | | | | | | | | | {} |\n",
                        other.summary().replace('|', "\\|").replace('\n', " ")
                    )
                }
            }
        }
        out += "\nLongest sequence that fits:\n\n| batch | seq |\n|---|---|\n";
        for f in &self.largest_fitting_seq {
            let seq = f.seq.map_or("none".to_string(), |s| s.to_string());
            out += &format!("| {} | {seq} |\n", f.batch);
        }
        out
    }

    /// `tokens_per_second.svg` and `peak_memory.svg`: each measured point against the swept
    /// value, one line per value of the other key; none without a measured point.
    pub fn plots(&self) -> Vec<(&'static str, String)> {
        let colors = [
            "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
        ];
        // (x, the value of the line's key) of a point, and that key.
        let x = self.x;
        let coords = move |p: &SweepPoint| match x {
            SweepKey::Seq => (p.seq, p.batch),
            SweepKey::Batch => (p.batch, p.seq),
        };
        let series_key = match x {
            SweepKey::Seq => SweepKey::Batch,
            SweepKey::Batch => SweepKey::Seq,
        };
        let lines = |y: fn(&TrainBench) -> Option<f64>| -> Vec<Series> {
            let mut by: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
            for p in &self.points {
                if let PointOutcome::Measured { result } = &p.outcome {
                    if let Some(v) = y(result) {
                        let (x, line) = coords(&p.point);
                        by.entry(line).or_default().push((x as f64, v));
                    }
                }
            }
            by.into_iter()
                .enumerate()
                .map(|(i, (k, points))| Series {
                    label: format!("{} = {k}", series_key.name()),
                    color: colors[i % colors.len()],
                    points,
                    dots: true,
                })
                .collect()
        };
        let x_label = match self.x {
            SweepKey::Seq => "sequence length (tokens)",
            SweepKey::Batch => "micro-batch size",
        };
        let mut out = Vec::new();
        let tps = lines(|r| Some(r.real_tokens_per_second));
        if let Some(svg) = line_plot_svg("Training tokens/s (real)", x_label, "tokens/s", &tps) {
            out.push(("tokens_per_second.svg", svg));
        }
        // The GPU pool's peak where there is one, else the process's resident peak.
        let mem = lines(|r| r.peak_gpu_mib.or(r.peak_rss_mib).map(|m| m as f64));
        if let Some(svg) = line_plot_svg("Peak memory", x_label, "MiB", &mem) {
            out.push(("peak_memory.svg", svg));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_make_a_grid() {
        let seq: SweepSpec = "seq=512,1024".parse().unwrap();
        let batch: SweepSpec = "batch=1, 2".parse().unwrap();
        assert_eq!(seq.values, vec![512, 1024]);
        let g = grid(&[seq.clone(), batch], 64, 1).unwrap();
        assert_eq!(g.len(), 4);
        assert_eq!(g[1], SweepPoint { seq: 512, batch: 2 });
        assert_eq!(grid(std::slice::from_ref(&seq), 64, 3).unwrap()[0].batch, 3);
        assert!(grid(&[seq.clone(), seq], 64, 1).is_err());
        for bad in ["seq", "len=1", "seq=0", "batch=a", "seq=1,,2"] {
            let e = bad.parse::<SweepSpec>().unwrap_err().to_string();
            assert!(e.contains("--sweep"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_largest_fit_counts_only_measured_points() {
        let point = |seq, batch, outcome| PointResult {
            point: SweepPoint { seq, batch },
            outcome,
        };
        let skipped = || PointOutcome::Skipped {
            reason: "needs about 9 GiB".into(),
        };
        let r = SweepReport::new(
            &["seq=1".parse().unwrap()],
            vec![
                point(512, 1, PointOutcome::Failed { reason: "x".into() }),
                point(1024, 1, skipped()),
                point(512, 2, PointOutcome::OutOfMemory),
                point(2048, 2, skipped()),
            ],
        );
        assert_eq!(
            r.largest_fitting_seq,
            vec![
                LargestFit {
                    batch: 1,
                    seq: None
                },
                LargestFit {
                    batch: 2,
                    seq: None
                }
            ]
        );
        let md = r.markdown();
        assert!(md.contains("out of memory (killed)"), "{md}");
        assert!(md.contains("skipped: needs about 9 GiB"), "{md}");
        assert!(r.plots().is_empty());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["points"][2]["status"], "out of memory (killed)");
        assert_eq!(json["points"][1]["reason"], "needs about 9 GiB");
    }
}
