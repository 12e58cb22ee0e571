//! `instrument-detector reclassify`: redo results made by other models.
//!
//! Safe with the daemon running: it reads with its own connection and writes
//! through the same transactional `Store::commit`, and SQLite's WAL plus the
//! busy timeout serialise the two writers.

use crate::ModelArgs;
use anyhow::{Context, Result};
use instrument_detector::batch::{Classified, Plan, classify_paths};
use instrument_detector::engine;
use instrument_detector::model::LoadedModel;
use instrument_detector::preprocess::DecodeLimits;
use instrument_detector::store::{FileMeta, Outcome, PredictionRow, Store, path_from_text};
use std::collections::BTreeMap;
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
    store.register_model(&model)?;
    // One present path per content is enough to classify it; all its paths share the result.
    let mut sql =
        String::from("SELECT content_hash, path, size, mtime_ns, model_sha256 FROM results WHERE status = 'ok'");
    let mut args: Vec<String> = Vec::new();
    if a.stale {
        sql.push_str(" AND model_sha256 IS NOT ?");
        args.push(model.sha256.clone());
    }
    if let Some(l) = &a.label {
        sql.push_str(" AND label = ?");
        args.push(l.clone());
    }
    if let Some(g) = &a.path {
        sql.push_str(" AND (path GLOB ? OR path GLOB '*/' || ?)");
        args.push(g.clone());
        args.push(g.clone());
    }
    let mut by_hash: BTreeMap<String, Vec<FileMeta>> = BTreeMap::new();
    {
        let mut stmt = store.conn().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok((r.get::<_, String>(0)?, FileMeta { path: r.get(1)?, size: r.get(2)?, mtime_ns: r.get(3)? }))
        })?;
        for row in rows {
            let (h, f) = row?;
            by_hash.entry(h).or_default().push(f);
        }
    }
    if by_hash.is_empty() {
        eprintln!("nothing to reclassify");
        return Ok(ExitCode::SUCCESS);
    }
    let (mut engine, _) = engine::open(&model, a.model.backend, &a.model.engine_options())?;
    let backend = engine.backend().as_str().to_string();
    let entries: Vec<(String, Vec<FileMeta>)> = by_hash.into_iter().collect();
    let paths: Vec<PathBuf> = entries.iter().map(|(_, fs)| path_from_text(&fs[0].path)).collect();
    let batch = a.model.batch_size.unwrap_or_else(|| engine.preferred_batch());
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut outcomes = Vec::new();
    let (mut failed, mut changed) = (0usize, 0usize);
    let plan = Plan { workers, batch, limits: DecodeLimits::default(), top: 5, hash_contents: true };
    classify_paths(&paths, &model, engine.as_mut(), &plan, |i, r| match r {
        // The file holds other bytes than the row says (changed while no
        // daemon watched): its result belongs to no recorded content.
        Ok(c) if c.content_hash.as_deref() != Some(entries[i].0.as_str()) => {
            changed += 1;
            tracing::warn!("{}: changed since it was recorded; left for the daemon", entries[i].1[0].path);
        }
        // Past the guard above, the bytes classified are the row's content.
        Ok(Classified { top: top5, .. }) => outcomes.push(Outcome::Classified {
            prediction: PredictionRow {
                content_hash: entries[i].0.clone(),
                model_sha256: model.sha256.clone(),
                top5,
                backend: backend.clone(),
                inference_ms: 0.0,
            },
            files: entries[i].1.clone(),
        }),
        // The file changed or vanished since; the daemon will see to it.
        Err(e) => {
            failed += 1;
            tracing::warn!("{}: {e}", entries[i].1[0].path);
        }
    })?;
    for chunk in outcomes.chunks(256) {
        store.commit(chunk)?;
    }
    eprintln!("reclassified {} contents with {} ({} skipped)", outcomes.len(), model.name(), failed + changed);
    if changed > 0 {
        eprintln!(
            "{changed} of the skipped changed since they were recorded: the daemon redoes them when it next runs"
        );
    }
    Ok(ExitCode::SUCCESS)
}
