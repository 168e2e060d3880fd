//! Export: PEFT adapter folders (what vLLM and PEFT load) and merged full weights.

pub mod merge;
pub mod peft;

pub use merge::MERGED_MODEL;
pub use peft::{write_adapter, write_adapter_files, AdapterExport, ADAPTER};
