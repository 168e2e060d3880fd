//! Freeing an activation the graph holds but no backward pass reads. A candle node holds its inputs
//! until backward passes it, even where its gradient reads none of them (a residual sum, a
//! rotation); [`release`] swaps such a tensor's storage for a one-element one once its last reader
//! has run, keeping its shape and dtype in the graph. The caller vouches that every op that reads
//! the value has run, that the ops taking it do not read it in backward, and that its producer does
//! not read its own result in backward; each call site says why.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, InplaceOp1, Layout, Shape, Tensor};

use crate::Result;

/// Drops the storage of `t` (and of every view sharing it) when `t` is on a graph, keeping `t`
/// itself there; does nothing for a tensor no gradient flows through (it is freed when its last
/// handle goes), on Metal, and with `LORA_TRAIN_RELEASE=off` in the environment (for measuring
/// what it saves, or ruling it out). See the module docs for what the caller must ensure.
pub fn release(t: &Tensor) -> Result<()> {
    if !t.track_op() || t.is_variable() || !enabled() {
        return Ok(());
    }
    Ok(t.inplace_op1(&Release)?)
}

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("LORA_TRAIN_RELEASE").as_deref(),
            Ok("off" | "0" | "false" | "no")
        )
    })
}

struct Release;

fn empty<S>(s: &S) -> candle_core::Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // One element, not none: the CUDA driver may refuse a zero-byte allocation.
    s.device().zeros_impl(&Shape::from(vec![1usize]), s.dtype())
}

impl InplaceOp1 for Release {
    fn name(&self) -> &'static str {
        "release"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        *storage = empty(storage)?;
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        *storage = empty(storage)?;
        Ok(())
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(&self, _: &mut candle_core::MetalStorage, _: &Layout) -> candle_core::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Storage, Var};

    fn held(t: &Tensor) -> usize {
        let (s, _) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => c.as_slice::<f32>().map(|v| v.len()).unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn a_released_summand_frees_its_storage_and_keeps_the_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[1f32, 2.], [3., 4.]], &dev)?;
        let w = Var::new(&[[0.5f32, -1.], [2., 0.25]], &dev)?;
        let run = |free: bool| -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            // y = x w feeds only the sum; the product's backward does not read y.
            let y = x.as_tensor().matmul(w.as_tensor())?;
            let z = (x.as_tensor() + &y)?;
            if free {
                release(&y)?;
                assert_eq!(held(&y), 1, "the storage was not released");
            }
            let loss = (&z * &z)?.sum_all()?;
            let g = loss.backward()?;
            let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
            Ok((
                flat(&z)?,
                flat(g.get(x.as_tensor()).expect("x grad"))?,
                flat(g.get(w.as_tensor()).expect("w grad"))?,
            ))
        };
        assert_eq!(run(true)?, run(false)?);
        // A leaf and an untracked tensor are left alone.
        release(x.as_tensor())?;
        assert_eq!(held(x.as_tensor()), 4);
        let plain = Tensor::new(&[1f32, 2.], &dev)?;
        release(&plain)?;
        assert_eq!(held(&plain), 2);
        Ok(())
    }
}
