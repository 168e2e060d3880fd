//! How examples map to optimizer steps: micro-batches of `micro_batch_size`, `grad_accum` of
//! them per step, epochs in a seeded shuffle (or file order), and the run length in steps.
//! Pure arithmetic on counts, so a resumed run finds the same batches as an uninterrupted one.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::config::job::{JobConfig, TrainLength};
use crate::{Error, Result};

/// The order of examples in `epoch`: a seeded shuffle, or file order.
pub fn epoch_order(n: usize, epoch: usize, seed: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64 * 7919));
        order.shuffle(&mut rng);
    }
    order
}

/// How examples map to optimizer steps.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    pub examples: usize,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

impl StepPlan {
    pub fn new(job: &JobConfig, examples: usize) -> Result<Self> {
        if examples == 0 {
            return Err(Error::Config(format!(
                "{}: no training example is left after fitting to data.max_seq_len = {}",
                job.data.train.display(),
                job.data.max_seq_len
            )));
        }
        let mbs = job.train.micro_batch_size;
        let ga = job.train.grad_accum;
        let micro = examples.div_ceil(mbs);
        let steps_per_epoch = micro.div_ceil(ga);
        let total_steps = match job.train.length() {
            TrainLength::Steps(s) => s,
            TrainLength::Epochs(e) => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
        };
        Ok(Self {
            examples,
            micro_batch_size: mbs,
            grad_accum: ga,
            steps_per_epoch,
            total_steps,
        })
    }

    /// Example indices of each micro-batch of 0-based optimizer step `step`.
    pub fn step_batches(&self, step: usize, seed: u64, shuffle: bool) -> Vec<Vec<usize>> {
        let epoch = step / self.steps_per_epoch;
        let k = step % self.steps_per_epoch;
        let order = epoch_order(self.examples, epoch, seed, shuffle);
        let micro: Vec<&[usize]> = order.chunks(self.micro_batch_size).collect();
        let from = k * self.grad_accum;
        let to = (from + self.grad_accum).min(micro.len());
        micro[from..to].iter().map(|c| c.to_vec()).collect()
    }

    pub fn epoch_of(&self, step: usize) -> f64 {
        step as f64 / self.steps_per_epoch as f64
    }

    /// What `job` asks for that this plan cannot give, each with the value in effect instead,
    /// for the trainer to log as warnings: a `grad_accum` beyond an epoch's micro-batches, a
    /// `warmup_steps` beyond the run.
    pub fn warnings(&self, job: &JobConfig) -> Vec<String> {
        let mut warnings = Vec::new();
        let micro = self.examples.div_ceil(self.micro_batch_size);
        if self.grad_accum > micro {
            // What a micro-batch counts: packed rows, preference pairs or conversations.
            let units = if job.is_dpo() {
                "preference pairs"
            } else if job.data.packing {
                "packed rows"
            } else {
                "conversations"
            };
            warnings.push(format!(
                "train.grad_accum = {} is more than the {micro} micro-batches of an epoch \
                 ({} {units}, train.micro_batch_size = {}): each step accumulates {micro}",
                self.grad_accum, self.examples, self.micro_batch_size
            ));
        }
        let total = self.total_steps;
        if let Some(warmup) = job.train.warmup_steps.filter(|w| *w > total) {
            let peak = job.train.lr * total.saturating_sub(1) as f64 / total as f64;
            warnings.push(format!(
                "train.warmup_steps = {warmup} is more than the run's {total} steps: the warmup \
                 is cut to {total} steps and the learning rate peaks at {peak:.3e}, below \
                 train.lr = {:.3e}",
                job.train.lr
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn job(train: &str) -> JobConfig {
        let text = format!(
            "[model]\nsource = \"m.gguf\"\n[data]\ntrain = \"t.jsonl\"\n[output]\ndir = \"out\"\n\
             [train]\n{train}\n"
        );
        JobConfig::load_str(&text, Path::new("job.toml"), &[]).unwrap()
    }

    #[test]
    fn a_plan_that_fits_the_job_warns_of_nothing() {
        let j = job("max_steps = 8\nmicro_batch_size = 2\ngrad_accum = 2\nwarmup_steps = 8");
        assert!(StepPlan::new(&j, 9).unwrap().warnings(&j).is_empty());
    }

    #[test]
    fn grad_accum_beyond_an_epoch_warns_with_the_accumulation_in_effect() {
        let j = job("max_steps = 8\nmicro_batch_size = 2\ngrad_accum = 16");
        let plan = StepPlan::new(&j, 9).unwrap();
        let w = plan.warnings(&j);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("train.grad_accum = 16 is more than the 5 micro-batches")
                && w[0].ends_with("each step accumulates 5"),
            "{}",
            w[0]
        );
        assert_eq!(plan.step_batches(0, 0, false).len(), 5);
        assert!(w[0].contains("(9 conversations,"), "{}", w[0]);
        let mut packed = job("max_steps = 8\nmicro_batch_size = 2\ngrad_accum = 16");
        packed.data.packing = true;
        let w = StepPlan::new(&packed, 9).unwrap().warnings(&packed);
        assert!(w[0].contains("(9 packed rows,"), "{}", w[0]);
    }

    #[test]
    fn warmup_beyond_the_run_warns_with_the_peak_learning_rate() {
        let j = job("max_steps = 4\nlr = 1e-3\nwarmup_steps = 100");
        let w = StepPlan::new(&j, 8).unwrap().warnings(&j);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("warmup_steps = 100 is more than the run's 4 steps")
                && w[0].contains("peaks at 7.500e-4"),
            "{}",
            w[0]
        );
    }
}
