//! Supervised LoRA fine-tuning: the masked loss, AdamW with our own state, learning
//! rate schedules, checkpoints, metrics, and the trainer loop.

pub mod checkpoint;
pub mod checkpoint_policy;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod optimizer;
pub mod report;
pub mod run_log;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use run_log::{RunLog, TrainSummary};
pub use step::{train_step, StepOutcome};
pub use trainer::{install_ctrlc, RunOptions, Trainer};
