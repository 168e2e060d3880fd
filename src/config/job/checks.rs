//! The value rules of a job beyond types: ranges, exclusive pairs, and keys that need others.
//!
//! Each broken rule names its key, so a loaded file's error points at the line (or `--set`)
//! that wrote it, and a job built in code gets the same message without a location.

use std::path::Path;

use super::sections::{DpoLoss, DpoReference, JobConfig, ValidationSpec};
use super::suggest::nearest;
use crate::data::LossOn;
use crate::lora::{ALL_LINEAR, PROJECTIONS};

/// A broken rule: the key at fault and a message that names it.
pub(super) struct Invalid {
    pub key: String,
    pub msg: String,
}

type Check = std::result::Result<(), Invalid>;

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// Every value rule of `job`, in file order.
pub(super) fn check(job: &JobConfig) -> Check {
    let (m, l, d, t) = (&job.model, &job.lora, &job.data, &job.train);
    not_empty("model.source", Path::new(&m.source))?;

    at_least_one("lora.r", l.r)?;
    positive("lora.alpha", l.alpha)?;
    in_range(
        "lora.dropout",
        l.dropout,
        "[0, 1)",
        (0.0..1.0).contains(&l.dropout),
    )?;
    check_targets(job)?;
    if let Some(dir) = &l.init_adapter {
        not_empty("lora.init_adapter", dir)?;
    }

    not_empty("data.train", &d.train)?;
    match &d.validation {
        Some(ValidationSpec::Fraction(f)) if !(*f > 0.0 && *f < 1.0) => {
            let msg = format!(
                "`data.validation` as a fraction of the training set must be in (0, 1) (got {f})"
            );
            return Err(invalid("data.validation", msg));
        }
        Some(ValidationSpec::File(file)) => not_empty("data.validation", file)?,
        _ => {}
    }
    if d.max_seq_len < 16 {
        let msg = format!(
            "`data.max_seq_len` must be at least 16 (got {})",
            d.max_seq_len
        );
        return Err(invalid("data.max_seq_len", msg));
    }

    if t.epochs.is_some() && t.max_steps.is_some() {
        return Err(invalid(
            "train.max_steps",
            "`train.epochs` and `train.max_steps` are both set: give one",
        ));
    }
    if let Some(epochs) = t.epochs {
        positive("train.epochs", epochs)?;
    }
    if let Some(steps) = t.max_steps {
        at_least_one("train.max_steps", steps)?;
    }
    at_least_one("train.micro_batch_size", t.micro_batch_size)?;
    at_least_one("train.grad_accum", t.grad_accum)?;
    positive("train.lr", t.lr)?;
    if t.warmup_steps.is_some() && t.warmup_ratio.is_some() {
        return Err(invalid(
            "train.warmup_ratio",
            "`train.warmup_steps` and `train.warmup_ratio` are both set: give one",
        ));
    }
    if let Some(ratio) = t.warmup_ratio {
        in_range(
            "train.warmup_ratio",
            ratio,
            "[0, 1)",
            (0.0..1.0).contains(&ratio),
        )?;
    }
    let min_lr = t.min_lr_ratio;
    in_range(
        "train.min_lr_ratio",
        min_lr,
        "[0, 1]",
        (0.0..=1.0).contains(&min_lr),
    )?;
    non_negative("train.weight_decay", t.weight_decay)?;
    non_negative("train.max_grad_norm", t.max_grad_norm)?;
    if t.eval_every > 0 && d.validation.is_none() {
        let msg = format!(
            "`train.eval_every` = {} needs `data.validation` (a file or a fraction)",
            t.eval_every
        );
        return Err(invalid("train.eval_every", msg));
    }

    check_dpo(job)?;

    not_empty("output.dir", &job.output.dir)?;

    if let Some(report) = &job.report {
        not_empty("report.prompts", &report.prompts)?;
        let rules = [&report.starts_with, &report.ends_with, &report.contains];
        if !rules
            .iter()
            .any(|r| r.as_deref().is_some_and(|s| !s.trim().is_empty()))
        {
            return Err(invalid(
                "report",
                "`report` needs a behaviour to look for: `report.starts_with`, `report.ends_with` or `report.contains`",
            ));
        }
        at_least_one("report.max_new_tokens", report.max_new_tokens)?;
    }
    if let Some(eval) = &job.eval {
        if job.report.is_some() {
            return Err(invalid(
                "eval",
                "`[report]` and `[eval]` are both given: `[report]` is a shorthand for an \
                 `[eval]` with checks, so keep one (move the report's rules into `[[eval.check]]`)",
            ));
        }
        eval.check().map_err(|(key, msg)| invalid(key, msg))?;
    }
    Ok(())
}

