//! From the job file to a provider's create-job body: Together's `POST /fine-tunes`
//! (together-python `create_finetune_request`, `training_method` `sft` or `dpo`) and OpenAI's
//! `POST /fine_tuning/jobs` (`method.supervised.hyperparameters`, or `method.dpo` for
//! `train.method = "dpo"`). A value the provider cannot take is an error; one it
//! would not honour exactly is a warning the user must accept. Nothing is dropped silently. What
//! each key maps to is in docs/providers.md.

use serde_json::{json, Map, Value};

use super::spec::HostedDpo;
use super::{HostedConfig, HostedJobSpec, HostedProvider};
use crate::config::job::DpoLoss;
use crate::data::LossOn;
use crate::providers::error::{ProviderError, Result};

/// Together's limit on `suffix` (types/finetune.py: "up to 40 character suffix").
pub const TOGETHER_SUFFIX_MAX: usize = 40;
/// OpenAI's limit on `suffix`.
pub const OPENAI_SUFFIX_MAX: usize = 64;

/// A job ready to submit, short of the uploaded file ids.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub provider: HostedProvider,
    /// The provider's base model name.
    pub model: String,
    /// The create-job body; `training_file`/`validation_file` are set at submission.
    pub body: Value,
    /// Settings the provider would not honour exactly.
    pub warnings: Vec<String>,
}

