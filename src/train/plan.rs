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
}
