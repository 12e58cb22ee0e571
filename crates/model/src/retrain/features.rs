//! The backbone's features of a list of photos: from the cache where it has
//! them, else decoded and preprocessed exactly as the daemon does (the same
//! [`preprocess_bytes`]) and run through the backbone on the chosen engine.

use super::cache::{FeatureCache, Key};
use crate::engine::Classifier;
use crate::preprocess::{DecodeLimits, PreprocessSpec, preprocess_bytes};
use ndarray::Array4;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Photos decoded and run together.
const CHUNK: usize = 16;

/// The features of each photo, or why it could not be read.
pub(crate) type Features = Vec<Result<Vec<f32>, String>>;

/// How many photos came from the cache and how many were computed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) cached: usize,
    pub(crate) computed: usize,
}

/// One photo read and, where the cache lacks it, preprocessed.
enum Read {
    Cached(Vec<f32>),
    Tensor(Key, Vec<f32>),
    Failed(String),
}

/// Features of every path in order; `on_done(done, total)` after each chunk.
pub(crate) fn extract(
    paths: &[PathBuf],
    engine: &mut dyn Classifier,
    cache: &mut FeatureCache,
    spec: &PreprocessSpec,
    on_done: &mut dyn FnMut(usize, usize),
) -> Result<(Features, Tally), crate::engine::EngineError> {
    let mut out = Vec::with_capacity(paths.len());
    let mut tally = Tally::default();
    for (i, chunk) in paths.chunks(CHUNK).enumerate() {
        let reads = read_chunk(chunk, cache, spec);
        let tensors: Vec<&Vec<f32>> =
            reads.iter().filter_map(|r| if let Read::Tensor(_, t) = r { Some(t) } else { None }).collect();
        let mut computed = Vec::new();
        if !tensors.is_empty() {
            let side = spec.size as usize;
            let flat: Vec<f32> = tensors.iter().flat_map(|t| t.iter().copied()).collect();
            let batch = Array4::from_shape_vec((tensors.len(), 3, side, side), flat).expect("one tensor per photo");
            let rows = engine.run(batch.view())?;
            computed = rows.outer_iter().map(|r| r.to_vec()).collect();
        }
        let mut computed = computed.into_iter();
        for read in reads {
            out.push(match read {
                Read::Cached(f) => {
                    tally.cached += 1;
                    Ok(f)
                }
                Read::Tensor(key, _) => {
                    let f = computed.next().expect("one row per tensor");
                    cache.put(key, f.clone()).map_err(|e| engine_io(engine.backend(), e))?;
                    tally.computed += 1;
                    Ok(f)
                }
                Read::Failed(why) => Err(why),
            });
        }
        cache.flush().map_err(|e| engine_io(engine.backend(), e))?;
        on_done((i * CHUNK + chunk.len()).min(paths.len()), paths.len());
    }
    Ok((out, tally))
}

/// A cache that cannot be written stops the retrain: said as the engine's
/// error so the caller has one kind to report.
fn engine_io(backend: crate::engine::Backend, e: std::io::Error) -> crate::engine::EngineError {
    crate::engine::EngineError::Inference { backend, reason: format!("cannot write the feature cache: {e}") }
}

/// Reads a chunk on one thread per photo (a chunk is small; decoding is the
/// slow part and it runs beside the engine's own threads only between batches).
fn read_chunk(chunk: &[PathBuf], cache: &FeatureCache, spec: &PreprocessSpec) -> Vec<Read> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(chunk.len()).max(1);
    let per = chunk.len().div_ceil(workers);
    std::thread::scope(|s| {
        let handles: Vec<_> = chunk
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|p| read_one(p, cache, spec)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a reader thread panicked")).collect()
    })
}

fn read_one(path: &PathBuf, cache: &FeatureCache, spec: &PreprocessSpec) -> Read {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Read::Failed(format!("{}: {e}", path.display())),
    };
    let key: Key = Sha256::digest(&bytes).into();
    if let Some(f) = cache.get(&key) {
        return Read::Cached(f.to_vec());
    }
    let mut tensor = vec![0.0; spec.tensor_len()];
    match preprocess_bytes(&bytes, spec, &DecodeLimits::default(), &mut tensor) {
        Ok(()) => Read::Tensor(key, tensor),
        Err(e) => Read::Failed(format!("{}: {e}", path.display())),
    }
}
