//! The learning-rate schedule.

use super::args::TrainArgs;

/// One-cycle learning rate (cosine up from max/25, cosine down to max/25e4).
pub(crate) fn one_cycle(step: usize, total: usize, max_lr: f64, pct_start: f64) -> f64 {
    let total = total.max(1) as f64;
    let up = (pct_start * total).max(1.0);
    let s = step as f64;
    let (start, end) = (max_lr / 25.0, max_lr / 25.0 / 1e4);
    let cos = |a: f64, b: f64, t: f64| {
        b + (a - b) * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos()) / 2.0
    };
    if s < up {
        cos(start, max_lr, s / up)
    } else {
        cos(max_lr, end, (s - up) / (total - up).max(1.0))
    }
}

/// Where each epoch sits in its phase's one-cycle: the head-only epochs
/// (backbone frozen) run a cycle of their own up to the warm-up peak, then
/// the full epochs run a fresh one up to --lr.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Phases {
    pub(crate) steps_per_epoch: usize,
    /// Head-only epochs, at most all of them.
    pub(crate) warmup: usize,
    warmup_lr: f64,
    lr: f64,
    epochs: usize,
    pct_start: f64,
}

impl Phases {
    pub(crate) fn new(args: &TrainArgs, train_images: usize) -> Phases {
        let full = train_images.div_ceil(args.batch_size);
        Phases {
            steps_per_epoch: args.max_batches.map_or(full, |m| m.min(full)),
            warmup: args.warmup_epochs.min(args.epochs),
            warmup_lr: args.warmup_lr.unwrap_or(args.lr),
            lr: args.lr,
            epochs: args.epochs,
            pct_start: args.pct_start,
        }
    }

    /// Whether `epoch` (from 0) trains the head alone.
    pub(crate) fn frozen(&self, epoch: usize) -> bool {
        epoch < self.warmup
    }

    /// The peak learning rate of `epoch`'s phase.
    pub(crate) fn peak(&self, epoch: usize) -> f64 {
        if self.frozen(epoch) {
            self.warmup_lr
        } else {
            self.lr
        }
    }

    /// The learning rate of batch `i` of `epoch`.
    pub(crate) fn lr(&self, epoch: usize, i: usize) -> f64 {
        let (phase_step0, phase_steps) = if self.frozen(epoch) {
            (
                epoch * self.steps_per_epoch,
                self.warmup * self.steps_per_epoch,
            )
        } else {
            (
                (epoch - self.warmup) * self.steps_per_epoch,
                (self.epochs - self.warmup) * self.steps_per_epoch,
            )
        };
        one_cycle(
            phase_step0 + i,
            phase_steps,
            self.peak(epoch),
            self.pct_start,
        )
    }
}
