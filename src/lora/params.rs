//! Trainable LoRA parameters: one `(A, B)` pair of Vars per adapted projection.
//!
//! A is initialised as PEFT does (`kaiming_uniform_(a=sqrt(5))`, i.e. U(-1/√in, 1/√in)) and B
//! with zeros, so training starts from the base model's outputs. The rank is checked against
//! every targeted projection, and the size counted, before anything is allocated; an
//! `init_adapter` must be the adapter the job describes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::linear::AdapterSwitch;
use super::peft::{peft_tensor_names, PeftAdapterConfig, TargetModules};
use super::{Adaptable, LoraWeights};
use crate::autograd::{Checkpointing, GradSink};
use crate::{Error, Result};

/// The seven projections LoRA can adapt, in PEFT's naming.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Hyper-parameters of an adapter.
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub use_rslora: bool,
    /// Projection names (`q_proj`, ...).
    pub targets: Vec<String>,
}

impl LoraSpec {
    /// The factor on `B·A` ([`lora_scale`]).
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.r, self.use_rslora)
    }

    /// The trainable scalars this spec gives `model`, `r · (in + out)` per targeted projection,
    /// counted before any is allocated. Errors: `r` above a targeted projection's smaller side
    /// (a rank is at most `min(in, out)`), or no projection targeted.
    pub fn planned_parameters(&self, model: &mut dyn Adaptable) -> Result<usize> {
        let mut total = 0usize;
        let mut targeted = 0;
        for (module, linear) in model.linears_mut() {
            if !module_matches(&module, &self.targets) {
                continue;
            }
            let (out, inp) = linear.shape();
            if self.r > out.min(inp) {
                return Err(Error::job_key(
                    "lora.r",
                    format!(
                        "lora.r = {} is more than {}, the smaller side of `{module}` \
                         ([{out}, {inp}]); a LoRA rank is at most min(in, out) of every \
                         targeted projection",
                        self.r,
                        out.min(inp)
                    ),
                ));
            }
            targeted += 1;
            total = total.saturating_add(self.r.saturating_mul(inp + out));
        }
        if targeted == 0 {
            return Err(Error::job_key(
                "lora.target_modules",
                format!(
                    "lora.target_modules {:?} match no layer of this model",
                    self.targets
                ),
            ));
        }
        Ok(total)
    }

    /// Errors unless the PEFT config `cfg` (read from `path`) has this spec's rank, alpha,
    /// rsLoRA and target modules; each error names both values.
    pub fn check_agrees(&self, cfg: &PeftAdapterConfig, path: &Path) -> Result<()> {
        let mismatch = |field: &'static str, adapter: String, key: &'static str, job: String| {
            Err(Error::AdapterMismatch {
                path: path.to_path_buf(),
                field,
                adapter,
                key,
                job,
            })
        };
        if cfg.r != self.r {
            return mismatch("r", cfg.r.to_string(), "lora.r", self.r.to_string());
        }
        if (cfg.lora_alpha - self.alpha).abs() > 1e-9 * self.alpha.abs().max(1.0) {
            return mismatch(
                "lora_alpha",
                cfg.lora_alpha.to_string(),
                "lora.alpha",
                self.alpha.to_string(),
            );
        }
        if cfg.use_rslora != self.use_rslora {
            return mismatch(
                "use_rslora",
                cfg.use_rslora.to_string(),
                "lora.use_rslora",
                self.use_rslora.to_string(),
            );
        }
        let sorted = |names: &[String]| {
            let mut names = names.to_vec();
            names.sort();
            names
        };
        let (adapter, job) = (
            sorted(&target_names(&cfg.target_modules)),
            sorted(&self.targets),
        );
        if adapter != job {
            return mismatch(
                "target_modules",
                format!("{adapter:?}"),
                "lora.target_modules",
                format!("{job:?}"),
            );
        }
        Ok(())
    }
}

/// The `target_modules` value that selects every name in [`PROJECTIONS`] (PEFT's spelling).
pub const ALL_LINEAR: &str = "all-linear";

