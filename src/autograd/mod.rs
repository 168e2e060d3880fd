//! Backward passes candle does not have: ops whose gradient we write ourselves, and
//! gradient checkpointing (recompute in backward instead of keeping activations).

pub mod checkpoint;
pub mod custom;

pub use checkpoint::{checkpoint, GradSink};
pub use custom::with_backward;
