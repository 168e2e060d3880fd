//! Gradient checkpointing, as `torch.utils.checkpoint` does for transformers'
//! `gradient_checkpointing_enable()`: a segment (one decoder layer) keeps only its input in the
//! forward pass and runs again in backward. The replay's LoRA gradients cannot travel through the
//! outer graph, so they go to a [`GradSink`] that the training step merges; a [`Stash`] gives the
//! replay back the attention output and log-sum-exp of the first run, and a [`Phase::Replay`] may
//! skip a product whose value nothing reads. See DEVELOPERS.md, "Gradient checkpointing".

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
            .map_err(|_| Error::Msg("gradient sink poisoned".into()))?;
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

/// Gradient checkpointing as a model runs it.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// Where the replays leave the trainable tensors' gradients.
    pub sink: Arc<GradSink>,
    /// Let each segment keep its stash (a layer's attention output and log-sum-exp);
    /// `false` keeps only the segment inputs and recomputes everything.
    pub stash: bool,
}

/// Results a checkpointed segment keeps from its first run for its replay, in order.
#[derive(Debug, Clone, Default)]
pub struct Stash {
    items: Vec<Tensor>,
    cursor: usize,
    enabled: bool,
    /// Set for the replay: `take` reads, `keep` does nothing.
    replay: bool,
}

impl Stash {
    /// A stash that keeps what it is given (`enabled`), or one that keeps nothing, so that
    /// the replay recomputes everything.
    pub fn new(enabled: bool) -> Self {
        Self {
            items: Vec::new(),
            cursor: 0,
            enabled,
            replay: false,
        }
    }

    /// Keeps `tensors` (detached) for the replay, when this stash keeps anything.
    pub fn keep(&mut self, tensors: &[&Tensor]) {
        if self.enabled && !self.replay {
            self.items.extend(tensors.iter().map(|t| t.detach()));
        }
    }

    /// During the replay, the next `n` kept tensors in the order they were kept; `None`
    /// during the first run, or when there are not that many (the stash kept nothing).
    pub fn take(&mut self, n: usize) -> Option<Vec<Tensor>> {
        let end = self.cursor + n;
        if !self.replay || end > self.items.len() {
            return None;
        }
        let out = self.items[self.cursor..end].to_vec();
        self.cursor = end;
        Some(out)
    }

    /// The same kept tensors, for the replay to read from the start.
    fn rewound(&self) -> Self {
        Self {
            cursor: 0,
            replay: true,
            ..self.clone()
        }
    }
}

/// Which run of a checkpointed segment this is.
#[derive(Debug)]
pub enum Phase<'a> {
    /// The forward pass: the segment may keep results in the stash.
    Record(&'a mut Stash),
    /// The recomputation in backward: kept results come back from the stash, and the
    /// segment's output value is not read (only the graph behind it is), so a product that
    /// only feeds the output may return any value of the right shape.
    Replay(&'a mut Stash),
}

impl Phase<'_> {
    pub fn stash(&mut self) -> &mut Stash {
        match self {
            Phase::Record(s) | Phase::Replay(s) => s,
        }
    }

    pub fn is_replay(&self) -> bool {
        matches!(self, Phase::Replay(_))
    }
}

/// `segment(x)`, keeping only `x` (and what the segment stashes, when `stash` is on) for
/// backward and running `segment` again there.
/// `segment` must be deterministic (dropout masks are seeded per micro-batch, so they are).
pub fn checkpoint<F>(x: &Tensor, sink: &Arc<GradSink>, stash: bool, segment: F) -> Result<Tensor>
where
    F: Fn(&Tensor, Phase<'_>) -> Result<Tensor> + Send + Sync + 'static,
{
    let mut kept = Stash::new(stash);
    let y = segment(&x.detach(), Phase::Record(&mut kept))?;
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
        let mut replay = kept.rewound();
        let y = segment(leaf.as_tensor(), Phase::Replay(&mut replay))?;
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
        let h = checkpoint(&x, &sink, false, move |x, _| layer(x, &a))?;
        let y = checkpoint(&h, &sink, false, move |x, _| layer(x, &b))?;
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
            let diff = crate::testutil::max_abs_diff(&got, want)?;
            assert!(diff < 1e-6, "checkpointed gradient differs by {diff}");
        }
        Ok(())
    }

    /// A segment that stashes an intermediate: the replay takes it instead of computing it
    /// again, the first run's value of its last product is not needed, and the gradients
    /// equal the plain ones.
    #[test]
    fn stashed_results_replace_the_recomputation() -> Result<()> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 4), &dev)?)?;
        let target = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let loss = |y: &Tensor| -> Result<Tensor> { Ok((y - &target)?.sqr()?.sum_all()?) };
        let plain = loss(&layer(&x, w.as_tensor())?)?.backward()?;
        let want = plain
            .get(w.as_tensor())
            .ok_or(Error::Msg("no reference".into()))?;

        for stash in [false, true] {
            let calls = Arc::new(AtomicUsize::new(0));
            let (wt, count) = (w.as_tensor().clone(), Arc::clone(&calls));
            let sink = GradSink::new(vec![w.as_tensor().clone()]);
            // `softmax(tanh(x w))` with `tanh(x w)` as the stashed intermediate: its value
            // is computed under autograd once per run that does not find it in the stash.
            let y = checkpoint(&x, &sink, stash, move |x, mut phase| {
                let h = match phase.stash().take(1) {
                    Some(kept) => {
                        // Re-attach the kept value to the graph: `h = kept + (x w - x w)` has
                        // the value of `kept` and the derivative of `x w` (tanh' is folded in
                        // below through the kept value).
                        let xw = x.broadcast_matmul(&wt)?;
                        let t = kept[0].clone();
                        let dt = (1.0 - t.sqr()?)?;
                        ((xw.clone() - xw.detach())? * dt)?.add(&t)?
                    }
                    None => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let h = x.broadcast_matmul(&wt)?.tanh()?;
                        phase.stash().keep(&[&h]);
                        h
                    }
                };
                Ok(candle_nn::ops::softmax(&h, D::Minus1)?)
            })?;
            let outer = loss(&y)?.backward()?;
            assert!(outer.get(w.as_tensor()).is_none());
            let got = sink
                .take(w.as_tensor())?
                .ok_or(Error::Msg("no gradient".into()))?;
            let diff = crate::testutil::max_abs_diff(&got, want)?;
            assert!(diff < 1e-5, "stash {stash}: gradient differs by {diff}");
            let runs = calls.load(Ordering::SeqCst);
            assert_eq!(runs, if stash { 1 } else { 2 }, "stash {stash}");
        }
        Ok(())
    }
}
