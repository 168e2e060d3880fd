//! The before/after report of a run: validation loss before and after training, and how often
//! greedy replies to held-out prompts show the trained behaviour, base model against adapter.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::run_log::TrainSummary;
use super::trainer::Trainer;
use crate::data::dataset::read_jsonl;
use crate::data::Role;
use crate::fsutil::write_atomic;
use crate::generate::{generate, GenerateOptions};
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

/// Generates replies with and without the adapter; None when the job has no `[report]`. Gives
/// up with [`Error::Interrupted`] once `stop` is set (checked before each reply), writing
/// nothing.
pub fn behaviour_report(
    trainer: &mut Trainer,
    summary: &TrainSummary,
    stop: &AtomicBool,
) -> Result<Option<BehaviourReport>> {
    let Some(section) = trainer.report().cloned() else {
        return Ok(None);
    };
    let mut convs = read_jsonl(&section.prompts)?;
    if section.limit > 0 {
        convs.truncate(section.limit);
    }
    let m = trainer.model();
    let stop_ids = crate::generate::stop_ids(m);
    let opts = GenerateOptions {
        max_new_tokens: section.max_new_tokens,
        stop_ids,
        ..Default::default()
    };
    let mut prompts = Vec::new();
    for c in &convs {
        let cut = c
            .messages
            .iter()
            .rposition(|msg| msg.role == Role::Assistant)
            .unwrap_or(c.messages.len());
        let msgs = &c.messages[..cut];
        let text = m.template.render(msgs, true)?;
        let user = msgs
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        prompts.push((user, m.tokenizer.encode(&text, false)?));
    }
    let bar = indicatif::ProgressBar::new(2 * prompts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "report: generating {bar:30} {pos}/{len} [{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let run = |trainer: &Trainer| -> Result<Vec<String>> {
        prompts
            .iter()
            .map(|(_, ids)| {
                if stop.load(Ordering::SeqCst) {
                    return Err(Error::Interrupted("the before/after report".into()));
                }
                let out = generate(trainer.model().model.as_ref(), ids, &opts, |_| {})?;
                bar.inc(1);
                trainer.model().tokenizer.decode(&out, true)
            })
            .collect()
    };
    let replies = run(trainer).and_then(|with_adapter| {
        let base = trainer.without_adapter(run)??;
        Ok((with_adapter, base))
    });
    bar.finish_and_clear();
    let (with_adapter, base) = replies?;
    let rate = |v: &[String]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().filter(|r| section.matches(r)).count() as f64 / v.len() as f64
        }
    };
    let report = BehaviourReport {
        behaviour: section.describe(),
        prompts: prompts.len(),
        val_loss_before: summary.val_loss_before,
        val_loss_after: summary.val_loss_after,
        base_rate: rate(&base),
        adapter_rate: rate(&with_adapter),
        samples: prompts
            .iter()
            .zip(base.iter().zip(&with_adapter))
            .map(|((p, _), (b, a))| ReportSample {
                prompt: p.clone(),
                base: b.clone(),
                adapter: a.clone(),
            })
            .collect(),
    };
    let out = &summary.output_dir;
    let json = serde_json::to_string_pretty(&report).map_err(|source| Error::Json {
        what: "report.json".into(),
        source,
    })?;
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    write_atomic(&out.join("report.md"), report.render().as_bytes())?;
    Ok(Some(report))
}
