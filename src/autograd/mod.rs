//! Backward passes candle does not have: ops whose gradient we write ourselves, and
//! gradient checkpointing (recompute in backward instead of keeping activations).

pub mod checkpoint;
pub mod custom;
pub mod release;

pub use checkpoint::{checkpoint, Checkpointing, GradSink, Phase, Stash};
pub use custom::{with_backward, with_backward_value, ForwardOp, Value};
pub use release::release;

use candle_core::Tensor;

/// Adds `g` to a running gradient sum (which starts as `None`).
pub fn accumulate(sum: &mut Option<Tensor>, g: Tensor) -> candle_core::Result<()> {
    *sum = Some(match sum.take() {
        Some(acc) => (acc + g)?,
        None => g,
    });
    Ok(())
}
