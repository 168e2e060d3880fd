//! An op whose forward value is computed with ordinary tensor ops outside the graph and
//! whose backward is a closure: the way to give a computation a cheaper or more
//! memory-frugal gradient than candle's autograd would build for it.
//!
//! The forward value is handed to a candle custom op that returns a copy of it, so the
//! graph keeps only the op's inputs and the closure, not the intermediates that produced
//! the value (which are freed as soon as the caller drops them).

use std::sync::{Arc, Mutex};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};

use crate::{Error, Result};

/// The gradient of each input from the op's inputs and the gradient of its output.
pub type BackwardFn =
    dyn Fn(&[&Tensor], &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync;

/// Returns `value` as the result of an op over `inputs` (1 to 3 tensors) whose backward is
/// `bwd(inputs, grad_of_value)`, which returns one optional gradient per input. When no
/// input tracks gradients, `value` is returned as is (detached).
pub fn with_backward<F>(
    name: &'static str,
    value: Tensor,
    inputs: &[&Tensor],
    bwd: F,
) -> Result<Tensor>
where
    F: Fn(&[&Tensor], &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
{
    let value = value.detach();
    if !inputs.iter().any(|t| t.track_op()) {
        return Ok(value);
    }
    let op = PassThrough {
        name,
        value: Mutex::new(Some(value)),
        bwd: Arc::new(bwd),
    };
    Ok(match inputs {
        [a] => a.apply_op1(op)?,
        [a, b] => a.apply_op2(b, op)?,
        [a, b, c] => a.apply_op3(b, c, op)?,
        _ => {
            return Err(Error::Msg(format!(
                "{name}: a custom backward takes 1 to 3 inputs, got {}",
                inputs.len()
            )))
        }
    })
}

struct PassThrough {
    name: &'static str,
    /// Taken by the forward call, so the op holds no activation afterwards.
    value: Mutex<Option<Tensor>>,
    bwd: Arc<BackwardFn>,
}

impl PassThrough {
    fn take(&self) -> candle_core::Result<Tensor> {
        self.value
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned", self.name)))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }

    fn fwd_cpu(&self) -> candle_core::Result<(CpuStorage, Shape)> {
        let t = self.take()?;
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cpu(c) => Ok((contiguous_copy(c, l)?, l.shape().clone())),
            _ => candle_core::bail!("{}: value is not on the CPU", self.name),
        }
    }

    #[cfg(feature = "cuda")]
    fn fwd_cuda(&self) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let t = self.take()?;
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Cuda(c) => Ok((contiguous_copy(c, l)?, l.shape().clone())),
            _ => candle_core::bail!("{}: value is not on the CUDA device", self.name),
        }
    }

    #[cfg(feature = "metal")]
    fn fwd_metal(&self) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        let t = self.take()?;
        let (s, l) = t.storage_and_layout();
        match &*s {
            Storage::Metal(c) => Ok((contiguous_copy(c, l)?, l.shape().clone())),
            _ => candle_core::bail!("{}: value is not on the Metal device", self.name),
        }
    }

    fn grads(&self, inputs: &[&Tensor], grad: &Tensor) -> candle_core::Result<Vec<Option<Tensor>>> {
        let g = (self.bwd)(inputs, grad)?;
        if g.len() != inputs.len() {
            candle_core::bail!(
                "{}: backward returned {} gradients for {} inputs",
                self.name,
                g.len(),
                inputs.len()
            );
        }
        // Candle stores whatever gradient an op returns, also for an input that leads to
        // nothing trainable, and keeps it until the store is dropped: hand back none.
        Ok(g.into_iter()
            .zip(inputs)
            .map(|(g, x)| g.filter(|_| x.track_op()))
            .collect())
    }
}

/// A fresh contiguous copy of the `layout` view of `s`.
fn contiguous_copy<S>(s: &S, layout: &Layout) -> candle_core::Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: every element of the new buffer is written by `copy_strided_src` below.
    let mut dst = unsafe { s.device().alloc_uninit(layout.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, layout)?;
    Ok(dst)
}

macro_rules! device_fwds {
    ($($arg:ident : $lay:ident),*) => {
        fn cpu_fwd(&self, $($arg: &CpuStorage, $lay: &Layout),*) -> candle_core::Result<(CpuStorage, Shape)> {
            $(let _ = ($arg, $lay);)*
            self.fwd_cpu()
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            $($arg: &candle_core::CudaStorage, $lay: &Layout),*
        ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
            $(let _ = ($arg, $lay);)*
            self.fwd_cuda()
        }

        #[cfg(feature = "metal")]
        fn metal_fwd(
            &self,
            $($arg: &candle_core::MetalStorage, $lay: &Layout),*
        ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
            $(let _ = ($arg, $lay);)*
            self.fwd_metal()
        }
    };
}

impl CustomOp1 for PassThrough {
    fn name(&self) -> &'static str {
        self.name
    }

    device_fwds!(a: la);

    fn bwd(&self, a: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.grads(&[a], grad)?.remove(0))
    }
}

impl CustomOp2 for PassThrough {
    fn name(&self) -> &'static str {
        self.name
    }

    device_fwds!(a: la, b: lb);

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for PassThrough {
    fn name(&self) -> &'static str {
        self.name
    }

    device_fwds!(a: la, b: lb, c: lc);

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn value_passes_through_and_backward_is_the_closure() -> Result<()> {
        let x = Var::new(&[1f32, 2., 3.], &Device::Cpu)?;
        let value = (x.as_tensor().detach() * 10.0)?;
        // A deliberately "wrong" gradient (3 instead of 10) shows the closure is what runs.
        let y = with_backward("times-ten", value, &[x.as_tensor()], |_, g| {
            Ok(vec![Some((g * 3.0)?)])
        })?;
        assert_eq!(y.to_vec1::<f32>()?, vec![10., 20., 30.]);
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f32>());
        assert_eq!(g.transpose()?, Some(vec![3., 3., 3.]));
        Ok(())
    }

    #[test]
    fn untracked_inputs_skip_the_op() -> Result<()> {
        let x = Tensor::new(&[1f32, 2.], &Device::Cpu)?;
        let y = with_backward("noop", (&x + 1.0)?, &[&x], |_, _| Ok(vec![None]))?;
        assert!(!y.track_op());
        assert_eq!(y.to_vec1::<f32>()?, vec![2., 3.]);
        Ok(())
    }
}
