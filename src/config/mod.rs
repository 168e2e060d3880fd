//! Configuration files: the job file (`job.toml`), the evaluation tables it shares with the eval
//! file, and Hugging Face `config.json` for the architectures we implement.

pub mod eval;
pub mod gguf;
pub mod hf;
pub mod job;

pub use hf::{
    Gemma3Config, LlamaConfig, LlamaFlavor, ModelConfig, RopeScaling, SUPPORTED_ARCHITECTURES,
};
pub use job::{DeviceName, DtypeName, JobConfig, ReportSection, WrittenKeys};
