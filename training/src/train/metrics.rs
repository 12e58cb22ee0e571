//! metrics.csv: one row per epoch, the log line that shows it, and the
//! curves drawn from it.

use anyhow::Result;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

const HEADER: &str = "epoch,phase,lr,train_loss,train_acc,valid_loss,valid_acc,hard_valid_acc,seconds,images_per_s\n";

#[derive(Debug, Clone, Serialize)]
pub(crate) struct EpochRow {
    pub(crate) epoch: usize,
    pub(crate) phase: &'static str,
    pub(crate) lr: f64,
    pub(crate) train_loss: f64,
    pub(crate) train_acc: f64,
    pub(crate) valid_loss: f64,
    pub(crate) valid_acc: f64,
    pub(crate) hard_valid_acc: Option<f64>,
    pub(crate) seconds: f64,
    pub(crate) images_per_s: f64,
}

/// The run folder's metrics.csv. A fresh run starts it with the header; a
/// resumed one appends to it (or starts it, if it is gone).
pub(crate) fn start_csv(out: &Path, start_epoch: usize) -> Result<PathBuf> {
    let path = out.join("metrics.csv");
    if start_epoch == 0 || !path.exists() {
        std::fs::write(&path, HEADER)?;
    }
    Ok(path)
}

/// Prints the epoch's line; `valid_correct` of `valid_total` is the valid count.
pub(crate) fn log(row: &EpochRow, epochs: usize, valid_correct: usize, valid_total: usize) {
    eprintln!(
        "epoch {:>2}/{} [{}] train loss {:.4} acc {:.4} | valid loss {:.4} acc {:.4} ({}/{}) | hard-valid {} | {:.0} s, {:.1} img/s",
        row.epoch,
        epochs,
        row.phase,
        row.train_loss,
        row.train_acc,
        row.valid_loss,
        row.valid_acc,
        valid_correct,
        valid_total,
        row.hard_valid_acc.map_or("-".into(), |h| format!("{h:.4}")),
        row.seconds,
        row.images_per_s
    );
}

pub(crate) fn append(path: &Path, row: &EpochRow) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(
        f,
        "{},{},{:.6e},{:.5},{:.5},{:.5},{:.5},{},{:.1},{:.2}",
        row.epoch,
        row.phase,
        row.lr,
        row.train_loss,
        row.train_acc,
        row.valid_loss,
        row.valid_acc,
        row.hard_valid_acc
            .map_or(String::new(), |h| format!("{h:.5}")),
        row.seconds,
        row.images_per_s
    )?;
    Ok(())
}

/// Re-reads metrics.csv and draws curves.png.
pub(crate) fn plot(out: &Path) -> Result<()> {
    let mut rdr = csv::Reader::from_path(out.join("metrics.csv"))?;
    let (mut tl, mut vl, mut ta, mut va, mut ha) = (vec![], vec![], vec![], vec![], vec![]);
    for rec in rdr.records() {
        let r = rec?;
        let num = |i: usize| r.get(i).and_then(|v| v.parse::<f64>().ok());
        tl.push(num(3).unwrap_or(0.0));
        ta.push(num(4).unwrap_or(0.0));
        vl.push(num(5).unwrap_or(0.0));
        va.push(num(6).unwrap_or(0.0));
        if let Some(h) = num(7) {
            ha.push(h);
        }
    }
    crate::plot::curves(&out.join("curves.png"), &[tl, vl], &[ta, va, ha])?;
    Ok(())
}