/// The module names `target_modules` selects: `"all-linear"` expanded to [`PROJECTIONS`], the
/// language-model regex of a multimodal checkpoint's adapter to its names, in order, without
/// duplicates.
pub fn target_names(targets: &TargetModules) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in targets.written() {
        let in_language_model = super::peft::language_model_target_names(name);
        let expanded: Vec<&str> = if name == ALL_LINEAR {
            PROJECTIONS.to_vec()
        } else if let Some(listed) = &in_language_model {
            listed.iter().map(String::as_str).collect()
        } else {
            vec![name]
        };
        for n in expanded {
            if !names.iter().any(|have| have == n) {
                names.push(n.to_string());
            }
        }
    }
    names
}

/// The factor on `B·A`, as PEFT's `LoraLayer.update_layer`: `alpha / r`, or `alpha / sqrt(r)`
/// with rsLoRA (Kalajdzievski 2023).
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// One adapted projection.
#[derive(Debug, Clone)]
pub struct LoraParam {
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    pub a: Var,
    pub b: Var,
}

/// All trainable parameters of an adapter, plus the shared dropout seed.
#[derive(Debug, Clone)]
pub struct LoraParams {
    pub spec: LoraSpec,
    pub params: Vec<LoraParam>,
    /// Changed by the trainer before each micro-batch so dropout masks are reproducible.
    pub dropout_seed: Arc<AtomicU64>,
    /// Where checkpointed layers leave their gradients, while checkpointing is on.
    pub grad_sink: Option<Arc<GradSink>>,
    /// Turns the attached projections to the reference for a forward pass (DPO).
    pub switch: Arc<AdapterSwitch>,
    /// Frozen copies of `(A, B)` per parameter, in [`Self::params`] order, that the reference
    /// runs with; `None`: the reference is the base model.
    pub reference: Option<Vec<(Tensor, Tensor)>>,
}

fn module_matches(module: &str, targets: &[String]) -> bool {
    let last = module.rsplit('.').next().unwrap_or("");
    targets.iter().any(|t| t == last)
}

