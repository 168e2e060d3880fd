//! AdamW with state we own (Candle's `AdamW` hides its moments, so it cannot be resumed),
//! and global-norm gradient clipping. Matches `torch.optim.AdamW` (decoupled weight decay,
//! bias-corrected moments) and `torch.nn.utils.clip_grad_norm_`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

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
        Ok(Self {
            cfg,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// One update with learning rate `lr` from `grads` (one per var, same order).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Msg("optimizer: gradient count mismatch".into()));
        }
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (g, var)) in grads.iter().zip(&self.vars).enumerate() {
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // torch: p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            var.set(&(decayed - update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
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

/// Scales `grads` so their global norm is at most `max_norm`, as `clip_grad_norm_` does
/// (factor `max_norm / (norm + 1e-6)`, applied only when it is below 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
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

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let after = global_norm(&g).unwrap();
        assert!((after - 1.0).abs() < 1e-5);
    }
}
