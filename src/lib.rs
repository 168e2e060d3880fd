//! lora-train: LoRA and QLoRA fine-tuning of Llama and Gemma chat models on Candle.
//!
//! The library under the `lora-train` binary, whose commands live in the binary's own `cli`.
//! Modules are layered, each using only those below it: [`error`], [`net`] and the Hugging Face
//! [`hub`] downloads, [`data`] and the tensor ops
//! ([`gemm`], [`autograd`], [`kernels`], [`quant`]) at the bottom, up to [`train`] and
//! [`providers`], the evaluation [`harness`], the synthetic-data tools ([`synth`]), vLLM
//! [`deploy`]ments and the server ([`serve`]) over the SQLite [`registry`];
//! `tests/it/layering.rs` states the order. DEVELOPERS.md opens with a map.

pub mod alloc;
pub mod autograd;
pub mod bench;
pub mod config;
pub mod data;
pub mod deploy;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod gemm;
pub mod generate;
pub mod harness;
pub mod hub;
pub mod kernels;
pub mod lora;
pub mod model;
pub mod net;
pub mod providers;
pub mod quant;
pub mod registry;
pub mod serve;
pub mod synth;
#[cfg(test)]
mod testutil;
pub mod threads;
pub mod train;

pub use error::{Error, HubFailure, KeyAt, Result};
