//! Gradient checkpointing: a segment (one decoder layer) keeps only its input during the
//! forward pass and runs again in backward to rebuild the activations it needs, as
//! `torch.utils.checkpoint` does for transformers' `gradient_checkpointing_enable()`.
//!
//! The recomputation's gradients for trainable tensors (the LoRA weights inside the layer)
//! cannot travel through the outer graph, whose only edge into the segment is its input,
//! so they are collected in a [`GradSink`] that the training step adds to the outer
//! gradients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, TensorId, Var};

use super::with_backward;
use crate::{Error, Result};

/// Gradients of trainable tensors computed inside checkpointed segments.
#[derive(Debug)]
pub struct GradSink {
    params: Vec<Tensor>,
    grads: Mutex<HashMap<TensorId, Tensor>>,
}

impl GradSink {
    /// A sink that collects gradients of `params` (the trainable tensors).
    pub fn new(params: Vec<Tensor>) -> Arc<Self> {
        Arc::new(Self {
            params,
            grads: Mutex::new(HashMap::new()),
        })
    }

    fn absorb(&self, store: &GradStore) -> candle_core::Result<()> {
        let mut grads = self
            .grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("gradient sink poisoned".into()))?;
        for p in &self.params {
            if let Some(g) = store.get(p) {
                let mut sum = grads.remove(&p.id());
                super::accumulate(&mut sum, g.clone())?;
                if let Some(sum) = sum {
                    grads.insert(p.id(), sum);
                }
            }
        }
        Ok(())
    }

    /// Removes and returns what was collected for `param`.
    pub fn take(&self, param: &Tensor) -> Result<Option<Tensor>> {
        let mut grads = self
            .grads
            .lock()
            .map_err(|_| Error::Msg("gradient sink poisoned".into()))?;
        Ok(grads.remove(&param.id()))
    }

    /// Drops everything collected (e.g. after a failed step).
    pub fn clear(&self) -> Result<()> {
        self.grads
            .lock()
            .map_err(|_| Error::Msg("gradient sink poisoned".into()))?
            .clear();
        Ok(())
    }
}

/// `segment(x)`, keeping only `x` for backward and running `segment` again there.
/// `segment` must be deterministic (dropout masks are seeded per micro-batch, so they are).
pub fn checkpoint<F>(x: &Tensor, sink: &Arc<GradSink>, segment: F) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
{
    let y = segment(&x.detach())?;
    if !y.track_op() {
        // Nothing trainable inside: nothing to recompute for.
        return Ok(y);
    }
    // The first segment's input does not track gradients (the embedding is frozen), but
    // the op must still be on the graph so that backward reaches the segment's weights.
    let needs_grad = x.track_op();
    let input = if needs_grad {
        x.clone()
    } else {
        Var::from_tensor(x)?.as_tensor().clone()
    };
    let sink = Arc::clone(sink);
    with_backward("checkpoint", y, &[&input], move |inputs, grad| {
        let leaf = Var::from_tensor(&inputs[0].detach())?;
        let y = segment(leaf.as_tensor()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let store = (y * grad.detach())?.sum_all()?.backward()?;
        sink.absorb(&store)?;
        // The stand-in leaf of an untracked input needs no gradient.
        Ok(vec![store
            .get(leaf.as_tensor())
            .filter(|_| needs_grad)
            .cloned()])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// A two-"layer" function with a trainable weight inside each segment.
    fn layer(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let h = x.broadcast_matmul(w)?;
        Ok(candle_nn::ops::softmax(&h.tanh()?, D::Minus1)?)
    }

    #[test]
    fn checkpointed_gradients_equal_plain_ones() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let w1 = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 4), &dev)?)?;
        let w2 = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 4), &dev)?)?;
        let target = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let loss = |y: &Tensor| -> Result<Tensor> { Ok((y - &target)?.sqr()?.sum_all()?) };

        let plain = loss(&layer(&layer(&x, w1.as_tensor())?, w2.as_tensor())?)?.backward()?;

        let sink = GradSink::new(vec![w1.as_tensor().clone(), w2.as_tensor().clone()]);
        let (a, b) = (w1.as_tensor().clone(), w2.as_tensor().clone());
        let h = checkpoint(&x, &sink, move |x| layer(x, &a))?;
        let y = checkpoint(&h, &sink, move |x| layer(x, &b))?;
        let outer = loss(&y)?.backward()?;
        for w in [&w1, &w2] {
            assert!(
                outer.get(w.as_tensor()).is_none(),
                "the outer graph bypassed the checkpoint"
            );
            let got = sink
                .take(w.as_tensor())?
                .ok_or(Error::Msg("no gradient".into()))?;
            let want = plain
                .get(w.as_tensor())
                .ok_or(Error::Msg("no reference".into()))?;
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "checkpointed gradient differs by {diff}");
        }
        Ok(())
    }
}
