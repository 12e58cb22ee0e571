//! `instrument-detector report`

use anyhow::Result;
use instrument_detector::store::Store;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Folder to write index.html and thumbs/ into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Results below this confidence are grouped as `unknown`.
    #[arg(long, value_name = "C")]
    min_confidence: Option<f64>,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
}

pub fn run(a: ReportArgs) -> Result<ExitCode> {
    let store = Store::open_ro(&a.db)?;
    let s = instrument_detector::report::write(&store, &a.out, a.min_confidence)?;
    eprintln!(
        "wrote {} ({} photos, {} errors, {} new thumbnails)",
        s.index.display(),
        s.photos,
        s.errors,
        s.thumbnails_made
    );
    Ok(ExitCode::SUCCESS)
}