impl LoraParams {
    /// Fresh parameters (A kaiming-uniform from `seed`, B zero) in f32 on `device`.
    pub fn init(
        model: &mut dyn Adaptable,
        spec: LoraSpec,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        spec.planned_parameters(model)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut params = Vec::new();
        for (module, linear) in model.linears_mut() {
            if !module_matches(&module, &spec.targets) {
                continue;
            }
            let (out, inp) = linear.shape();
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..spec.r * inp)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.r, inp), device)?)?;
            let b = Var::zeros((out, spec.r), DType::F32, device)?;
            params.push(LoraParam { module, a, b });
        }
        Ok(Self {
            spec,
            params,
            dropout_seed: Arc::new(AtomicU64::new(0)),
            grad_sink: None,
            switch: Arc::default(),
            reference: None,
        })
    }

    /// Parameters from `lora.init_adapter`, the PEFT folder `dir`: it must be the adapter `spec`
    /// describes ([`LoraSpec::check_agrees`]) and hold weights for every targeted projection.
    pub fn from_init_adapter(
        model: &mut dyn Adaptable,
        dir: &Path,
        spec: LoraSpec,
        device: &Device,
    ) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        spec.check_agrees(&PeftAdapterConfig::from_file(&cfg_path)?, &cfg_path)?;
        let mut params = Self::from_peft(model, dir, spec.dropout, device)?;
        let loaded: std::collections::HashSet<String> =
            params.params.iter().map(|p| p.module.clone()).collect();
        if let Some((missing, _)) = model
            .linears_mut()
            .into_iter()
            .find(|(m, _)| module_matches(m, &spec.targets) && !loaded.contains(m))
        {
            return Err(Error::model(
                dir.join("adapter_model.safetensors"),
                format!(
                    "no lora_A/lora_B for `{missing}`, which the job's lora.target_modules {:?} \
                     adapt",
                    spec.targets
                ),
            ));
        }
        params.spec = spec;
        Ok(params)
    }

    /// Parameters from a PEFT adapter folder (for `init_adapter` and resume).
    pub fn from_peft(
        model: &mut dyn Adaptable,
        dir: &Path,
        dropout: f64,
        device: &Device,
    ) -> Result<Self> {
        let cfg = PeftAdapterConfig::from_file(&dir.join("adapter_config.json"))?;
        let st = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&st, device)
            .map_err(|e| Error::model(&st, format!("not a valid safetensors file: {e}")))?;
        let targets = target_names(&cfg.target_modules);
        let spec = LoraSpec {
            r: cfg.r,
            alpha: cfg.lora_alpha,
            dropout,
            use_rslora: cfg.use_rslora,
            targets,
        };
        let mut params = Vec::new();
        for (module, linear) in model.linears_mut() {
            let (ka, kb) = peft_tensor_names(&module);
            let (Some(a), Some(b)) = (tensors.get(&ka), tensors.get(&kb)) else {
                continue;
            };
            let (out, inp) = linear.shape();
            if a.dims() != [cfg.r, inp] || b.dims() != [out, cfg.r] {
                return Err(Error::model(
                    &st,
                    format!(
                        "`{module}`: lora_A {:?} / lora_B {:?} do not fit [{out}, {inp}]",
                        a.dims(),
                        b.dims()
                    ),
                ));
            }
            params.push(LoraParam {
                module,
                a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            });
        }
        if params.is_empty() {
            return Err(Error::model(
                &st,
                "no LoRA weights match this model's layers",
            ));
        }
        Ok(Self {
            spec,
            params,
            dropout_seed: Arc::new(AtomicU64::new(0)),
            grad_sink: None,
            switch: Arc::default(),
            reference: None,
        })
    }

    /// Attaches the parameters to the model's projections (sharing storage with the Vars),
    /// with the reference weights and the switch to them.
    pub fn attach(&self, model: &mut dyn Adaptable, compute_dtype: DType) -> Result<()> {
        let by_module: HashMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.module.as_str(), i))
            .collect();
        let scale = self.spec.scale();
        for (i, (module, linear)) in model.linears_mut().into_iter().enumerate() {
            if let Some(&k) = by_module.get(module.as_str()) {
                let p = &self.params[k];
                linear.set_salt(i as u64 + 1);
                linear.set_lora(Some(LoraWeights {
                    a: p.a.as_tensor().clone(),
                    b: p.b.as_tensor().clone(),
                    scale,
                    dropout: self.spec.dropout,
                    dropout_seed: Some(self.dropout_seed.clone()),
                    compute_dtype,
                    switch: Some(self.switch.clone()),
                    reference: self.reference.as_ref().map(|r| r[k].clone()),
                }));
            }
        }
        Ok(())
    }

    /// Makes the adapter's present weights the reference: frozen copies (the Vars' storage
    /// changes in place with every step) that [`Self::as_reference`] runs with once attached.
    /// DPO's reference when it starts from an SFT adapter.
    pub fn freeze_reference(&mut self) -> Result<()> {
        let copies = self
            .params
            .iter()
            .map(|p| Ok((p.a.as_tensor().copy()?, p.b.as_tensor().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        self.reference = Some(copies);
        Ok(())
    }

    /// Runs `f` with the attached projections turned to the reference: the frozen copies of
    /// [`Self::freeze_reference`], or the base weights without them. Nothing in `f` tracks
    /// gradients through the adapter, and dropout is off.
    pub fn as_reference<T>(&self, f: impl FnOnce() -> T) -> T {
        self.switch.as_reference(f)
    }

    /// Takes the adapter off the model's projections (the Vars are kept).
    pub fn detach(&self, model: &mut dyn Adaptable) {
        let names: std::collections::HashSet<&str> =
            self.params.iter().map(|p| p.module.as_str()).collect();
        for (module, linear) in model.linears_mut() {
            if names.contains(module.as_str()) {
                linear.set_lora(None);
            }
        }
    }

    /// Removes dropout from the attached layers' view (evaluation) or restores it.
    /// Turns per-decoder-layer gradient checkpointing on or off for `model`. With
    /// `recompute_attention`, a layer keeps only its input and its replay runs attention's
    /// forward again; without, it also keeps its attention output and log-sum-exp.
    pub fn set_gradient_checkpointing(
        &mut self,
        model: &mut dyn Adaptable,
        on: bool,
        recompute_attention: bool,
    ) {
        let sink =
            on.then(|| GradSink::new(self.vars().iter().map(|v| v.as_tensor().clone()).collect()));
        model.set_gradient_checkpointing(sink.clone().map(|sink| Checkpointing {
            sink,
            stash: !recompute_attention,
        }));
        self.grad_sink = sink;
    }

    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_seed.store(seed, Ordering::Relaxed);
    }

    /// All trainable Vars, A then B per module.
    pub fn vars(&self) -> Vec<&Var> {
        self.params.iter().flat_map(|p| [&p.a, &p.b]).collect()
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.a.elem_count() + p.b.elem_count())
            .sum()
    }

    /// Tensors named as PEFT saves them.
    pub fn peft_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            let (ka, kb) = peft_tensor_names(&p.module);
            out.insert(
                ka,
                p.a.as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            );
            out.insert(
                kb,
                p.b.as_tensor()
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::Linear;

    /// One decoder layer's q_proj `[64, 64]` and k_proj `[32, 64]`.
    struct TwoProjections(Vec<(String, Linear)>);

    impl Adaptable for TwoProjections {
        fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
            self.0.iter_mut().map(|(n, l)| (n.clone(), l)).collect()
        }
        fn set_gradient_checkpointing(&mut self, _: Option<Checkpointing>) {}
    }

    fn tiny() -> TwoProjections {
        let linear = |out, inp| {
            Linear::new(
                Tensor::zeros((out, inp), DType::F32, &Device::Cpu).unwrap(),
                None,
            )
        };
        TwoProjections(vec![
            ("model.layers.0.self_attn.q_proj".into(), linear(64, 64)),
            ("model.layers.0.self_attn.k_proj".into(), linear(32, 64)),
        ])
    }

    fn spec(r: usize, targets: &[&str]) -> LoraSpec {
        LoraSpec {
            r,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn the_rank_is_bounded_by_every_targeted_projection() {
        let mut m = tiny();
        let n = spec(32, &["q_proj", "k_proj"])
            .planned_parameters(&mut m)
            .unwrap();
        assert_eq!(n, 32 * 128 + 32 * 96);
        let e = spec(33, &["q_proj", "k_proj"])
            .planned_parameters(&mut m)
            .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::JobKey { key, .. } if key == "lora.r"),
            "{e:?}"
        );
        assert!(text.contains("lora.r = 33 is more than 32"), "{text}");
        assert!(text.contains("k_proj"), "{text}");
        let huge = spec(usize::MAX / 2, &["q_proj"]).planned_parameters(&mut m);
        assert!(huge.is_err());
        let none = spec(4, &["nope"]).planned_parameters(&mut m);
        assert!(none.unwrap_err().to_string().contains("match no layer"));
    }

    fn adapter_config(json: &str) -> PeftAdapterConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_init_adapter_must_match_the_job() {
        let path = Path::new("a/adapter_config.json");
        let job = spec(4, &["q_proj", "v_proj"]);
        let same = adapter_config(r#"{"r":4,"lora_alpha":8,"target_modules":["v_proj","q_proj"]}"#);
        job.check_agrees(&same, path).unwrap();
        let cases = [
            (
                r#"{"r":8,"lora_alpha":8,"target_modules":["q_proj","v_proj"]}"#,
                "a/adapter_config.json: r = 8, but the job's lora.r = 4",
            ),
            (
                r#"{"r":4,"lora_alpha":16,"target_modules":["q_proj","v_proj"]}"#,
                "lora_alpha = 16, but the job's lora.alpha = 8",
            ),
            (
                r#"{"r":4,"lora_alpha":8,"use_rslora":true,"target_modules":["q_proj","v_proj"]}"#,
                "use_rslora = true, but the job's lora.use_rslora = false",
            ),
            (
                r#"{"r":4,"lora_alpha":8,"target_modules":"all-linear"}"#,
                "target_modules = [",
            ),
        ];
        for (json, want) in cases {
            let e = job.check_agrees(&adapter_config(json), path).unwrap_err();
            assert!(matches!(e, Error::AdapterMismatch { .. }), "{e:?}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
