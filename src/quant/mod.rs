//! Frozen quantized weights that still pass gradients to their inputs (QLoRA).
//!
//! `nf4` is bitsandbytes' 4-bit NormalFloat with double quantization (Dettmers et al., 2023,
//! "QLoRA"); the GGML formats come from candle's `quantized` module.

pub mod nf4;
