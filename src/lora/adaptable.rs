//! What LoRA needs from a model: its adaptable projections by HF module path, and a switch for
//! per-layer gradient checkpointing. Models implement it (the model's `CausalLm` extends it), so
//! adapters attach, load and train without `lora` knowing any model type.

use super::Linear;
use crate::autograd::Checkpointing;

/// A model whose projections carry adapters.
pub trait Adaptable {
    /// Every adaptable projection with its HF module path (`model.layers.0.self_attn.q_proj`).
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;

    /// Turns per-layer gradient checkpointing on (with the sink that collects the
    /// recomputed layers' LoRA gradients) or off.
    fn set_gradient_checkpointing(&mut self, checkpointing: Option<Checkpointing>);
}
