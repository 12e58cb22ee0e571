//! Everything `watch` can be told, as the daemon receives it.

use crate::engine::{BackendChoice, EngineOptions};
use crate::preprocess::DecodeLimits;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub model: PathBuf,
    /// The library's retrained model (`<db>.models/current.onnx`), used
    /// instead of `model` whenever it exists; `None` when `--model` was given.
    pub retrained: Option<PathBuf>,
    pub backend: BackendChoice,
    pub engine: EngineOptions,
    pub settle: Duration,
    /// Poll instead of relying on events (network shares).
    pub poll: Option<Duration>,
    /// Full reconcile scan every so often, as a safety net.
    pub reconcile: Duration,
    pub batch_size: Option<usize>,
    pub batch_wait: Duration,
    pub workers: usize,
    pub follow_symlinks: bool,
    pub limits: DecodeLimits,
    /// Bound on candidates held by the intake (pending settle + ready).
    pub queue: usize,
    /// Serve `/metrics` and `/healthz` here (off when `None`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Hard-link (or copy) each classified photo into `DIR/<label>/`.
    pub organize: Option<PathBuf>,
}

impl WatchConfig {
    /// The model file to run now: the library's retrained one once there is one.
    pub(crate) fn model_file(&self) -> PathBuf {
        match &self.retrained {
            Some(p) if p.is_file() => p.clone(),
            _ => self.model.clone(),
        }
    }

    /// The intake's bound, never so small that a burst cannot flow.
    pub(crate) fn queue_bound(&self) -> usize {
        self.queue.max(16)
    }

    /// Decode errors of a file modified less than this ago are retried later
    /// instead of recorded: it may still be being written.
    pub(crate) fn young(&self) -> Duration {
        (self.settle * 5).max(Duration::from_secs(5))
    }
}
