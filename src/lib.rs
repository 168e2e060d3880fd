//! lora-train: LoRA and QLoRA fine-tuning of Llama and Gemma chat models on Candle.
//!
//! The crate is a library with a thin `lora-train` binary. The modules follow the
//! pipeline: a [`model`] is resolved and loaded (HF folder, hub cache or GGUF), its
//! tokenizer and chat template live in [`data`], [`eval`] scores datasets, and
//! [`generate`] samples from the model with a KV cache.

pub mod alloc;
pub mod autograd;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod gemm;
pub mod generate;
pub mod kernels;
pub mod lora;
pub mod model;
pub mod providers;
pub mod quant;
#[cfg(test)]
mod testutil;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
