//! One-shot classification of a list of files: parallel decode, batched
//! inference. Used by `classify`, `evaluate` and the benchmarks; the daemon's
//! pipeline does the same work with its own queues.

use crate::engine::{Classifier, EngineError};
use crate::model::LoadedModel;
use crate::predict::top_k;
use crate::preprocess::{DecodeLimits, ImageError, preprocess_bytes};
use crate::store::{FailureKind, Scored};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Result for one input file.
pub type FileResult = Result<Classified, FileError>;

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
    /// Hash each file's bytes (for a caller that must know which content it
    /// classified); off, no per-image hashing is done.
    pub hash_contents: bool,
}

/// One file's answer: its top labels, and (with [`Plan::hash_contents`]) the
/// BLAKE3 hash of the bytes they were computed from, so a caller can tell
/// whether the file it meant was the file it got.
#[derive(Debug, Clone)]
pub struct Classified {
    pub top: Vec<Scored>,
    pub content_hash: Option<String>,
}

/// A decoded file waiting for its batch.
struct Decoded {
    index: usize,
    tensor: Vec<f32>,
    content_hash: Option<String>,
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
    let batch = plan.batch.max(1);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Decoded, FileError>)>(batch * 2);
        for _ in 0..plan.workers.max(1) {
            let (tx, next) = (tx.clone(), &next);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    if tx.send((i, decode_file(i, path, model, plan))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending: Vec<Decoded> = Vec::with_capacity(batch);
        let mut run = |pending: &mut Vec<Decoded>, on_result: &mut dyn FnMut(usize, FileResult)| {
            run_batch(pending, model, engine, plan.top, on_result)
        };
        // Take what is ready; run a batch when it is full or nothing more is ready.
        loop {
            let received = match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    run(&mut pending, &mut on_result)?;
                    match rx.recv() {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                }
            };
            match received {
                (_, Ok(d)) => pending.push(d),
                (i, Err(e)) => on_result(i, Err(e)),
            }
            if pending.len() >= batch {
                run(&mut pending, &mut on_result)?;
            }
        }
        run(&mut pending, &mut on_result)
    })
}

/// Reads, hashes and preprocesses one file.
fn decode_file(index: usize, path: &Path, model: &LoadedModel, plan: &Plan) -> Result<Decoded, FileError> {
    let bytes = std::fs::read(path).map_err(FileError::Read)?;
    let spec = &model.spec.preprocess;
    let mut tensor = vec![0.0; spec.tensor_len()];
    preprocess_bytes(&bytes, spec, &plan.limits, &mut tensor)?;
    let content_hash = plan.hash_contents.then(|| blake3::hash(&bytes).to_hex().to_string());
    Ok(Decoded { index, tensor, content_hash })
}

/// Runs the engine on everything pending (if anything) and reports each row.
fn run_batch(
    pending: &mut Vec<Decoded>,
    model: &LoadedModel,
    engine: &mut dyn Classifier,
    top: usize,
    on_result: &mut dyn FnMut(usize, FileResult),
) -> Result<(), EngineError> {
    if pending.is_empty() {
        return Ok(());
    }
    let (size, per) = (model.spec.preprocess.size as usize, model.spec.preprocess.tensor_len());
    let mut input = ndarray::Array4::<f32>::zeros((pending.len(), 3, size, size));
    let flat = input.as_slice_mut().expect("fresh arrays are contiguous");
    for (j, d) in pending.iter().enumerate() {
        flat[j * per..(j + 1) * per].copy_from_slice(&d.tensor);
    }
    // The engine checks the output's shape: one row per input.
    let out = engine.run(input.view())?;
    for (j, d) in pending.drain(..).enumerate() {
        let top = top_k(&model.spec, &out.row(j).to_vec(), top);
        on_result(d.index, Ok(Classified { top, content_hash: d.content_hash }));
    }
    Ok(())
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
