//! When a run saves, prunes and stops. The policy sees step numbers and stop requests (SIGINT,
//! SIGTERM, `--stop-after`) and returns actions for the trainer to carry out, doing no I/O itself, so
//! its rules are tested without files, as burn-train's checkpointing strategies are. It prunes
//! only checkpoints it knows: the ones this run wrote, before a resume too, told apart from an
//! earlier run's by the run id each checkpoint records.

/// What the trainer does after a step, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointAction {
    /// Write the checkpoint of this step.
    Save(usize),
    /// Remove this step's checkpoint, one this run wrote earlier.
    Prune(usize),
    /// End the run here, before its last step (the checkpoint is saved first).
    Stop,
}

/// A checkpoint found in the output folder: its step and the run that wrote it (`None` for
/// a checkpoint older than run ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCheckpoint {
    pub step: usize,
    pub run_id: Option<String>,
}

/// `train.save_every`, `train.keep_last` and the stop requests of one run.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    save_every: usize,
    keep_last: usize,
    total_steps: usize,
    start: usize,
    stop_after: Option<usize>,
    /// This run's checkpoints, oldest first.
    kept: Vec<usize>,
}

impl CheckpointPolicy {
    /// A fresh run of `total_steps`: saves every `save_every` steps (0: only at the end) and
    /// keeps the newest `keep_last` checkpoints (0: all).
    pub fn new(save_every: usize, keep_last: usize, total_steps: usize) -> Self {
        Self {
            save_every,
            keep_last,
            total_steps,
            start: 0,
            stop_after: None,
            kept: Vec::new(),
        }
    }

    /// Continues run `run_id` from its checkpoint at `start`. Of the checkpoints `saved` in
    /// the output folder, those this run wrote up to `start` are pruned with its new ones;
    /// any other run's are never touched.
    pub fn resumed(
        mut self,
        start: usize,
        run_id: Option<&str>,
        saved: &[SavedCheckpoint],
    ) -> Self {
        let mut earlier: Vec<usize> = saved
            .iter()
            .filter(|c| c.step <= start && c.run_id.as_deref() == run_id)
            .map(|c| c.step)
            .collect();
        earlier.sort_unstable();
        earlier.dedup();
        self.start = start;
        self.kept = earlier;
        self
    }

    /// Stops (with a checkpoint) after `steps` steps of this invocation.
    pub fn stop_after(mut self, steps: Option<usize>) -> Self {
        self.stop_after = steps;
        self
    }

    /// The steps of this run's checkpoints still on disk, oldest first.
    pub fn kept(&self) -> &[usize] {
        &self.kept
    }

    /// The step of the newest checkpoint, or the step the run started from.
    pub fn last_saved(&self) -> usize {
        self.kept.last().copied().unwrap_or(self.start)
    }

