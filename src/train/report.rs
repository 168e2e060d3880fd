//! The before/after report of a run: validation loss before and after training, and how often
//! greedy replies to held-out prompts show the trained behaviour, base model against adapter.
//! Its keys are stable; the evaluation harness fills it in from the job's `[report]` checks
//! (`harness::training`), so the replies come from the one generation path evals use.

use std::path::Path;

use serde::Serialize;

use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// One prompt's replies.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSample {
    pub prompt: String,
    pub base: String,
    pub adapter: String,
}

/// The report, saved as `report.json` and `report.md`.
#[derive(Debug, Clone, Serialize)]
pub struct BehaviourReport {
    pub behaviour: String,
    pub prompts: usize,
    pub val_loss_before: Option<f64>,
    pub val_loss_after: Option<f64>,
    pub base_rate: f64,
    pub adapter_rate: f64,
    pub samples: Vec<ReportSample>,
}

impl BehaviourReport {
    pub fn render(&self) -> String {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        let mut s = String::new();
        s += "## Before / after\n\n";
        s += "| | base model | with adapter |\n|---|---|---|\n";
        s += &format!(
            "| validation loss | {} | {} |\n",
            f(self.val_loss_before),
            f(self.val_loss_after)
        );
        s += &format!(
            "| behaviour rate ({} held-out prompts) | {:.0}% | {:.0}% |\n\n",
            self.prompts,
            100.0 * self.base_rate,
            100.0 * self.adapter_rate
        );
        s += &format!("Behaviour: the greedy reply {}.\n\n", self.behaviour);
        for ex in self.samples.iter().take(3) {
            s += &format!(
                "**Prompt:** {}\n\n- base: {}\n- adapter: {}\n\n",
                ex.prompt.trim(),
                ex.base.trim().replace('\n', " / "),
                ex.adapter.trim().replace('\n', " / ")
            );
        }
        s
    }
}

impl BehaviourReport {
    /// Writes `report.json` and `report.md` into the run's folder `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "report.json".into(),
            source,
        })?;
        write_atomic(&dir.join("report.json"), json.as_bytes())?;
        write_atomic(&dir.join("report.md"), self.render().as_bytes())
    }
}