/// `train.method = "dpo"` and its `[dpo]` table: TRL's ranges, and the keys that do not go
/// with preference pairs.
fn check_dpo(job: &JobConfig) -> Check {
    if !job.is_dpo() {
        if job.dpo.is_some() {
            return Err(invalid(
                "dpo",
                "`[dpo]` is given but `train.method` is \"sft\": set `train.method = \"dpo\"` \
                 to train on preference pairs, or remove `[dpo]`",
            ));
        }
        return Ok(());
    }
    if job.data.packing {
        return Err(invalid(
            "data.packing",
            "`data.packing` is for SFT for now: with `train.method = \"dpo\"` each pair runs as \
             its chosen and rejected rows, right-padded; set `data.packing = false`",
        ));
    }
    if job.data.loss_on != LossOn::LastAssistant {
        return Err(invalid(
            "data.loss_on",
            format!(
                "`data.loss_on` = \"{}\" chooses SFT targets; DPO scores each pair's reply, \
                 so leave it at \"last_assistant\"",
                job.data.loss_on
            ),
        ));
    }
    let dpo = job.dpo();
    positive("dpo.beta", dpo.beta)?;
    let smoothing = dpo.label_smoothing;
    in_range(
        "dpo.label_smoothing",
        smoothing,
        "[0, 0.5)",
        (0.0..0.5).contains(&smoothing),
    )?;
    if smoothing > 0.0 && dpo.loss != DpoLoss::Robust {
        let msg = format!(
            "`dpo.label_smoothing` is read by the \"robust\" loss only (dpo.loss = \"{}\")",
            dpo.loss.name()
        );
        return Err(invalid("dpo.label_smoothing", msg));
    }
    non_negative("dpo.sft_weight", dpo.sft_weight)?;
    if dpo.normalize_by_length && dpo.loss != DpoLoss::Sigmoid {
        let msg = format!(
            "`dpo.normalize_by_length` is TRL's length-normalized sigmoid loss, so it needs \
             dpo.loss = \"sigmoid\" (got \"{}\"; \"ipo\" averages per token already)",
            dpo.loss.name()
        );
        return Err(invalid("dpo.normalize_by_length", msg));
    }
    if dpo.reference == DpoReference::InitAdapter && job.lora.init_adapter.is_none() {
        return Err(invalid(
            "dpo.reference",
            "`dpo.reference` = \"init_adapter\" needs `lora.init_adapter` (the SFT adapter \
             to start from and measure against)",
        ));
    }
    Ok(())
}

fn check_targets(job: &JobConfig) -> Check {
    const KEY: &str = "lora.target_modules";
    let names = job.lora.target_modules.written();
    if names.is_empty() {
        return Err(invalid(KEY, "`lora.target_modules` is an empty list"));
    }
    for name in names {
        if name == ALL_LINEAR || PROJECTIONS.contains(&name) {
            continue;
        }
        let valid = format!("{} or \"{ALL_LINEAR}\"", PROJECTIONS.join(", "));
        let msg = if name == "lm_head" || name == "embed_tokens" {
            format!("`lora.target_modules`: `{name}` is not supported as a LoRA target (the embeddings and the output head stay frozen); use {valid}")
        } else {
            let mut candidates: Vec<&str> = PROJECTIONS.to_vec();
            candidates.push(ALL_LINEAR);
            match nearest(name, candidates.iter().map(|c| (*c, *c))) {
                Some(best) => format!(
                    "`lora.target_modules`: unknown module `{name}` (did you mean `{best}`?); valid: {valid}"
                ),
                None => format!("`lora.target_modules`: unknown module `{name}`; valid: {valid}"),
            }
        };
        return Err(invalid(KEY, msg));
    }
    Ok(())
}

fn at_least_one(key: &'static str, value: usize) -> Check {
    if value < 1 {
        return Err(invalid(key, format!("`{key}` must be at least 1 (got 0)")));
    }
    Ok(())
}

fn positive(key: &'static str, value: f64) -> Check {
    if !(value > 0.0 && value.is_finite()) {
        return Err(invalid(key, format!("`{key}` must be > 0 (got {value})")));
    }
    Ok(())
}

/// `max_grad_norm` = 0 turns clipping off, so the message says so.
fn non_negative(key: &'static str, value: f64) -> Check {
    if !(value >= 0.0 && value.is_finite()) {
        let off = if key == "train.max_grad_norm" {
            ", 0 turning clipping off"
        } else {
            ""
        };
        return Err(invalid(
            key,
            format!("`{key}` must be >= 0{off} (got {value})"),
        ));
    }
    Ok(())
}

fn in_range(key: &'static str, value: f64, range: &str, inside: bool) -> Check {
    if !inside {
        return Err(invalid(
            key,
            format!("`{key}` must be in {range} (got {value})"),
        ));
    }
    Ok(())
}

fn not_empty(key: &'static str, path: &Path) -> Check {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, format!("`{key}` is empty")));
    }
    Ok(())
}
