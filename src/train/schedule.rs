//! Learning-rate schedules: constant, linear or cosine decay after a linear warmup, down to
//! `min_lr_ratio · lr`. At `min_lr_ratio = 0` these are transformers'
//! `get_{constant,linear,cosine}_schedule_with_warmup`.

use crate::config::job::SchedulerKind;

/// A schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub kind: SchedulerKind,
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate used by the update of 0-based optimizer step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let s = step as f64;
        if step < self.warmup_steps {
            return self.lr * s / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((s - self.warmup_steps as f64) / decay_steps).clamp(0.0, 1.0);
        let factor = match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::Linear => 1.0 - progress,
            SchedulerKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        let min = self.min_lr_ratio;
        self.lr * (min + (1.0 - min) * factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_warmup_then_decay_like_transformers() {
        let s = Schedule {
            kind: SchedulerKind::Linear,
            lr: 1e-3,
            warmup_steps: 2,
            total_steps: 10,
            min_lr_ratio: 0.0,
        };
        // get_linear_schedule_with_warmup(2, 10): 0, 0.5, 1, 7/8, ...
        let lrs: Vec<f64> = (0..4).map(|i| s.lr_at(i)).collect();
        let want = [0.0, 5e-4, 1e-3, 1e-3 * 7.0 / 8.0];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn cosine_ends_at_min_ratio() {
        let s = Schedule {
            kind: SchedulerKind::Cosine,
            lr: 1.0,
            warmup_steps: 0,
            total_steps: 10,
            min_lr_ratio: 0.1,
        };
        assert!((s.lr_at(0) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(10) - 0.1).abs() < 1e-12);
    }
}
