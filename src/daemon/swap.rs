//! Hot model swap: a new model file is loaded, validated and opened off the
//! pipeline; only one that passes all of that reaches the batchers, which
//! switch between batches. A broken file is refused and the old model stays.

use super::Shared;
use super::config::WatchConfig;
use crate::engine::{self, Backend, Classifier};
use crate::model::LoadedModel;
use crate::store::Store;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A validated replacement model and its engine, handed to one batcher.
pub(crate) type ModelSwap = (Arc<LoadedModel>, Box<dyn Classifier>);

/// The model in use and its backend, as workers (for preprocessing) and the
/// reporters see it. The batchers set it when they switch.
pub(crate) struct ModelSlot(RwLock<(Arc<LoadedModel>, Backend)>);

impl ModelSlot {
    pub(crate) fn new(model: Arc<LoadedModel>, backend: Backend) -> Self {
        ModelSlot(RwLock::new((model, backend)))
    }

    pub(crate) fn current(&self) -> Arc<LoadedModel> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub(crate) fn backend(&self) -> Backend {
        self.0.read().unwrap_or_else(|e| e.into_inner()).1
    }

    pub(crate) fn set(&self, model: Arc<LoadedModel>, backend: Backend) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = (model, backend);
    }
}

/// Watches the model file (every 2 s) and SIGHUP; sends each batcher its
/// piece of a validated new model. Runs until aborted at shutdown.
pub(crate) async fn watch_model(
    cfg: WatchConfig,
    shared: Arc<Shared>,
    swaps: Vec<crossbeam_channel::Sender<ModelSwap>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.len(), m.modified()?))).ok();
    let mut last = (cfg.model_file(), stamp(&cfg.model_file()));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        // The file in use changes when a library gets its first retrained model.
        let file = cfg.model_file();
        let now = (file.clone(), stamp(&file));
        if !forced && now == last {
            continue;
        }
        last = now;
        let (cfg, current, batchers) = (cfg.clone(), shared.model.current().sha256.clone(), swaps.len());
        match tokio::task::spawn_blocking(move || load_replacement(&cfg, &current, batchers)).await {
            Ok(Ok(Some((model, pieces)))) => {
                tracing::info!("new model {} validated; switching after the current batch", model.sha256);
                for (tx, piece) in swaps.iter().zip(pieces) {
                    if tx.send((model.clone(), piece)).is_err() {
                        return;
                    }
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("new model refused, keeping the current one: {e:#}"),
            Err(e) => tracing::error!("model reload failed: {e}"),
        }
    }
}

/// A new model and one engine piece per batcher.
type Replacement = (Arc<LoadedModel>, Vec<Box<dyn Classifier>>);

/// Loads and opens the model file; `None` if it is the model in use.
fn load_replacement(cfg: &WatchConfig, current: &str, batchers: usize) -> anyhow::Result<Option<Replacement>> {
    let m = LoadedModel::load(&cfg.model_file())?;
    if m.sha256 == current {
        return Ok(None);
    }
    // One open gives as many pieces as the engine splits into (ORT CPU: one
    // per core); should the new model land on a backend that splits into
    // fewer, it is opened again.
    let mut pieces = Vec::with_capacity(batchers);
    while pieces.len() < batchers {
        let (e, _) = engine::open(&m, cfg.backend, &cfg.engine)?;
        pieces.extend(e.split());
    }
    pieces.truncate(batchers);
    Store::open_rw(&cfg.db)?.register_model(&m)?;
    Ok(Some((Arc::new(m), pieces)))
}
