//! The training loop: the seed's recipe (Adam, one-cycle, weight decay,
//! gradient clipping by value, dropout, batch 16) plus label smoothing,
//! head-only warm-up with a frozen backbone, augmentation, a hard validation,
//! best-checkpoint selection, resume, Ctrl-C, and the run folder's reports.
//!
//! - [`args`](TrainArgs): the flags;
//! - `context`: what every stage reads (flags, dataset, device, open world);
//! - `setup`: the network, resumed or pretrained, the optimizer, the frozen
//!   backbone;
//! - `trainer`: the epochs; `schedule`: their learning rates; `metrics`:
//!   metrics.csv and its curves; `interrupt`: Ctrl-C;
//! - `finish`: the export and the final numbers; `report`: final.json's
//!   [`FinalReport`] and report.md.

mod args;
mod context;
mod finish;
mod interrupt;
mod metrics;
mod report;
mod schedule;
mod setup;
mod trainer;

pub use args::{AugmentLevel, DeviceChoice, FeatureEngine, OptimizerKind, TrainArgs};
pub use report::{FinalReport, NoneReport};

use anyhow::Result;
use std::time::Instant;

/// `training train`: trains, exports and measures; the run folder gets the
/// checkpoints, metrics.csv, the plots, report.md, final.json and model.onnx.
pub fn run(args: TrainArgs) -> Result<FinalReport> {
    interrupt::install_ctrlc();
    let started = Instant::now();
    let ctx = context::Ctx::open(&args)?;
    let report = trainer::Trainer::new(ctx)?.run(started)?;
    std::fs::write(
        args.out.join("final.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}
