//! AdamW with state we own (Candle's `AdamW` hides its moments, so it cannot be resumed),
//! and global-norm gradient clipping. Matches `torch.optim.AdamW` (decoupled weight decay,
//! bias-corrected moments) and `torch.nn.utils.clip_grad_norm_`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::kernels::{self, adamw, Kernel};
use crate::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW over a fixed, ordered list of Vars.
pub struct AdamW {
    pub cfg: AdamWConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// After a fused update: the kernel's `[m; v; p]` output, of which `m` and `v` are views,
    /// for the next fused update to read in place. `None` when `m`, `v` are tensors of their own.
    fused_state: Vec<Option<Tensor>>,
    /// Forces the fused update on or off (tests and benchmarks); `None` follows
    /// [`kernels::use_fused`].
    fused: Option<bool>,
    /// Number of updates done.
    pub step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: AdamWConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        let fused_state = vec![None; vars.len()];
        Ok(Self {
            cfg,
            vars,
            m,
            v,
            fused_state,
            fused: None,
            step: 0,
        })
    }

    /// Runs every update fused (`true`; on the CPU by the op's CPU implementation) or unfused,
    /// whatever the kernel switches say.
    pub fn force_fused(&mut self, on: bool) {
        self.fused = Some(on);
    }

    /// One update with learning rate `lr` from `grads` (one per var, same order).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_clipped(grads, lr, 1.0)
    }

    /// One update from `grads` scaled by `coef` (the clipping factor of
    /// [`clip_coefficient`]; 1 for none), as if the gradients had been scaled first.
    pub fn step_clipped(&mut self, grads: &[Tensor], lr: f64, coef: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::shape(
                "optimizer gradients",
                self.vars.len(),
                grads.len(),
            ));
        }
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let scalars = adamw::Scalars {
            coef: coef as f32,
            b1: c.beta1 as f32,
            one_minus_b1: (1.0 - c.beta1) as f32,
            b2: c.beta2 as f32,
            one_minus_b2: (1.0 - c.beta2) as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: c.eps as f32,
            step_size: (lr / bc1) as f32,
        };
        for (i, g) in grads.iter().enumerate() {
            let var = self.vars[i].clone();
            let fused = self
                .fused
                .unwrap_or_else(|| kernels::use_fused(Kernel::Adamw, var.device()));
            if fused && var.dtype() == DType::F32 {
                self.fused_update(i, g, &scalars)?;
                continue;
            }
            let g = if coef == 1.0 { g.clone() } else { (g * coef)? };
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // torch: p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            var.set(&(decayed - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
            self.fused_state[i] = None;
        }
        Ok(())
    }

    /// Var `i`'s update by the fused op: one kernel and the copy of the new values into the var.
    fn fused_update(&mut self, i: usize, g: &Tensor, s: &adamw::Scalars) -> Result<()> {
        let var = &self.vars[i];
        let state = match &self.fused_state[i] {
            Some(t) => t.clone(),
            None => Tensor::cat(&[self.m[i].flatten_all()?, self.v[i].flatten_all()?], 0)?,
        };
        let out = adamw::update(var.as_tensor(), g, &state, s)?;
        let dims = var.dims();
        var.set(&out.get(2)?.reshape(dims)?)?;
        self.m[i] = out.get(0)?.reshape(dims)?;
        self.v[i] = out.get(1)?.reshape(dims)?;
        self.fused_state[i] = Some(out);
        Ok(())
    }

    /// Saves moments and step to a safetensors file (caller makes it atomic).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for i in 0..self.vars.len() {
            t.insert(format!("m.{i}"), self.m[i].to_device(&Device::Cpu)?);
            t.insert(format!("v.{i}"), self.v[i].to_device(&Device::Cpu)?);
        }
        t.insert(
            "step".into(),
            Tensor::new(&[self.step as u32], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&t, path).map_err(|e| Error::model(path, e.to_string()))
    }

    /// Restores moments and step saved by [`AdamW::save`].
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .vars
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let t = candle_core::safetensors::load(path, &device)
            .map_err(|e| Error::model(path, format!("cannot read optimizer state: {e}")))?;
        let get = |k: &str| {
            t.get(k)
                .cloned()
                .ok_or_else(|| Error::model(path, format!("optimizer state lacks `{k}`")))
        };
        for i in 0..self.vars.len() {
            let m = get(&format!("m.{i}"))?;
            let v = get(&format!("v.{i}"))?;
            if m.dims() != self.vars[i].dims() || v.dims() != self.vars[i].dims() {
                return Err(Error::model(
                    path,
                    format!("optimizer state {i} has the wrong shape"),
                ));
            }
            self.m[i] = m.to_dtype(DType::F32)?;
            self.v[i] = v.to_dtype(DType::F32)?;
            self.fused_state[i] = None;
        }
        self.step = get("step")?.to_vec1::<u32>()?.first().copied().unwrap_or(0) as u64;
        Ok(())
    }
}

