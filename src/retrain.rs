//! Retraining a library's model on the corrections in its database, and
//! where the retrained models live.
//!
//! The fitting itself is [`instrument_model::retrain`]; this module gives it
//! the library's corrected photos, and keeps what it makes beside the
//! database: `<db>.models/retrained-<time>-<sha>.onnx` (every one kept, so
//! going back is a copy), `current.onnx` (the one in use: the daemon,
//! `reclassify` and `retrain` itself take it whenever no `--model` is given,
//! and the daemon hot-swaps to it when it changes), `refused-*.onnx` (what
//! the guard turned down, kept to look at), and `features/` (the cache of
//! the backbone's features).

use crate::model::LoadedModel;
use crate::store::corrections;
use crate::store::{Store, StoreError, path_from_text};
use instrument_model::open_world::NONE;
use instrument_model::retrain::{self as fit, Example, Progress, Report, Target};
use std::path::{Path, PathBuf};

/// The folder of a library's retrained models.
pub fn folder(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "instruments.db".into());
    name.push(".models");
    db.with_file_name(name)
}

/// The retrained model a library uses, whether or not it exists yet.
pub fn current(db: &Path) -> PathBuf {
    folder(db).join("current.onnx")
}

/// The model a command on library `db` runs: the one asked for, else the
/// library's retrained model if it has one, else `shipped`.
pub fn model_for(asked: Option<&Path>, db: &Path, shipped: PathBuf) -> PathBuf {
    match asked {
        Some(p) => p.to_path_buf(),
        None if current(db).is_file() => current(db),
        None => shipped,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Fit(#[from] fit::RetrainError),
    #[error("{0}")]
    Model(#[from] crate::model::ModelError),
    #[error("the database holds no corrections yet: correct some results first (`correct PATH LABEL`, or on the page)")]
    NoCorrections,
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("another retrain of this library is running (lock file {0} is held); wait for it to finish")]
    Busy(PathBuf),
    #[error(
        "refused: the new model gets {after} of the {total} valid photos right, the model in use {before} (more than one fewer); it is kept as {kept} and not used"
    )]
    Refused { before: usize, after: usize, total: usize, kept: PathBuf },
}

/// One retrain of a library's model.
pub struct LibraryRetrain {
    pub db: PathBuf,
    /// The model to start from (the one in use).
    pub base: PathBuf,
    /// The dataset it was trained on: `train/` and `valid/`, each `<label>/<photo>`.
    pub data: PathBuf,
    /// Write here instead of installing it as the library's model.
    pub out: Option<PathBuf>,
    pub settings: fit::FitSettings,
    /// Where the backbone's features are kept (default `<db>.models/features`).
    pub cache: Option<PathBuf>,
    pub backend: crate::engine::BackendChoice,
    pub engine: crate::engine::EngineOptions,
}

/// What a retrain did.
pub struct Retrained {
    pub report: Report,
    /// Where the new model was written.
    pub written: PathBuf,
    /// Corrections left out, with why (a photo no longer in the library, a
    /// label this model does not have).
    pub skipped: Vec<String>,
}

/// Gathers the corrections, fits, guards, and writes (or installs) the new model.
pub fn run(job: &LibraryRetrain, progress: &mut dyn FnMut(Progress)) -> Result<Retrained, RetrainError> {
    // One retrain per library at a time (the page's and the command's, or two
    // pages'): they share the feature cache and `current.onnx`.
    let _lock = lock(&job.db)?;
    let base = LoadedModel::load(&job.base)?;
    let store = Store::open_ro(&job.db)?;
    let (corrections, skipped) = corrected_photos(&store, &base.spec.labels)?;
    drop(store);
    if corrections.is_empty() {
        return Err(RetrainError::NoCorrections);
    }
    let retrain = fit::Retrain {
        base: &base,
        train: fit::read_split(&job.data.join("train"), &base.spec.labels)?,
        valid: fit::read_split(&job.data.join("valid"), &base.spec.labels)?,
        corrections,
        settings: job.settings,
        cache_dir: job.cache.clone().unwrap_or_else(|| folder(&job.db).join("features")),
        backend: local(job.backend),
        engine: job.engine.clone(),
    };
    let made = fit::retrain(retrain, progress)?;
    let sha256 = LoadedModel::from_bytes(Path::new("retrained.onnx"), made.bytes.clone())?.sha256;
    let name = format!("{}-{}.onnx", chrono::Utc::now().format("%Y%m%d-%H%M%S"), &sha256[..12]);
    if made.report.refused() {
        let kept = folder(&job.db).join(format!("refused-{name}"));
        write_atomically(&kept, &made.bytes)?;
        let r = &made.report;
        return Err(RetrainError::Refused {
            before: r.valid_right_before,
            after: r.valid_right_after,
            total: r.valid_photos,
            kept,
        });
    }
    let written = match &job.out {
        Some(out) => out.clone(),
        None => folder(&job.db).join(format!("retrained-{name}")),
    };
    write_atomically(&written, &made.bytes)?;
    if job.out.is_none() {
        // Last, and by rename: the daemon never reads a half-written model.
        write_atomically(&current(&job.db), &made.bytes)?;
    }
    Ok(Retrained { report: made.report, written, skipped })
}

/// The live copy of every corrected photo with its label; the corrections
/// that cannot be used, with why.
fn corrected_photos(store: &Store, labels: &[String]) -> Result<(Vec<Example>, Vec<String>), StoreError> {
    let (mut photos, mut skipped) = (Vec::new(), Vec::new());
    for c in corrections::all(store)? {
        let target = match labels.iter().position(|l| *l == c.label) {
            Some(i) => Target::Label(i),
            None if c.label == NONE => Target::None,
            None => {
                skipped.push(format!("{}: '{}' is not a label of this model", c.path, c.label));
                continue;
            }
        };
        match store.live_copy(&c.content_hash)? {
            Some(path) => photos.push(Example { path: path_from_text(&path), target }),
            None => skipped.push(format!("{}: no copy of it is in the library any more", c.path)),
        }
    }
    Ok((photos, skipped))
}

/// The engine a retrain runs the backbone on: never a Triton server, which
/// serves the whole model under its own sha256, not the cut backbone.
pub fn local(backend: crate::engine::BackendChoice) -> crate::engine::BackendChoice {
    match backend {
        crate::engine::BackendChoice::Triton => crate::engine::BackendChoice::Auto,
        other => other,
    }
}

/// Holds `<db>.models/retrain.lock` while it lives.
fn lock(db: &Path) -> Result<std::fs::File, RetrainError> {
    let path = folder(db).join("retrain.lock");
    let write = |source| RetrainError::Write { path: path.clone(), source };
    std::fs::create_dir_all(folder(db)).map_err(write)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(write)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(RetrainError::Busy(path)),
        Err(std::fs::TryLockError::Error(e)) => Err(write(e)),
    }
}

/// Writes `bytes` to `path` through a temporary file of its own beside it
/// and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RetrainError> {
    use std::io::Write;
    let write = |source| RetrainError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(write)?;
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}
