//! Configuration files: Hugging Face `config.json` for the architectures we implement.
//!
//! Job TOML and PEFT `adapter_config.json` live beside these as the trainer grows.

pub mod gguf;
pub mod hf;
pub mod job;

pub use hf::{Gemma3Config, LlamaConfig, ModelConfig, RopeScaling, SUPPORTED_ARCHITECTURES};
pub use job::JobConfig;
