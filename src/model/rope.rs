//! Rotary position embeddings in the HF half-split layout (`rotate_half`): inverse
//! frequencies with `llama3` or `linear` scaling, cos/sin tables cached per dtype and device,
//! and the rotation as one op with its own backward (Candle's fused `rope*` pass no gradient).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::autograd::{with_backward, with_backward_value, ForwardOp, Value};
use crate::config::RopeScaling;
use crate::kernels::{self, Kernel};
use crate::Result;

/// Inverse frequencies of rotary embeddings, with optional `llama3` or `linear` scaling.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let mut inv: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
        .collect();
    if let Some(s) = scaling {
        match s.rope_type.as_str() {
            // transformers `_compute_llama3_parameters`.
            "llama3" => {
                let factor = s.factor.unwrap_or(8.0);
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old_ctx = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            "linear" => {
                let factor = s.factor.unwrap_or(1.0);
                for f in inv.iter_mut() {
                    *f /= factor;
                }
            }
            _ => {}
        }
    }
    inv
}

/// Rotary position embedding in the HF half-split layout (`rotate_half`).
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f64>,
    head_dim: usize,
    /// The cos/sin tables for positions `0..len` last built, shared by clones (same frequencies).
    tables: Arc<std::sync::Mutex<Option<RopeTables>>>,
}

#[derive(Debug)]
struct RopeTables {
    dtype: DType,
    device: Device,
    len: usize,
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Self {
        Self {
            inv_freq: rope_inv_freq(head_dim, theta, scaling),
            head_dim,
            tables: Arc::default(),
        }
    }

    /// Divides each inverse frequency by a factor, as llama.cpp's `rope_freqs.weight` stores
    /// llama3 rope scaling in GGUF files.
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Result<Self> {
        if factors.len() != self.inv_freq.len() {
            return Err(crate::Error::shape(
                "rope_freqs",
                self.inv_freq.len(),
                format!("{} factors", factors.len()),
            ));
        }
        for (f, k) in self.inv_freq.iter_mut().zip(factors) {
            *f /= *k as f64;
        }
        self.tables = Arc::default();
        Ok(self)
    }

    /// `(cos, sin)`, each `[T, head_dim]`, for positions `start..start+len`: rows of tables for
    /// positions from 0 that are built once per dtype and device (and rebuilt twice as long when
    /// a position lies beyond them), not on the host at every forward.
    pub fn cos_sin(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let need = start + len;
        let mut cached = self
            .tables
            .lock()
            .map_err(|_| crate::Error::Msg("rope tables: poisoned".into()))?;
        let fits = cached
            .as_ref()
            .is_some_and(|t| t.dtype == dtype && t.device.same_device(device) && t.len >= need);
        if !fits {
            let len = need.next_power_of_two().max(256);
            let (cos, sin) = self.compute(0, len, dtype, device)?;
            *cached = Some(RopeTables {
                dtype,
                device: device.clone(),
                len,
                cos,
                sin,
            });
        }
        match cached.as_ref() {
            Some(t) => Ok((t.cos.narrow(0, start, len)?, t.sin.narrow(0, start, len)?)),
            None => Err(crate::Error::Msg("rope tables: not built".into())),
        }
    }

    /// `(cos, sin)`, each `[B, 1, T, head_dim]`, for per-token `positions` (`[B · T]`
    /// row-major), as packed rows need: the rows of the cached tables at those positions.
    pub fn cos_sin_at(
        &self,
        positions: &[u32],
        (b, t): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if positions.len() != b * t {
            return Err(crate::Error::shape(
                "rope positions",
                b * t,
                format!("{} positions", positions.len()),
            ));
        }
        let len = positions.iter().max().map_or(1, |p| *p as usize + 1);
        let (cos, sin) = self.cos_sin(0, len, dtype, device)?;
        let idx = Tensor::from_slice(positions, b * t, device)?;
        let at = |table: &Tensor| -> Result<Tensor> {
            Ok(table
                .index_select(&idx, 0)?
                .reshape((b, 1, t, self.head_dim))?)
        };
        Ok((at(&cos)?, at(&sin)?))
    }

