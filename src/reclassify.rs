//! Redoing results with another model: what `reclassify` and the page's
//! retrain do after a model changes.
//!
//! Safe with the daemon running: it reads with its own connection and writes
//! through the same transactional [`Store::commit`], and SQLite's WAL plus
//! the busy timeout serialise the two writers. One present path per content
//! is classified; every path of that content shares the result.

use crate::batch::{Classified, Plan, classify_paths};
use crate::engine::Classifier;
use crate::model::LoadedModel;
use crate::preprocess::DecodeLimits;
use crate::store::{FileMeta, Outcome, PredictionRow, Store, StoreError, path_from_text};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which results to redo.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only results whose model is not the one redoing them.
    pub stale: bool,
    /// Only results currently labelled this.
    pub label: Option<String>,
    /// Only paths matching this glob (a relative pattern matches at any depth).
    pub path: Option<String>,
}

/// What a reclassification did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    pub reclassified: usize,
    /// Files that could not be read now (gone, or failing); the daemon sees to them.
    pub failed: usize,
    /// Files whose bytes are no longer the content recorded (changed while
    /// no daemon watched); left for the daemon to redo.
    pub changed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReclassifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// Redoes the selected results with `model` on `engine`;
/// `progress(done, total)` after each batch written.
pub fn run(
    store: &mut Store,
    model: &LoadedModel,
    engine: &mut dyn Classifier,
    selection: &Selection,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Done, ReclassifyError> {
    store.register_model(model)?;
    let entries: Vec<(String, Vec<FileMeta>)> = selected(store, model, selection)?.into_iter().collect();
    let total = entries.len();
    progress(0, total);
    if entries.is_empty() {
        return Ok(Done::default());
    }
    let backend = engine.backend().as_str().to_string();
    let paths: Vec<PathBuf> = entries.iter().map(|(_, fs)| path_from_text(&fs[0].path)).collect();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let plan = Plan { workers, batch, limits: DecodeLimits::default(), top: 5, hash_contents: true };
    let mut done = Done::default();
    let (mut pending, mut seen) = (Vec::new(), 0usize);
    let mut outcome = None;
    classify_paths(&paths, model, engine, &plan, |i, r| {
        seen += 1;
        match r {
            // The file holds other bytes than the row says: its result
            // belongs to no recorded content.
            Ok(c) if c.content_hash.as_deref() != Some(entries[i].0.as_str()) => {
                done.changed += 1;
                tracing::warn!("{}: changed since it was recorded; left for the daemon", entries[i].1[0].path);
            }
            Ok(Classified { top: top5, .. }) => pending.push(Outcome::Classified {
                prediction: PredictionRow {
                    content_hash: entries[i].0.clone(),
                    model_sha256: model.sha256.clone(),
                    top5,
                    backend: backend.clone(),
                    inference_ms: 0.0,
                },
                files: entries[i].1.clone(),
            }),
            Err(e) => {
                done.failed += 1;
                tracing::warn!("{}: {e}", entries[i].1[0].path);
            }
        }
        // Written as it goes, so a long run shows progress and a crash loses little.
        if pending.len() >= 256 || seen == total {
            if !pending.is_empty() {
                match store.commit(&pending) {
                    Ok(()) => done.reclassified += pending.len(),
                    Err(e) => {
                        outcome.get_or_insert(e);
                    }
                }
                pending.clear();
            }
            progress(seen, total);
        }
    })?;
    match outcome {
        Some(e) => Err(e.into()),
        None => Ok(done),
    }
}

/// The selected results, by content.
fn selected(
    store: &Store,
    model: &LoadedModel,
    selection: &Selection,
) -> Result<BTreeMap<String, Vec<FileMeta>>, ReclassifyError> {
    let mut sql =
        String::from("SELECT content_hash, path, size, mtime_ns, model_sha256 FROM results WHERE status = 'ok'");
    let mut args: Vec<String> = Vec::new();
    if selection.stale {
        sql.push_str(" AND model_sha256 IS NOT ?");
        args.push(model.sha256.clone());
    }
    if let Some(l) = &selection.label {
        sql.push_str(" AND label = ?");
        args.push(l.clone());
    }
    if let Some(g) = &selection.path {
        sql.push_str(" AND (path GLOB ? OR path GLOB '*/' || ?)");
        args.push(g.clone());
        args.push(g.clone());
    }
    let mut by_hash: BTreeMap<String, Vec<FileMeta>> = BTreeMap::new();
    let mut stmt = store.conn().prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
        Ok((r.get::<_, String>(0)?, FileMeta { path: r.get(1)?, size: r.get(2)?, mtime_ns: r.get(3)? }))
    })?;
    for row in rows {
        let (h, f) = row?;
        by_hash.entry(h).or_default().push(f);
    }
    Ok(by_hash)
}