/// The global L2 norm of `grads`: each tensor's sum of squares on its device, then one
/// transfer of those sums (a single synchronization per step, and no f64 on the device).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let sums = grads
        .iter()
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let sq = Tensor::stack(&sums, 0)?
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(sq.sqrt())
}

/// The factor `clip_grad_norm_` scales gradients of global norm `norm` by for `max_norm`:
/// `max_norm / (norm + 1e-6)` when that is below 1 (and `max_norm` is set), else 1.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            return coef;
        }
    }
    1.0
}

/// Scales `grads` so their global norm is at most `max_norm`, as `clip_grad_norm_` does
/// (see [`clip_coefficient`]). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let coef = clip_coefficient(norm, max_norm);
    if coef != 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_matches_closed_form() {
        // After one step with bias correction, the update is lr * sign(g) (for |g| >> eps).
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![var.clone()],
            AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let g = Tensor::new(&[0.5f32, -3.0], &Device::Cpu).unwrap();
        opt.step(&[g], 0.01).unwrap();
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// The fused update (its CPU implementation, standing in for the kernel) gives the unfused
    /// update's parameters and moments bit for bit, with weight decay and clipping, across
    /// steps, a save and a load.
    #[test]
    fn fused_adamw_equals_the_unfused_update() {
        let dev = Device::Cpu;
        let init = [
            Tensor::randn(0f32, 1., (3, 5), &dev).unwrap(),
            Tensor::randn(0f32, 1., 7, &dev).unwrap(),
        ];
        let grads: Vec<Vec<Tensor>> = (0..3)
            .map(|_| {
                init.iter()
                    .map(|t| Tensor::randn(0f32, 2., t.dims(), &dev).unwrap())
                    .collect()
            })
            .collect();
        let cfg = AdamWConfig {
            weight_decay: 0.05,
            ..Default::default()
        };
        let run = |fused: bool, reload: bool| -> (Vec<Tensor>, AdamW) {
            let vars: Vec<Var> = init.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
            opt.force_fused(fused);
            let dir = tempfile::tempdir().unwrap();
            for (k, g) in grads.iter().enumerate() {
                let coef = clip_coefficient(global_norm(g).unwrap(), 3.0);
                opt.step_clipped(g, 1e-2, coef).unwrap();
                if reload && k == 1 {
                    let path = dir.path().join("opt.safetensors");
                    opt.save(&path).unwrap();
                    opt = AdamW::new(vars.clone(), cfg).unwrap();
                    opt.force_fused(fused);
                    opt.load(&path).unwrap();
                }
            }
            (
                vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect(),
                opt,
            )
        };
        let (want, want_opt) = run(false, false);
        for reload in [false, true] {
            let (got, got_opt) = run(true, reload);
            let bits = |ts: &[Tensor]| -> Vec<Vec<u32>> {
                ts.iter()
                    .map(|t| {
                        t.flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .map(|x| x.to_bits())
                            .collect()
                    })
                    .collect()
            };
            assert_eq!(bits(&got), bits(&want), "parameters (reload {reload})");
            assert_eq!(
                bits(&got_opt.m),
                bits(&want_opt.m),
                "first moments (reload {reload})"
            );
            assert_eq!(
                bits(&got_opt.v),
                bits(&want_opt.v),
                "second moments (reload {reload})"
            );
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let after = global_norm(&g).unwrap();
        assert!((after - 1.0).abs() < 1e-5);
    }
}
