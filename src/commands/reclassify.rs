//! `instrument-detector reclassify`: redo results made by other models
//! (`instrument_detector::reclassify`; safe with the daemon running).

use crate::ModelArgs;
use anyhow::{Context, Result};
use instrument_detector::engine;
use instrument_detector::model::LoadedModel;
use instrument_detector::reclassify::{self, Done, Selection};
use instrument_detector::store::Store;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ReclassifyArgs {
    /// Only results whose model is not the current one (by sha256).
    #[arg(long)]
    stale: bool,
    /// Only results currently labelled L.
    #[arg(long, value_name = "L")]
    label: Option<String>,
    /// Only paths matching this glob (relative patterns match at any depth).
    #[arg(long, value_name = "GLOB")]
    path: Option<String>,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: ReclassifyArgs) -> Result<ExitCode> {
    let model = LoadedModel::load(&a.model.model_for_library(&a.db))?;
    let mut store = Store::open_rw(&a.db).with_context(|| format!("cannot open {}", a.db.display()))?;
    let (mut engine, _) = engine::open(&model, a.model.backend, &a.model.engine_options())?;
    let batch = a.model.batch_size.unwrap_or_else(|| engine.preferred_batch());
    let selection = Selection { stale: a.stale, label: a.label, path: a.path };
    let done = reclassify::run(&mut store, &model, engine.as_mut(), &selection, batch, &mut |_, _| {})?;
    if done == Done::default() {
        eprintln!("nothing to reclassify");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "reclassified {} contents with {} ({} skipped)",
        done.reclassified,
        model.name(),
        done.failed + done.changed
    );
    if done.changed > 0 {
        eprintln!(
            "{} of the skipped changed since they were recorded: the daemon redoes them when it next runs",
            done.changed
        );
    }
    Ok(ExitCode::SUCCESS)
}
