//! Export: PEFT adapter folders (what vLLM and PEFT load) and merged full weights.

pub mod merge;
pub mod peft;

pub use peft::{adapter_config, write_adapter, write_adapter_files, AdapterExport};
