//! One-shot classification of a list of files: parallel decode, batched
//! inference. Used by `classify`, `evaluate` and the benchmarks; the daemon's
//! pipeline does the same work with its own queues.

use crate::engine::{Classifier, EngineError};
use crate::model::LoadedModel;
use crate::predict::top_k;
use crate::preprocess::{DecodeLimits, ImageError, preprocess_bytes};
use crate::store::{FailureKind, Scored};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Result for one input file.
pub type FileResult = Result<Vec<Scored>, FileError>;

/// Why one file got no prediction.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl FileError {
    /// The kind the daemon would record for this file.
    pub fn kind(&self) -> FailureKind {
        match self {
            FileError::Read(_) => FailureKind::Unreadable,
            FileError::Image(e) => e.kind().into(),
        }
    }
}

/// A path given to `classify`, `evaluate` or `quantize` that cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct ExpandError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// How one run of [`classify_paths`] spends the machine: decode threads, rows
/// per engine call, the decoder's limits, and how many labels each file keeps.
pub struct Plan {
    pub workers: usize,
    pub batch: usize,
    pub limits: DecodeLimits,
    pub top: usize,
}

/// Classifies `paths`, calling `on_result(index, result)` as results arrive (not
/// in input order). Files that cannot be read or decoded get an `Err` with a
/// reason; an engine failure aborts.
pub fn classify_paths(
    paths: &[PathBuf],
    model: &LoadedModel,
    engine: &mut dyn Classifier,
    plan: &Plan,
    mut on_result: impl FnMut(usize, FileResult),
) -> Result<(), EngineError> {
    let Plan { workers, batch, ref limits, top: k } = *plan;
    let spec = &model.spec.preprocess;
    let per = spec.tensor_len();
    let size = spec.size as usize;
    let next = AtomicUsize::new(0);
    let batch = batch.max(1);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Vec<f32>, FileError>)>(batch * 2);
        for _ in 0..workers.max(1) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let result = std::fs::read(path).map_err(FileError::Read).and_then(|bytes| {
                        let mut t = vec![0.0; per];
                        preprocess_bytes(&bytes, spec, limits, &mut t).map(|_| t).map_err(FileError::from)
                    });
                    if tx.send((i, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending: Vec<(usize, Vec<f32>)> = Vec::with_capacity(batch);
        let mut run = |pending: &mut Vec<(usize, Vec<f32>)>,
                       on_result: &mut dyn FnMut(usize, FileResult)|
         -> Result<(), EngineError> {
            if pending.is_empty() {
                return Ok(());
            }
            let n = pending.len();
            let mut input = ndarray::Array4::<f32>::zeros((n, 3, size, size));
            let flat = input.as_slice_mut().expect("fresh arrays are contiguous");
            for (j, (_, t)) in pending.iter().enumerate() {
                flat[j * per..(j + 1) * per].copy_from_slice(t);
            }
            let out = engine.run(input.view())?;
            for (j, (i, _)) in pending.drain(..).enumerate() {
                let row: Vec<f32> = out.row(j).to_vec();
                on_result(i, Ok(top_k(&model.spec, &row, k)));
            }
            Ok(())
        };
        loop {
            // Take what is ready; run a batch when it is full or nothing more is ready.
            match rx.try_recv() {
                Ok((i, Ok(t))) => {
                    pending.push((i, t));
                    if pending.len() >= batch {
                        run(&mut pending, &mut on_result)?;
                    }
                }
                Ok((i, Err(e))) => on_result(i, Err(e)),
                Err(mpsc::TryRecvError::Empty) => {
                    if !pending.is_empty() {
                        run(&mut pending, &mut on_result)?;
                    }
                    match rx.recv() {
                        Ok((i, Ok(t))) => pending.push((i, t)),
                        Ok((i, Err(e))) => on_result(i, Err(e)),
                        Err(_) => break,
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        }
        run(&mut pending, &mut on_result)
    })
}

/// Files under the given paths (folders recursively), hidden and temporary
/// names skipped, sorted for stable output.
pub fn expand_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ExpandError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| ExpandError { path: input.clone(), source })?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(input)
                .into_iter()
                .filter_entry(|e| e.depth() == 0 || !crate::daemon::scan::is_ignored_name(e.file_name()))
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}
