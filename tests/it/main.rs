//! The integration tests, one binary: each module is one concept, checked through the public
//! API or the built `lora-train` binary, against fixtures from the reference scripts in
//! `scripts/`. `alloc`, `threads` and `providers_env` stay separate binaries: the first two
//! need their own `main`, the last sets process-wide environment variables.

mod common;
mod providers_support;

mod bench;
mod cli_commands;
mod cli_errors;
mod cli_hosted;
mod ctrlc;
mod dashboard;
mod data;
mod data_synth;
mod data_tools;
mod dpo;
mod export;
mod harness_eval;
mod harness_judge;
mod harness_stats;
mod hostile;
mod hub;
mod job_config;
mod kernel_emu;
mod kernels;
mod layering;
mod model_parity;
mod nf4;
mod packing;
mod peft_parity;
mod providers_chat;
mod providers_hosted;
mod qlora;
mod real_models;
mod roundtrip;
mod serve;
mod serve_registry;
mod tokenizer;
mod train;
mod train_eval;