    /// [`Self::cos_sin`] computed afresh.
    fn compute(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for p in start..start + len {
            // Computed in f32 like transformers, so positions far out round the same way.
            let freqs: Vec<f32> = self
                .inv_freq
                .iter()
                .map(|f| (p as f32) * (*f as f32))
                .collect();
            for k in 0..self.head_dim {
                let a = freqs[k % half];
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, self.head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, self.head_dim), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Applies rotary embeddings to `x: [B, H, T, D]` (any strides; the result is contiguous) with
/// `cos, sin: [T, D]` (or `[B, 1, T, D]`, per-token positions: then row by row, each with its
/// `[T, D]` tables, since a broadcast over the heads in the middle takes candle's slow
/// element-by-element path and the fused kernel reads `[T, D]` tables), as one op:
/// `y = x·cos + rot(x)·sin` with `rot(x) = [-x₂, x₁]`, so `dx = g·cos + rotᵀ(g·sin)` with
/// `rotᵀ(u) = [u₂, -u₁]`. Under autograd the broadcasts of `cos` and `sin` would each get
/// an activation-sized gradient buffer.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.rank() == 4 {
        let rows = (0..x.dim(0)?)
            .map(|b| {
                let table = |t: &Tensor| -> Result<Tensor> { Ok(t.get(b)?.squeeze(0)?) };
                apply_rotary(&x.narrow(0, b, 1)?, &table(cos)?, &table(sin)?)
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(Tensor::cat(&rows, 0)?);
    }
    if kernels::use_fused(Kernel::Rope, x.device()) {
        apply_rotary_fused(x, cos, sin)
    } else {
        apply_rotary_unfused(x, cos, sin)
    }
}

/// [`apply_rotary`] with tensor ops (the CPU path and the kernel's reference).
pub fn apply_rotary_unfused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let y = rotary_values(&x.detach().contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    with_backward("rotary", y, &[x], move |_, g| {
        let gs = g.broadcast_mul(&sin)?;
        let d = gs.dim(D::Minus1)?;
        let (u1, u2) = (
            gs.narrow(D::Minus1, 0, d / 2)?,
            gs.narrow(D::Minus1, d / 2, d / 2)?,
        );
        let back = Tensor::cat(&[&u2, &u1.neg()?], D::Minus1)?;
        Ok(vec![Some((g.broadcast_mul(&cos)? + back)?)])
    })
}

/// [`apply_rotary`] with the fused kernels of [`crate::kernels::rope`].
pub fn apply_rotary_fused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = kernels::rope::tables(cos, sin, x.dtype())?;
    let op = ForwardOp::Three(Box::new(kernels::rope::forward_op()));
    with_backward_value(
        "rotary",
        Value::Op(op),
        &[x, &cos, &sin],
        move |inputs, _, g| {
            let gx = kernels::rope::backward(g, inputs[1], inputs[2])?;
            Ok(vec![Some(gx), None, None])
        },
    )
}

fn rotary_values(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_backward_matches_autograd() -> crate::Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        let (cos, sin) = Rotary::new(8, 10000.0, None).cos_sin(2, 5, DType::F32, &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?)?;
        let g = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let fused = (apply_rotary(x.as_tensor(), &cos, &sin)? * &g)?
            .sum_all()?
            .backward()?;
        let plain = (rotary_values(x.as_tensor(), &cos, &sin)? * &g)?
            .sum_all()?
            .backward()?;
        let (Some(a), Some(b)) = (fused.get(x.as_tensor()), plain.get(x.as_tensor())) else {
            panic!("no gradient");
        };
        let diff = crate::testutil::max_abs_diff(a, b)?;
        assert!(diff < 1e-5, "rotary gradient differs by {diff}");
        Ok(())
    }

    /// Per-token positions rotate each token as a table at its position does.
    #[test]
    fn per_token_positions_rotate_as_their_positions() -> crate::Result<()> {
        let dev = Device::Cpu;
        let rot = Rotary::new(8, 10000.0, None);
        let positions = [0u32, 1, 2, 0, 1, 5, 0, 0];
        let (cos, sin) = rot.cos_sin_at(&positions, (2, 4), DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 4, 8), &dev)?;
        let y = apply_rotary(&x, &cos, &sin)?;
        for (i, p) in positions.iter().enumerate() {
            let (b, t) = (i / 4, i % 4);
            let (c, s) = rot.cos_sin(*p as usize, 1, DType::F32, &dev)?;
            let xi = x.narrow(0, b, 1)?.narrow(2, t, 1)?;
            let want = apply_rotary(&xi, &c, &s)?;
            let got = y.narrow(0, b, 1)?.narrow(2, t, 1)?;
            assert!(
                crate::testutil::max_abs_diff(&want, &got)? < 1e-6,
                "token {i}"
            );
        }
        Ok(())
    }

    #[test]
    fn cached_rope_tables_equal_fresh_ones() -> crate::Result<()> {
        let rot = Rotary::new(16, 500_000.0, None);
        let bits = |t: &Tensor| -> crate::Result<Vec<u32>> {
            Ok(t.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        // Within the first table, past it (a rebuild), a smaller request again, another dtype.
        for (start, len, dtype) in [
            (0, 10, DType::F32),
            (3, 40, DType::F32),
            (250, 300, DType::F32),
            (5, 7, DType::F32),
            (100, 17, DType::BF16),
        ] {
            let (c, s) = rot.cos_sin(start, len, dtype, &Device::Cpu)?;
            let (c0, s0) = rot.compute(start, len, dtype, &Device::Cpu)?;
            assert_eq!(c.dims(), &[len, 16]);
            assert_eq!(bits(&c)?, bits(&c0)?, "cos at {start}+{len} {dtype:?}");
            assert_eq!(bits(&s)?, bits(&s0)?, "sin at {start}+{len} {dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn rotary_half_split_rotates_pairs() {
        let rot = Rotary::new(4, 10_000.0, None);
        let (cos, sin) = rot.cos_sin(1, 1, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[[[1f32, 0., 0., 0.]]]], &Device::Cpu).unwrap();
        let y = apply_rotary(&x, &cos, &sin).unwrap().flatten_all().unwrap();
        let y = y.to_vec1::<f32>().unwrap();
        assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[2] - 1f32.sin()).abs() < 1e-6);
    }
}
