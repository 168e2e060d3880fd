//! Supervised LoRA fine-tuning, split by role as burn-train is: the step plan, the masked loss,
//! AdamW with our own state, learning-rate schedules, checkpoints and the policy that decides
//! when to save and stop, the stop signals, the checks before a resume, the run log, and the
//! trainer loop that ties them together.

pub mod checkpoint;
pub mod checkpoint_policy;
pub mod dpo;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod optimizer;
pub mod output_dir;
pub mod plan;
pub mod reference_cache;
pub mod report;
pub mod resume;
pub mod run_log;
pub mod schedule;
pub mod step;
pub mod stop;
pub mod trainer;

pub use plan::StepPlan;
pub use run_log::{RunLog, TrainSummary};
pub use step::{train_step, StepOutcome};
pub use stop::{install_stop_handler, stop_signal, StopSignal};
pub use trainer::{RunOptions, SyntheticData, Trainer};