struct Collector {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Collector {
    fn error(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }
    fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
    fn range(&mut self, field: &str, value: Option<f64>, ok: impl Fn(f64) -> bool, expected: &str) {
        if let Some(v) = value {
            if !v.is_finite() || !ok(v) {
                self.error(format!("`{field}` = {v} must be {expected}"));
            }
        }
    }
}

/// Maps `[hosted]` and the shared sections to the provider's create-job body.
pub fn plan_job(cfg: &HostedConfig, spec: &HostedJobSpec) -> Result<JobPlan> {
    let mut c = Collector {
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let model = cfg
        .model
        .clone()
        .or_else(|| spec.model.clone())
        .filter(|m| !m.trim().is_empty());
    if model.is_none() {
        c.error("no model: set `model` in [hosted] to the provider's name for the base model");
    }
    let model = model.unwrap_or_default();

    c.range(
        "lora_dropout",
        spec.lora_dropout,
        |v| (0.0..1.0).contains(&v),
        "in [0, 1)",
    );
    c.range("lora_alpha", spec.lora_alpha, |v| v > 0.0, "positive");
    c.range(
        "warmup_ratio",
        spec.warmup_ratio,
        |v| (0.0..=1.0).contains(&v),
        "in [0, 1]",
    );
    c.range(
        "min_lr_ratio",
        spec.min_lr_ratio,
        |v| (0.0..=1.0).contains(&v),
        "in [0, 1]",
    );
    c.range(
        "weight_decay",
        spec.weight_decay,
        |v| v >= 0.0,
        "non-negative",
    );
    c.range(
        "max_grad_norm",
        spec.max_grad_norm,
        |v| v >= 0.0,
        "non-negative",
    );
    c.range("lr", spec.lr, |v| v > 0.0, "positive");
    let epochs = match spec.epochs {
        None => None,
        Some(e) if e >= 1.0 && e.fract() == 0.0 && e <= f64::from(u32::MAX) => Some(e as u64),
        Some(e) => {
            c.error(format!(
                "epochs = {e}: {} takes a whole number of epochs, at least 1",
                cfg.provider
            ));
            None
        }
    };
    if spec.micro_batch_size == Some(0) || spec.grad_accum == Some(0) {
        c.error("`micro_batch_size` and `grad_accum` must be at least 1");
    }
    if spec.lora_r == Some(0) {
        c.error("`lora_r` must be at least 1");
    }
    let batch_size = match (spec.micro_batch_size, spec.grad_accum) {
        (None, None) => None,
        (micro, accum) => Some(micro.unwrap_or(1).saturating_mul(accum.unwrap_or(1))),
    };
    let suffix = cfg.suffix.clone().or_else(|| spec.suffix.clone());
    if let Some(name) = spec.optimizer.as_deref() {
        if !name.eq_ignore_ascii_case("adamw") {
            c.warn(format!(
                "optimizer = \"{name}\" is not honoured: {} trains with AdamW",
                cfg.provider
            ));
        }
    }
    if let Some(q) = spec.base_quantization.as_deref() {
        c.warn(format!(
            "the quantized base ({q}) is not honoured: {} trains the adapter on its own precision of the base model",
            cfg.provider
        ));
    }
    if spec.validation_fraction.is_some() {
        c.error("data.validation is a fraction: a hosted job needs a validation file (split the data first)");
    }
    if let Some(adapter) = &spec.init_adapter {
        c.error(format!(
            "lora.init_adapter = {}: a hosted job cannot start from a local adapter",
            adapter.display()
        ));
    }
    if spec.use_rslora == Some(true) {
        c.warn(format!(
            "use_rslora = true is not honoured: {} scales adapters by alpha/r",
            cfg.provider
        ));
    }
    if let Some(dtype) = &spec.dtype {
        c.warn(format!(
            "dtype = \"{dtype}\" is not honoured: {} picks the training precision",
            cfg.provider
        ));
    }
    if spec.shuffle == Some(false) {
        c.warn(format!(
            "shuffle = false is not honoured: {} shuffles the training data",
            cfg.provider
        ));
    }
    if let Some(n) = spec.eval_every.filter(|&n| n > 0) {
        c.warn(match cfg.provider {
            HostedProvider::Together => format!("eval_every = {n} is not honoured: Together takes a number of evaluations (`n_evals` in [hosted])"),
            HostedProvider::OpenAi => format!("eval_every = {n} is not honoured: OpenAI evaluates on its own schedule"),
        });
    }
    if let Some(n) = spec.save_every.filter(|&n| n > 0) {
        c.warn(match cfg.provider {
            HostedProvider::Together => format!("save_every = {n} is not honoured: Together takes a number of checkpoints (`n_checkpoints` in [hosted])"),
            HostedProvider::OpenAi => format!("save_every = {n} is not honoured: OpenAI keeps the last checkpoints of each epoch"),
        });
    }
    for key in &spec.unmapped {
        c.warn(format!("`{key}` is not honoured by {}", cfg.provider));
    }
    if spec.max_steps.is_some() {
        c.warn(format!(
            "max_steps = {} is not honoured: {} trains whole epochs (set `epochs` instead)",
            spec.max_steps.unwrap_or_default(),
            cfg.provider
        ));
    }
    if let Some(dpo) = &spec.dpo {
        check_dpo(cfg.provider, dpo, &mut c);
    }

    let body = match cfg.provider {
        HostedProvider::Together => together_body(
            cfg,
            spec,
            &model,
            epochs,
            batch_size,
            suffix.as_deref(),
            &mut c,
        ),
        HostedProvider::OpenAi => openai_body(
            cfg,
            spec,
            &model,
            epochs,
            batch_size,
            suffix.as_deref(),
            &mut c,
        ),
    };
    if !c.errors.is_empty() {
        return Err(ProviderError::Mapping {
            provider: cfg.provider.to_string(),
            errors: c.errors,
        });
    }
    Ok(JobPlan {
        provider: cfg.provider,
        model,
        body,
        warnings: c.warnings,
    })
}

/// What both providers' DPO cannot take: a loss other than the sigmoid, and a local speed-up
/// that changes nothing remotely.
fn check_dpo(provider: HostedProvider, dpo: &HostedDpo, c: &mut Collector) {
    c.range("dpo.beta", dpo.beta, |v| v > 0.0, "positive");
    if let Some(loss) = dpo.loss.filter(|l| *l != DpoLoss::Sigmoid) {
        c.error(format!(
            "dpo.loss = \"{}\": {provider} trains DPO with the sigmoid loss only",
            loss.name()
        ));
    }
    if dpo.precompute_reference == Some(true) {
        c.warn(format!(
            "dpo.precompute_reference is not honoured: it is a local speed-up, and {provider} \
             runs its reference itself (the loss is the same)"
        ));
    }
}

fn together_body(
    cfg: &HostedConfig,
    spec: &HostedJobSpec,
    model: &str,
    epochs: Option<u64>,
    batch_size: Option<u64>,
    suffix: Option<&str>,
    c: &mut Collector,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    if cfg.learning_rate_multiplier.is_some() {
        c.error("`learning_rate_multiplier` is an OpenAI setting; Together takes the learning rate `lr` from [train]");
    }
    if let Some(n) = epochs {
        body.insert("n_epochs".into(), json!(n));
    }
    if let Some(n) = cfg.n_checkpoints {
        body.insert("n_checkpoints".into(), json!(n));
    }
    if let Some(n) = cfg.n_evals {
        if n > 0 && spec.validation_file.is_none() {
            c.error("`n_evals` needs a validation file in [data]");
        }
        body.insert("n_evals".into(), json!(n));
    }
    if let Some(b) = batch_size {
        body.insert("batch_size".into(), json!(b));
    }
    if let Some(lr) = spec.lr {
        body.insert("learning_rate".into(), json!(lr));
    }
    match spec
        .scheduler
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => {
            if spec.min_lr_ratio.is_some() {
                c.error("`min_lr_ratio` needs a `scheduler` (linear, cosine or constant)");
            }
        }
        Some(kind @ ("linear" | "cosine")) => {
            let mut args = Map::new();
            args.insert(
                "min_lr_ratio".into(),
                json!(spec.min_lr_ratio.unwrap_or(0.0)),
            );
            if kind == "cosine" {
                // together-python's default: half a cosine period, from the peak to the floor.
                args.insert("num_cycles".into(), json!(0.5));
            }
            body.insert(
                "lr_scheduler".into(),
                json!({"lr_scheduler_type": kind, "lr_scheduler_args": Value::Object(args)}),
            );
        }
        Some("constant") => match spec.min_lr_ratio {
            Some(r) if r != 1.0 => c.error(format!(
                "scheduler = \"constant\" with min_lr_ratio = {r} is contradictory"
            )),
            // A linear decay to 100% of the peak is a constant rate.
            _ => {
                body.insert(
                    "lr_scheduler".into(),
                    json!({"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 1.0}}),
                );
            }
        },
        Some(other) => c.error(format!(
            "scheduler = \"{other}\" is not offered by Together (linear, cosine or constant)"
        )),
    }
    if let Some(w) = spec.warmup_ratio {
        body.insert("warmup_ratio".into(), json!(w));
        if spec.warmup_steps.is_some() {
            c.error("set `warmup_ratio` or `warmup_steps`, not both");
        }
    } else if let Some(steps) = spec.warmup_steps {
        c.warn(format!(
            "warmup_steps = {steps} is not honoured: Together takes `warmup_ratio` (a fraction of all steps); no warmup will be used"
        ));
    }
    if let Some(v) = spec.max_grad_norm {
        body.insert("max_grad_norm".into(), json!(v));
    }
    if let Some(v) = spec.weight_decay {
        body.insert("weight_decay".into(), json!(v));
    }
    if let Some(seed) = spec.seed {
        body.insert("random_seed".into(), json!(seed));
    }
    if let Some(len) = spec.max_seq_len {
        body.insert("max_seq_length".into(), json!(len));
    }
    if let Some(packing) = spec.packing {
        body.insert("packing".into(), json!(packing));
    }
    if let Some(s) = suffix {
        if s.chars().count() > TOGETHER_SUFFIX_MAX {
            c.error(format!(
                "suffix \"{s}\" is longer than Together's {TOGETHER_SUFFIX_MAX} characters"
            ));
        }
        body.insert("suffix".into(), json!(s));
    }

    match spec.lora_r {
        Some(r) => {
            let alpha = match spec.lora_alpha {
                None => r.saturating_mul(2),
                Some(a) if a.fract() == 0.0 && a > 0.0 => a as u64,
                Some(a) => {
                    c.error(format!("lora_alpha = {a}: Together takes an integer alpha"));
                    0
                }
            };
            let modules = match &spec.target_modules {
                None => "all-linear".to_string(),
                Some(list) if list.is_empty() => {
                    c.error("`target_modules` is empty");
                    String::new()
                }
                Some(list) => list.join(","),
            };
            body.insert(
                "training_type".into(),
                json!({
                    "type": "Lora",
                    "lora_r": r,
                    "lora_alpha": alpha,
                    "lora_dropout": spec.lora_dropout.unwrap_or(0.0),
                    "lora_trainable_modules": modules,
                }),
            );
        }
        None => {
            if spec.lora_alpha.is_some()
                || spec.lora_dropout.is_some()
                || spec.target_modules.is_some()
            {
                c.error("LoRA settings without `r`: set `r` in [lora] so that Together trains the adapter you describe");
            }
        }
    }

    if let Some(dpo) = &spec.dpo {
        // together-python `TrainingMethodDPO`; its defaults (beta 0.1, no RPO term, no length
        // normalization) are ours, so only written keys are sent.
        let mut method = Map::new();
        method.insert("method".into(), json!("dpo"));
        if let Some(beta) = dpo.beta {
            method.insert("dpo_beta".into(), json!(beta));
        }
        if let Some(alpha) = dpo.sft_weight {
            method.insert("rpo_alpha".into(), json!(alpha));
        }
        if let Some(norm) = dpo.normalize_by_length {
            method.insert("dpo_normalize_logratios_by_length".into(), json!(norm));
        }
        body.insert("training_method".into(), Value::Object(method));
        return Value::Object(body);
    }
    let mut method = Map::new();
    method.insert("method".into(), json!("sft"));
    match spec.loss_on {
        None => {}
        Some(LossOn::All) => {
            method.insert("train_on_inputs".into(), json!(true));
        }
        Some(LossOn::AllAssistant) => {
            method.insert("train_on_inputs".into(), json!(false));
        }
        Some(LossOn::LastAssistant) => {
            c.warn("loss_on = \"last_assistant\" is not honoured: Together trains on every assistant turn (give earlier turns \"weight\": 0 in the data instead)");
            method.insert("train_on_inputs".into(), json!(false));
        }
    }
    body.insert("training_method".into(), Value::Object(method));
    Value::Object(body)
}

fn openai_body(
    cfg: &HostedConfig,
    spec: &HostedJobSpec,
    model: &str,
    epochs: Option<u64>,
    batch_size: Option<u64>,
    suffix: Option<&str>,
    c: &mut Collector,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    if cfg.n_checkpoints.is_some() || cfg.n_evals.is_some() {
        c.error("`n_checkpoints` and `n_evals` are Together settings; OpenAI does not take them");
    }
    let mut hyper = Map::new();
    if let Some(n) = epochs {
        hyper.insert("n_epochs".into(), json!(n));
    }
    if let Some(b) = batch_size {
        hyper.insert("batch_size".into(), json!(b));
    }
    match (cfg.learning_rate_multiplier, spec.lr) {
        (Some(m), _) => {
            if !(m.is_finite() && m > 0.0) {
                c.error(format!("learning_rate_multiplier = {m} must be positive"));
            }
            hyper.insert("learning_rate_multiplier".into(), json!(m));
        }
        (None, Some(lr)) => c.warn(format!(
            "lr = {lr} is not honoured: OpenAI takes a `learning_rate_multiplier` (set it in [hosted]) and picks the base rate itself"
        )),
        (None, None) => {}
    }

    let lora: Vec<&str> = [
        spec.lora_r.map(|_| "r"),
        spec.lora_alpha.map(|_| "alpha"),
        spec.lora_dropout.map(|_| "dropout"),
        spec.target_modules.as_ref().map(|_| "target_modules"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !lora.is_empty() {
        c.warn(format!(
            "[lora] {} not honoured: OpenAI does not expose adapter settings",
            lora.join(", ")
        ));
    }
    let unsupported = [
        (
            "scheduler",
            spec.scheduler.as_ref().map(|s| format!("\"{s}\"")),
        ),
        ("warmup_ratio", spec.warmup_ratio.map(|v| v.to_string())),
        ("warmup_steps", spec.warmup_steps.map(|v| v.to_string())),
        ("min_lr_ratio", spec.min_lr_ratio.map(|v| v.to_string())),
        ("weight_decay", spec.weight_decay.map(|v| v.to_string())),
        ("max_grad_norm", spec.max_grad_norm.map(|v| v.to_string())),
        ("max_seq_len", spec.max_seq_len.map(|v| v.to_string())),
        ("packing", spec.packing.map(|v| v.to_string())),
    ];
    let method = match spec.dpo {
        Some(_) => "dpo",
        None => "supervised",
    };
    for (name, value) in unsupported {
        if let Some(value) = value {
            c.warn(format!(
                "{name} = {value} is not honoured: OpenAI's {method} method does not take it"
            ));
        }
    }
    if let Some(dpo) = &spec.dpo {
        if dpo.sft_weight.is_some_and(|w| w > 0.0) {
            c.error("dpo.sft_weight > 0: OpenAI's DPO has no SFT (RPO) term; use Together, or train here");
        }
        if dpo.normalize_by_length == Some(true) {
            c.error("dpo.normalize_by_length = true: OpenAI's DPO does not normalize by length; use Together, or train here");
        }
        if let Some(beta) = dpo.beta {
            hyper.insert("beta".into(), json!(beta));
        }
    }
    match spec.loss_on {
        _ if spec.dpo.is_some() => {}
        None | Some(LossOn::AllAssistant) => {}
        Some(LossOn::All) => c.warn(
            "loss_on = \"all\" is not honoured: OpenAI trains on assistant messages only",
        ),
        Some(LossOn::LastAssistant) => c.warn(
            "loss_on = \"last_assistant\" is not honoured: OpenAI trains on every assistant message (give earlier ones \"weight\": 0 in the data instead)",
        ),
    }
    if let Some(seed) = spec.seed {
        body.insert("seed".into(), json!(seed));
    }
    if let Some(s) = suffix {
        if s.chars().count() > OPENAI_SUFFIX_MAX {
            c.error(format!(
                "suffix \"{s}\" is longer than OpenAI's {OPENAI_SUFFIX_MAX} characters"
            ));
        }
        body.insert("suffix".into(), json!(s));
    }
    body.insert(
        "method".into(),
        json!({"type": method, method: {"hyperparameters": Value::Object(hyper)}}),
    );
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec() -> HostedJobSpec {
        HostedJobSpec {
            model: Some("meta-llama/Meta-Llama-3.1-8B-Instruct-Reference".into()),
            train_file: PathBuf::from("train.jsonl"),
            lora_r: Some(16),
            lora_alpha: Some(32.0),
            lora_dropout: Some(0.05),
            target_modules: Some(vec!["q_proj".into(), "v_proj".into()]),
            epochs: Some(3.0),
            lr: Some(1e-4),
            scheduler: Some("cosine".into()),
            warmup_ratio: Some(0.05),
            min_lr_ratio: Some(0.1),
            weight_decay: Some(0.01),
            max_grad_norm: Some(1.0),
            micro_batch_size: Some(4),
            grad_accum: Some(2),
            loss_on: Some(LossOn::AllAssistant),
            seed: Some(42),
            suffix: Some("bot".into()),
            ..HostedJobSpec::default()
        }
    }

    #[test]
    fn together_body_nests_type_scheduler_and_method() {
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &spec()).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(
            plan.body,
            json!({
                "model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
                "n_epochs": 3,
                "batch_size": 8,
                "learning_rate": 1e-4,
                "lr_scheduler": {"lr_scheduler_type": "cosine", "lr_scheduler_args": {"min_lr_ratio": 0.1, "num_cycles": 0.5}},
                "warmup_ratio": 0.05,
                "max_grad_norm": 1.0,
                "weight_decay": 0.01,
                "random_seed": 42,
                "suffix": "bot",
                "training_type": {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_trainable_modules": "q_proj,v_proj"},
                "training_method": {"method": "sft", "train_on_inputs": false}
            })
        );
    }

    #[test]
    fn openai_body_uses_supervised_hyperparameters_and_warns_for_the_rest() {
        let mut cfg = HostedConfig::new(HostedProvider::OpenAi);
        cfg.model = Some("gpt-4o-mini-2024-07-18".into());
        let plan = plan_job(&cfg, &spec()).unwrap();
        assert_eq!(
            plan.body,
            json!({
                "model": "gpt-4o-mini-2024-07-18",
                "seed": 42,
                "suffix": "bot",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8}}}
            })
        );
        let all = plan.warnings.join("\n");
        for field in [
            "lr = ",
            "[lora] r, alpha, dropout, target_modules",
            "scheduler",
            "warmup_ratio",
            "min_lr_ratio",
            "weight_decay",
            "max_grad_norm",
        ] {
            assert!(all.contains(field), "missing {field} in {all}");
        }
        cfg.learning_rate_multiplier = Some(2.0);
        let plan = plan_job(&cfg, &spec()).unwrap();
        assert_eq!(
            plan.body["method"]["supervised"]["hyperparameters"]["learning_rate_multiplier"],
            json!(2.0)
        );
        assert!(!plan.warnings.iter().any(|w| w.starts_with("lr = ")));
    }

    #[test]
    fn impossible_values_are_errors_and_all_are_reported() {
        let mut s = spec();
        s.lora_alpha = Some(16.5);
        s.scheduler = Some("polynomial".into());
        s.suffix = Some("x".repeat(41));
        let mut cfg = HostedConfig::new(HostedProvider::Together);
        cfg.learning_rate_multiplier = Some(1.0);
        match plan_job(&cfg, &s) {
            Err(ProviderError::Mapping { errors, .. }) => {
                assert_eq!(errors.len(), 4, "{errors:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// `data.packing` (now trained locally too) still maps to Together's own field.
    #[test]
    fn packing_maps_to_togethers_field() {
        let mut s = spec();
        s.packing = Some(true);
        s.max_seq_len = Some(1024);
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert_eq!(plan.body["packing"], json!(true));
        assert_eq!(plan.body["max_seq_length"], json!(1024));
    }

    #[test]
    fn unhonoured_settings_are_warnings() {
        let mut s = spec();
        s.max_steps = Some(100);
        s.loss_on = Some(LossOn::LastAssistant);
        s.base_quantization = Some("nf4".into());
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert_eq!(plan.warnings.len(), 3, "{:?}", plan.warnings);
        s.scheduler = Some("constant".into());
        s.min_lr_ratio = None;
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert_eq!(
            plan.body["lr_scheduler"],
            json!({"lr_scheduler_type": "linear", "lr_scheduler_args": {"min_lr_ratio": 1.0}})
        );
    }

    #[test]
    fn local_only_settings_are_errors_or_warnings() {
        let mut s = spec();
        s.validation_fraction = Some(0.1);
        s.init_adapter = Some(PathBuf::from("runs/a/adapter"));
        s.epochs = Some(1.5);
        match plan_job(&HostedConfig::new(HostedProvider::Together), &s) {
            Err(ProviderError::Mapping { errors, .. }) => assert_eq!(errors.len(), 3, "{errors:?}"),
            other => panic!("{other:?}"),
        }
        let mut s = spec();
        s.dtype = Some("bf16".into());
        s.shuffle = Some(false);
        s.use_rslora = Some(true);
        s.eval_every = Some(50);
        s.save_every = Some(100);
        s.shuffle = Some(false);
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert_eq!(plan.warnings.len(), 5, "{:?}", plan.warnings);
        assert!(plan.warnings.iter().any(|w| w.contains("n_evals")));
        s.shuffle = Some(true);
        s.eval_every = Some(0);
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert_eq!(plan.warnings.len(), 3, "{:?}", plan.warnings);
    }

    fn dpo(spec: &mut HostedJobSpec, d: HostedDpo) {
        spec.method = Some(crate::config::job::TrainMethod::Dpo);
        spec.dpo = Some(d);
        spec.loss_on = None;
    }

    #[test]
    fn dpo_maps_to_togethers_training_method_and_openais_dpo_method() {
        let mut s = spec();
        dpo(
            &mut s,
            HostedDpo {
                beta: Some(0.2),
                sft_weight: Some(0.5),
                normalize_by_length: Some(true),
                ..HostedDpo::default()
            },
        );
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert_eq!(
            plan.body["training_method"],
            json!({"method": "dpo", "dpo_beta": 0.2, "rpo_alpha": 0.5, "dpo_normalize_logratios_by_length": true})
        );
        let mut cfg = HostedConfig::new(HostedProvider::OpenAi);
        cfg.model = Some("gpt-4o-mini-2024-07-18".into());
        cfg.learning_rate_multiplier = Some(1.0);
        let mut s = spec();
        dpo(
            &mut s,
            HostedDpo {
                beta: Some(0.2),
                ..HostedDpo::default()
            },
        );
        let plan = plan_job(&cfg, &s).unwrap();
        assert_eq!(
            plan.body["method"],
            json!({"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0, "beta": 0.2}}})
        );
        assert!(plan
            .warnings
            .iter()
            .any(|w| w.contains("OpenAI's dpo method")));
    }

    #[test]
    fn dpo_settings_a_provider_cannot_take_are_errors() {
        let mut s = spec();
        dpo(
            &mut s,
            HostedDpo {
                loss: Some(DpoLoss::Ipo),
                sft_weight: Some(1.0),
                normalize_by_length: Some(true),
                ..HostedDpo::default()
            },
        );
        let mut cfg = HostedConfig::new(HostedProvider::OpenAi);
        cfg.model = Some("gpt-4o-mini-2024-07-18".into());
        match plan_job(&cfg, &s) {
            Err(ProviderError::Mapping { errors, .. }) => {
                assert_eq!(errors.len(), 3, "{errors:?}");
                assert!(errors[0].contains("sigmoid loss only"), "{errors:?}");
            }
            other => panic!("{other:?}"),
        }
        let mut s = spec();
        dpo(
            &mut s,
            HostedDpo {
                precompute_reference: Some(true),
                ..HostedDpo::default()
            },
        );
        let plan = plan_job(&HostedConfig::new(HostedProvider::Together), &s).unwrap();
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert_eq!(plan.body["training_method"], json!({"method": "dpo"}));
    }

    #[test]
    fn missing_model_is_an_error() {
        let mut s = spec();
        s.model = None;
        assert!(matches!(
            plan_job(&HostedConfig::new(HostedProvider::OpenAi), &s),
            Err(ProviderError::Mapping { .. })
        ));
    }
}
