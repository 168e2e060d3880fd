//! Frozen quantized weights that still pass gradients to their inputs (QLoRA).
//!
//! `nf4` is bitsandbytes' 4-bit NormalFloat with double quantization (Dettmers et al., 2023,
//! "QLoRA"); the GGML formats come from candle's `quantized` module.

pub mod format;
pub mod frozen;
pub mod nf4;
pub mod weight;

pub use format::Quantize;
pub use frozen::FrozenWeight;
pub use weight::QuantWeight;
