//! A job's metrics: `metrics.jsonl` read as it grows into `(job, step, key, value)` rows, and
//! read back per step. Rows are keyed by step and key, so reading a line twice (a resumed run
//! writes its steps again, a worker reads what the run already recorded) changes nothing.
//! Validation lines' keys are kept apart from the step's: `val_loss`, `val_tokens`, and the
//! DPO measures under `eval/`.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;

use super::{Progress, Registry, Result};

/// One step's metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricPoint {
    pub step: i64,
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
}

/// Reads a run's `metrics.jsonl` from where the last read stopped.
#[derive(Debug)]
pub struct MetricsTail {
    job: i64,
    path: PathBuf,
    offset: u64,
}

impl MetricsTail {
    pub fn new(job: i64, path: &Path) -> Self {
        MetricsTail {
            job,
            path: path.to_path_buf(),
            offset: 0,
        }
    }

    /// Records the complete lines written since the last call, and the progress of the newest
    /// step among them. Returns the number of lines read. A file that shrank (a resume cut it
    /// back to its checkpoint) is read again from its start; a torn last line waits.
    pub fn poll(&mut self, reg: &Registry) -> Result<usize> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(super::RegistryError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let io = |source| super::RegistryError::Io {
            path: self.path.clone(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        if len < self.offset {
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(0);
        };
        let text = String::from_utf8_lossy(&bytes[..=end]);
        let lines: Vec<_> = text.lines().filter_map(parse_line).collect();
        self.offset += end as u64 + 1;
        if lines.is_empty() {
            return Ok(0);
        }
        reg.record_metrics(self.job, &lines)?;
        if let Some(last) = lines.iter().rev().find(|l| !l.validation) {
            reg.set_progress(
                self.job,
                &Progress {
                    current_step: last.step,
                    total_steps: None,
                    epoch: last.values.get("epoch").copied(),
                    latest_loss: last.values.get("loss").copied(),
                },
            )?;
        }
        Ok(lines.len())
    }
}

/// A parsed line: its step, whether it is a validation line, and its numeric fields under
/// their registry keys.
struct Line {
    step: i64,
    validation: bool,
    values: BTreeMap<String, f64>,
}

fn parse_line(line: &str) -> Option<Line> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).ok()?;
    let step = object.get("step")?.as_i64()?;
    let validation = object.contains_key("val_loss");
    let values = object
        .iter()
        .filter(|(k, _)| *k != "step" && !(validation && *k == "epoch"))
        .filter_map(|(k, v)| {
            let key = match validation && !k.starts_with("val_") {
                true => format!("eval/{k}"),
                false => k.clone(),
            };
            v.as_f64().filter(|x| x.is_finite()).map(|x| (key, x))
        })
        .collect();
    Some(Line {
        step,
        validation,
        values,
    })
}

impl Registry {
    fn record_metrics(&self, job: i64, lines: &[Line]) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO job_metrics (job_id, step, key, value) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.err(e))?;
            for line in lines {
                for (key, value) in &line.values {
                    stmt.execute(params![job, line.step, key, value])
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Job `id`'s metrics per step, in step order, from `after_step` on (exclusive) when given.
    pub fn job_metrics(&self, id: i64, after_step: Option<i64>) -> Result<Vec<MetricPoint>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT step, key, value FROM job_metrics WHERE job_id = ?1 AND step > ?2 \
                 ORDER BY step, key",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id, after_step.unwrap_or(i64::MIN)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        let mut points: Vec<MetricPoint> = Vec::new();
        for (step, key, value) in rows {
            match points.last_mut() {
                Some(p) if p.step == step => {
                    p.values.insert(key, value);
                }
                _ => points.push(MetricPoint {
                    step,
                    values: BTreeMap::from([(key, value)]),
                }),
            }
        }
        Ok(points)
    }

    /// The number of metric rows of job `id`.
    pub fn metric_rows(&self, id: i64) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM job_metrics WHERE job_id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::registry;
    use super::super::{Backend, JobStatus, Method, NewJob};
    use super::*;

    #[test]
    fn lines_are_read_as_they_grow_and_again_after_a_resume_cut_the_file() {
        let (dir, reg) = registry();
        let id = reg
            .create_job(&NewJob {
                name: "m".into(),
                kind: super::super::JobKind::Train,
                backend: Backend::Local,
                method: Method::Sft,
                config_toml: String::new(),
                config_path: None,
                status: JobStatus::Training,
                autostart: true,
                output_dir: None,
                total_steps: Some(4),
            })
            .unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut tail = MetricsTail::new(id, &path);
        assert_eq!(tail.poll(&reg).unwrap(), 0);
        let step = |s: i64, loss: f64| {
            format!("{{\"step\":{s},\"epoch\":0.5,\"loss\":{loss},\"lr\":0.001}}\n")
        };
        let eval = "{\"step\":2,\"epoch\":0.5,\"val_loss\":1.5,\"val_tokens\":10,\
                    \"rewards/margins\":0.25}\n";
        // A torn last line waits for its end.
        let torn = &step(3, 1.0)[..10];
        std::fs::write(
            &path,
            format!("{}{}{eval}{torn}", step(1, 2.0), step(2, 1.8)),
        )
        .unwrap();
        assert_eq!(tail.poll(&reg).unwrap(), 3);
        let job = reg.job(id).unwrap();
        assert_eq!((job.current_step, job.progress), (Some(2), 0.5));
        assert_eq!(job.latest_loss, Some(1.8));
        let points = reg.job_metrics(id, None).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].values["val_loss"], 1.5);
        assert_eq!(points[1].values["eval/rewards/margins"], 0.25);
        assert_eq!(points[1].values["loss"], 1.8);
        // A resume rewrites the file shorter: it is read from its start, and nothing doubles.
        std::fs::write(&path, step(1, 2.0)).unwrap();
        assert_eq!(tail.poll(&reg).unwrap(), 1);
        std::fs::write(&path, format!("{}{}", step(1, 2.0), step(2, 1.7))).unwrap();
        tail.poll(&reg).unwrap();
        assert_eq!(reg.metric_rows(id).unwrap(), 3 + 3 + 3);
        let after = reg.job_metrics(id, Some(1)).unwrap();
        assert_eq!(after[0].values["loss"], 1.7);
    }
}