    /// The actions after `step` optimizer steps; `stop_requested` is a pending Ctrl-C.
    pub fn after_step(&mut self, step: usize, stop_requested: bool) -> Vec<CheckpointAction> {
        let stop = stop_requested
            || self
                .stop_after
                .is_some_and(|n| step.saturating_sub(self.start) >= n);
        let due = self.save_every > 0 && step.is_multiple_of(self.save_every);
        let mut actions = Vec::new();
        if due || stop || step == self.total_steps {
            actions.push(CheckpointAction::Save(step));
            if !self.kept.contains(&step) {
                self.kept.push(step);
            }
            if self.keep_last > 0 && self.kept.len() > self.keep_last {
                let pruned = self.kept.len() - self.keep_last;
                actions.extend(self.kept.drain(..pruned).map(CheckpointAction::Prune));
            }
        }
        if stop && step < self.total_steps {
            actions.push(CheckpointAction::Stop);
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::CheckpointAction::{Prune, Save, Stop};
    use super::*;

    fn saved(run: &str, steps: &[usize]) -> Vec<SavedCheckpoint> {
        steps
            .iter()
            .map(|&step| SavedCheckpoint {
                step,
                run_id: Some(run.to_string()),
            })
            .collect()
    }

    fn pruned(log: Vec<(usize, Vec<CheckpointAction>)>) -> Vec<usize> {
        log.into_iter()
            .flat_map(|(_, actions)| actions)
            .filter_map(|a| match a {
                Prune(step) => Some(step),
                _ => None,
            })
            .collect()
    }

    /// Runs the policy from `from + 1` to the end or a stop; Ctrl-C arrives after `ctrlc_at`.
    fn run(
        policy: &mut CheckpointPolicy,
        from: usize,
        ctrlc_at: Option<usize>,
    ) -> Vec<(usize, Vec<CheckpointAction>)> {
        let mut log = Vec::new();
        for step in from + 1..=policy.total_steps {
            let actions = policy.after_step(step, ctrlc_at.is_some_and(|s| step >= s));
            let stop = actions.contains(&Stop);
            if !actions.is_empty() {
                log.push((step, actions));
            }
            if stop {
                break;
            }
        }
        log
    }

    #[test]
    fn saves_every_n_and_at_the_end_keeping_the_newest() {
        let mut p = CheckpointPolicy::new(2, 2, 7);
        let log = run(&mut p, 0, None);
        assert_eq!(
            log,
            vec![
                (2, vec![Save(2)]),
                (4, vec![Save(4)]),
                (6, vec![Save(6), Prune(2)]),
                (7, vec![Save(7), Prune(4)]),
            ]
        );
        assert_eq!(p.kept(), &[6, 7]);
        assert_eq!(p.last_saved(), 7);
    }

    #[test]
    fn without_save_every_only_the_end_is_saved_and_keep_last_zero_keeps_all() {
        let mut p = CheckpointPolicy::new(0, 2, 5);
        assert_eq!(run(&mut p, 0, None), vec![(5, vec![Save(5)])]);
        let mut all = CheckpointPolicy::new(1, 0, 4);
        run(&mut all, 0, None);
        assert_eq!(all.kept(), &[1, 2, 3, 4]);
    }

    #[test]
    fn ctrl_c_saves_then_stops_and_a_stop_at_the_end_is_no_interruption() {
        let mut p = CheckpointPolicy::new(4, 2, 10);
        assert_eq!(run(&mut p, 0, Some(3)), vec![(3, vec![Save(3), Stop])]);
        let mut last = CheckpointPolicy::new(0, 2, 3);
        assert_eq!(run(&mut last, 0, Some(3)), vec![(3, vec![Save(3)])]);
    }

    #[test]
    fn stop_after_counts_the_steps_of_this_invocation() {
        let mut p = CheckpointPolicy::new(2, 2, 8)
            .resumed(3, Some("r"), &saved("r", &[2, 3]))
            .stop_after(Some(2));
        assert_eq!(p.last_saved(), 3);
        assert_eq!(
            run(&mut p, 3, None),
            vec![
                (4, vec![Save(4), Prune(2)]),
                (5, vec![Save(5), Prune(3), Stop])
            ]
        );
    }

    #[test]
    fn a_resumed_run_prunes_like_the_uninterrupted_one() {
        let mut whole = CheckpointPolicy::new(2, 2, 8);
        run(&mut whole, 0, None);
        let mut first = CheckpointPolicy::new(2, 2, 8).stop_after(Some(3));
        run(&mut first, 0, None);
        assert_eq!(first.kept(), &[2, 3]);
        let mut second =
            CheckpointPolicy::new(2, 2, 8).resumed(3, Some("r"), &saved("r", first.kept()));
        run(&mut second, 3, None);
        assert_eq!(second.kept(), whole.kept());
    }

    #[test]
    fn prunes_only_the_checkpoints_it_knows() {
        // A fresh run knows none of what an earlier run left: it prunes only its own.
        let mut p = CheckpointPolicy::new(1, 1, 3);
        assert_eq!(pruned(run(&mut p, 0, None)), vec![1, 2]);
        assert_eq!(p.kept(), &[3]);
    }

    #[test]
    fn a_resumed_run_prunes_only_the_checkpoints_of_its_own_run() {
        // An earlier run (`old`) left newer steps in the same folder, and a checkpoint
        // older than run ids; this run (`new`) stopped at 3 and resumes.
        let mut on_disk = saved("old", &[2, 4, 6, 8]);
        on_disk.extend(saved("new", &[2, 3]));
        on_disk.push(SavedCheckpoint {
            step: 1,
            run_id: None,
        });
        let mut p = CheckpointPolicy::new(2, 2, 8).resumed(3, Some("new"), &on_disk);
        assert_eq!(p.kept(), &[2, 3]);
        assert_eq!(pruned(run(&mut p, 3, None)), vec![2, 3, 4]);
        assert_eq!(p.kept(), &[6, 8]);
        // A run resumed from a checkpoint without a run id owns the others without one.
        let legacy = CheckpointPolicy::new(2, 2, 8).resumed(3, None, &on_disk);
        assert_eq!(legacy.kept(), &[1]);
    }

    #[test]
    fn a_fresh_run_without_checkpoints_reports_step_zero() {
        assert_eq!(CheckpointPolicy::new(2, 2, 8).last_saved(), 0);
    }
}
