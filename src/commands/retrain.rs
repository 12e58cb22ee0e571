//! `instrument-detector retrain`: a new head for the library's model, fitted
//! on the dataset plus the corrections in the database (see
//! `instrument_detector::retrain`). Safe with the daemon running: it reads the
//! corrections through its own connection, and the daemon swaps to the new
//! model when `current.onnx` changes.

use crate::ModelArgs;
use anyhow::Result;
use instrument_detector::retrain::{self, LibraryRetrain};
use instrument_model::retrain::{FitSettings, Progress};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RetrainArgs {
    /// The dataset the model was trained on: a folder with train/ and valid/,
    /// each <label>/<photo> (e.g. ../shared/data/instruments).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
    /// Write the new model here, and do not put it in use. Default: into the
    /// library's models folder (<db>.models/), as the model in use.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Keep the backbone's features here (default: <db>.models/features/);
    /// share one folder between libraries to compute the dataset's only once.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Full-batch optimisation steps.
    #[arg(long, default_value_t = FitSettings::default().steps, value_name = "N")]
    steps: usize,
    #[arg(long, default_value_t = FitSettings::default().learning_rate, value_name = "LR")]
    learning_rate: f32,
    /// Pull toward the current head (higher: smaller changes).
    #[arg(long, default_value_t = FitSettings::default().l2sp, value_name = "S")]
    l2sp: f32,
    /// How many dataset photos one corrected photo weighs.
    #[arg(long, default_value_t = FitSettings::default().correction_weight, value_name = "W")]
    correction_weight: f32,
    /// Teach the dataset's photos their labels rather than the current
    /// model's answers (which keeps the head where it was, except where the
    /// corrections move it).
    #[arg(long)]
    dataset_labels: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: RetrainArgs) -> Result<ExitCode> {
    let settings = FitSettings {
        steps: a.steps,
        learning_rate: a.learning_rate,
        l2sp: a.l2sp,
        correction_weight: a.correction_weight,
        distill: !a.dataset_labels,
        ..FitSettings::default()
    };
    let job = LibraryRetrain {
        base: a.model.model_for_library(&a.db),
        db: a.db,
        data: a.data,
        out: a.out,
        settings,
        cache: a.cache,
        backend: a.model.backend,
        engine: a.model.engine_options(),
    };
    eprintln!("retraining {} on the corrections in {}", job.base.display(), job.db.display());
    let done = retrain::run(&job, &mut print_progress)?;
    eprintln!();
    for s in &done.skipped {
        eprintln!("left out: {s}");
    }
    let r = &done.report;
    eprintln!(
        "features: {} cached, {} computed in {:.1} s; fit: {:.1} s",
        r.features_cached, r.features_computed, r.feature_seconds, r.fit_seconds
    );
    eprintln!(
        "valid: {} of {} right before, {} after; corrections: {} of {} right before, {} after",
        r.valid_right_before,
        r.valid_photos,
        r.valid_right_after,
        r.corrections_right_before,
        r.corrections,
        r.corrections_right_after
    );
    if job.out.is_some() {
        eprintln!("wrote {}", done.written.display());
    } else {
        eprintln!(
            "wrote {} and put it in use ({}): a running daemon switches to it; `reclassify --stale --db {}` redoes the library",
            done.written.display(),
            retrain::current(&job.db).display(),
            job.db.display()
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One line, rewritten in place.
fn print_progress(p: Progress) {
    let line = match p {
        Progress::Features { done, total } => format!("features {done}/{total}"),
        Progress::Fitting { step, steps, loss } => format!("fitting {step}/{steps} (loss {loss:.4})"),
        Progress::Checking => "checking the new model".to_string(),
    };
    eprint!("\r{line:<60}");
    let _ = std::io::stderr().flush();
}
