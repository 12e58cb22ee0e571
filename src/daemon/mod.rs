//! The daemon: watch a folder, classify every photo exactly once, store it.
//!
//! ```text
//! watcher (notify) ─┐
//! scan (walk+rows) ─┼─▶ intake ─Work─▶ worker ×N ─Job─▶ batcher ×M ─Item─▶ writer ─▶ SQLite
//! worker/writer ────┘    (settle)       (decode)         (engine)           (ledger)   └▶ organize
//! ```
//!
//! One module per stage; this file only opens the resources, wires the
//! stages together ([`run`]) and stops them ([`Pipeline::shutdown`]). The
//! intake runs on tokio (events, timers, signals); decoding, inference and
//! SQLite run on plain threads, connected by bounded channels, so a burst of
//! any size costs memory proportional to the queue sizes, never to the burst.
//! The exactly-once bookkeeping is the [`ledger::Ledger`].
//!
//! Shutdown (SIGINT/SIGTERM, or a stage that panicked): the intake stops, the
//! files not yet started are left for the next start, the batches already
//! decoded are classified and committed, and the process exits (0 after a
//! signal, non-zero after a failure). A second signal exits at once. Nothing
//! is lost either way: a file without a committed row is found again by the
//! next start-up scan.

mod batcher;
pub mod config;
mod intake;
mod ledger;
pub mod metrics;
mod organize;
pub(crate) mod scan;
mod settle;
mod supervise;
mod swap;
mod tensors;
mod walk;
mod watcher;
mod worker;
mod writer;

pub use config::WatchConfig;
pub use watcher::INOTIFY_HINT;

use crate::engine::{self, Classifier};
use crate::model::LoadedModel;
use crate::store::Store;
use anyhow::{Context, bail};
use intake::{Intake, IntakeInbox, IntakeMsg};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use supervise::Health;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the stages share. Each field is one concept with its own
/// synchronisation; no lock is held while taking another.
pub(crate) struct Shared {
    pub(crate) ledger: ledger::Ledger,
    pub(crate) stats: metrics::Stats,
    pub(crate) model: swap::ModelSlot,
    pub(crate) tensors: tensors::TensorPool,
    pub(crate) intake: Arc<IntakeInbox>,
    /// Workers reading or decoding right now: a batcher waits for stragglers
    /// only while this is above zero.
    pub(crate) decoding: AtomicUsize,
    pub(crate) health: Arc<Health>,
}

impl Shared {
    /// Gives up `path`'s flight (and its content claim, with every path that
    /// waited on it) and sends all of them back to settle again.
    pub(crate) fn send_back(&self, path: &Path, hash: Option<&str>) {
        for p in self.ledger.abandon(path, hash) {
            self.intake.requeue(&p);
        }
    }
}

/// Runs the daemon until `cancel` fires (a signal) or a stage fails.
pub async fn run(cfg: WatchConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let opened = Opened::open(&cfg)?;
    let (pipeline, intake, intake_rx) = Pipeline::start(&cfg, opened, cancel)?;
    intake.run(intake_rx).await;
    pipeline.shutdown().await
}

/// Resources opened before any stage starts, so that every mistake in the
/// command line is reported before anything runs.
struct Opened {
    dir: PathBuf,
    model: Arc<LoadedModel>,
    engine: Box<dyn Classifier>,
    store: Store,
    /// Held until the process exits: another daemon on the same database or folder is refused.
    locks: (InstanceLock, Option<InstanceLock>),
}

impl Opened {
    fn open(cfg: &WatchConfig) -> anyhow::Result<Opened> {
        let dir = std::fs::canonicalize(&cfg.dir).with_context(|| {
            format!("cannot watch {}: the folder does not exist or cannot be read", cfg.dir.display())
        })?;
        if !dir.is_dir() {
            bail!("cannot watch {}: not a folder", dir.display());
        }
        let model = Arc::new(LoadedModel::load(&cfg.model_file())?);
        // Each step down a backend was already logged once by `engine::open`
        // (at info for the expected "no GPU here", at warn for anything else).
        let (engine, _fallbacks) = engine::open(&model, cfg.backend, &cfg.engine)
            .with_context(|| format!("cannot run model {} on backend {:?}", cfg.model_file().display(), cfg.backend))?;
        if let Some(parent) = cfg.db.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
        }
        let db_lock =
            InstanceLock::take(&sibling_with_suffix(&cfg.db, ".lock"), &format!("database {}", cfg.db.display()))
                .map_err(LockError::into_inner)?;
        let dir_lock =
            match InstanceLock::take(&dir.join(".instrument-detector.lock"), &format!("folder {}", dir.display())) {
                Ok(l) => Some(l),
                Err(LockError::Held(e)) => return Err(e),
                Err(LockError::Io(e)) => {
                    tracing::warn!("{e:#}; continuing without a folder lock");
                    None
                }
            };
        let store = Store::open_rw(&cfg.db).with_context(|| format!("cannot use database {}", cfg.db.display()))?;
        store.register_model(&model)?;
        Ok(Opened { dir, model, engine, store, locks: (db_lock, dir_lock) })
    }
}

/// The running stages, stopped in the order their fields are listed in
/// [`Pipeline::shutdown`]. Who holds which queue's sender decides when each
/// stage stops, so it is written on each queue:
/// - work (intake → workers): only the intake; it closes when the intake ends;
/// - jobs (workers → batchers): only the workers; closes when the last ends;
/// - writes (→ writer): workers, batchers, the intake and a running scan;
///   the writer ends once all are gone and its held results are due.
struct Pipeline {
    shared: Arc<Shared>,
    /// The instance locks, released last.
    locks: (InstanceLock, Option<InstanceLock>),
    db: PathBuf,
    /// File events; stopped first so no more arrive.
    watches: Option<Arc<watcher::Watches>>,
    /// The model watcher, the status file and `/metrics`: aborted, not joined.
    reporters: Vec<tokio::task::JoinHandle<()>>,
    /// The reporters' view of the queues (receivers: they keep nothing open).
    monitor: Arc<metrics::Monitor>,
    workers: Vec<JoinHandle<()>>,
    batchers: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
}

impl Pipeline {
    /// Spawns every stage but the intake, which the caller runs.
    fn start(
        cfg: &WatchConfig,
        opened: Opened,
        cancel: CancellationToken,
    ) -> anyhow::Result<(Pipeline, Intake, mpsc::Receiver<IntakeMsg>)> {
        let Opened { dir, model, engine, store, locks } = opened;
        let max_batch = cfg.batch_size.unwrap_or_else(|| engine.preferred_batch()).max(1);
        let workers = cfg.workers.max(1);
        log_start(cfg, &dir, &model, engine.backend(), max_batch);

        let (intake_tx, intake_rx) = mpsc::channel::<IntakeMsg>(cfg.queue_bound());
        let health = Arc::new(Health::new(cancel.clone()));
        let shared = Arc::new(Shared {
            ledger: ledger::Ledger::default(),
            stats: metrics::Stats::default(),
            model: swap::ModelSlot::new(model.clone(), engine.backend()),
            // As many as can be decoded and not yet batched at once, plus a batch.
            tensors: tensors::TensorPool::new(max_batch * 3 + workers),
            intake: Arc::new(IntakeInbox::new(intake_tx)),
            decoding: AtomicUsize::new(0),
            health: health.clone(),
        });
        // Paths are small: the work queue holds as many as the intake may, so a
        // burst never waits on the intake's next wake-up to reach the workers.
        // Memory stays bounded by the decoded-tensor queue, not by this one.
        let (work_tx, work_rx) = crossbeam_channel::bounded::<worker::Work>(cfg.queue_bound());
        let (job_tx, job_rx) = crossbeam_channel::bounded::<batcher::Job>(max_batch * 2);
        let (write_tx, write_rx) = crossbeam_channel::bounded::<Vec<writer::Item>>(64);
        let monitor = Arc::new(metrics::Monitor {
            shared: shared.clone(),
            started_at: crate::store::now(),
            folder: dir.clone(),
            db: cfg.db.clone(),
            queues: metrics::Queues { workers: work_rx.clone(), batcher: job_rx.clone(), writer: write_rx.clone() },
        });

        let organizer = cfg.organize.clone().map(organize::Organizer::new);
        let writer = supervise::spawn_thread("writer".into(), health.clone(), {
            let shared = shared.clone();
            move || writer::run(shared, store, write_rx, organizer)
        })?;
        let (batchers, swap_txs) = spawn_batchers(cfg, &shared, &model, engine, max_batch, &job_rx, &write_tx)?;
        drop(job_rx);
        let worker = Arc::new(worker::Worker {
            shared: shared.clone(),
            limits: cfg.limits,
            follow_symlinks: cfg.follow_symlinks,
            db_path: cfg.db.clone(),
            young: cfg.young(),
        });
        let mut worker_handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (w, rx, jobs, writes) = (worker.clone(), work_rx.clone(), job_tx.clone(), write_tx.clone());
            worker_handles.push(supervise::spawn_thread(format!("worker-{i}"), health.clone(), move || {
                worker::run(w, rx, jobs, writes)
            })?);
        }
        drop((work_rx, job_tx));

        let mut reporters = vec![
            supervise::spawn_task(
                "model swap",
                health.clone(),
                swap::watch_model(cfg.clone(), shared.clone(), swap_txs),
            ),
            supervise::spawn_task("status file", health.clone(), metrics::write_status_forever(monitor.clone())),
        ];
        if let Some(addr) = cfg.metrics {
            // Bind now so a bad address fails at start-up, not later.
            drop(std::net::TcpListener::bind(addr).with_context(|| format!("cannot serve metrics on {addr}"))?);
            let monitor = monitor.clone();
            reporters.push(supervise::spawn_task("metrics", health.clone(), async move {
                if let Err(e) = metrics::serve(addr, monitor).await {
                    tracing::error!("metrics server stopped: {e}");
                }
            }));
        }

        let (watches, poll) = start_events(cfg, &dir, &shared);
        let intake = Intake {
            root: dir,
            cfg: cfg.clone(),
            shared: shared.clone(),
            work_tx,
            write_tx,
            poll,
            watches: watches.clone(),
            stop: cancel,
        };
        let pipeline = Pipeline {
            shared,
            locks,
            db: cfg.db.clone(),
            watches,
            reporters,
            monitor,
            workers: worker_handles,
            batchers,
            writer,
        };
        Ok((pipeline, intake, intake_rx))
    }

    /// Stops the stages once the intake has returned (the work queue is then
    /// closed): events; queued paths no worker has started (left for the next
    /// start); the reporters (first, so that their queue views cannot keep a
    /// failed stage's queue alive); the workers; the batchers, which classify
    /// what was decoded; and the writer, which commits it. Returns the first
    /// stage failure, if any.
    async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("stopping: finishing the batches in flight");
        let Pipeline { shared, locks, db, watches, reporters, monitor, workers, batchers, writer } = self;
        if let Some(w) = watches {
            w.stop();
        }
        while let Ok(w) = monitor.queues.workers.try_recv() {
            shared.ledger.release_path(&w.path);
        }
        for r in &reporters {
            r.abort();
        }
        drop(monitor);
        let _ = std::fs::remove_file(metrics::status_path(&db));
        tokio::task::spawn_blocking(move || {
            // A stage that panicked has already been recorded by its supervisor.
            for h in workers.into_iter().chain(batchers).chain([writer]) {
                let _ = h.join();
            }
        })
        .await?;
        let s = &shared.stats;
        if let Some(failure) = shared.health.failure() {
            bail!(
                "{failure}; the daemon stopped (every committed result is kept; the rest is redone at the next start)"
            );
        }
        tracing::info!(
            classified = s.classified.load(Ordering::Relaxed),
            recorded = s.recorded.load(Ordering::Relaxed) + s.known.load(Ordering::Relaxed),
            failed = s.failed.load(Ordering::Relaxed),
            "stopped cleanly"
        );
        drop(locks);
        Ok(())
    }
}

fn log_start(cfg: &WatchConfig, dir: &Path, model: &LoadedModel, backend: engine::Backend, max_batch: usize) {
    tracing::info!(
        model = %model.path.display(),
        sha256 = &model.sha256[..12],
        labels = model.spec.labels.len(),
        input = model.spec.preprocess.size,
        backend = %backend,
        folder = %dir.display(),
        db = %cfg.db.display(),
        batch = max_batch,
        workers = cfg.workers,
        "instrument-detector watching"
    );
    log_native_decoders();
}

/// Says once, at start-up, which formats a missing system library turns
/// off; each file of such a format still gets an `unsupported` row that
/// names the format and the reason.
fn log_native_decoders() {
    for (formats, available) in instrument_model::formats::native_decoders() {
        match available {
            Ok(version) => tracing::info!("{formats}: read with {version}"),
            Err(why) => tracing::warn!("{formats} are turned off: {why}"),
        }
    }
}

/// One batcher per independent piece of the engine (ORT CPU: one per core),
/// all taking from the same queue of tensors. The batch size is shared between
/// them, so a round of inference still covers `max_batch` images. Returns the
/// threads and, for each, the channel a new model reaches it by.
type Batchers = (Vec<JoinHandle<()>>, Vec<crossbeam_channel::Sender<swap::ModelSwap>>);

fn spawn_batchers(
    cfg: &WatchConfig,
    shared: &Arc<Shared>,
    model: &Arc<LoadedModel>,
    engine: Box<dyn Classifier>,
    max_batch: usize,
    jobs: &crossbeam_channel::Receiver<batcher::Job>,
    writes: &crossbeam_channel::Sender<Vec<writer::Item>>,
) -> anyhow::Result<Batchers> {
    let pieces = engine.split();
    let per_batcher = max_batch.div_ceil(pieces.len()).max(1);
    let (mut handles, mut swaps) = (Vec::new(), Vec::new());
    for (i, piece) in pieces.into_iter().enumerate() {
        let (swap_tx, swap_rx) = crossbeam_channel::bounded::<swap::ModelSwap>(1);
        swaps.push(swap_tx);
        let b = batcher::Batcher {
            shared: shared.clone(),
            model: model.clone(),
            engine: piece,
            max_batch: per_batcher,
            max_wait: cfg.batch_wait,
            spare: Vec::new(),
        };
        let (jobs, writes) = (jobs.clone(), writes.clone());
        handles.push(supervise::spawn_thread(format!("batcher-{i}"), shared.health.clone(), move || {
            batcher::run(b, jobs, writes, swap_rx)
        })?);
    }
    Ok((handles, swaps))
}

/// The notify watcher, unless `--poll` was asked for or it cannot start; then
/// the intake polls (at `--poll`, or every [`intake::POLL_FALLBACK`]).
fn start_events(
    cfg: &WatchConfig,
    dir: &Path,
    shared: &Shared,
) -> (Option<Arc<watcher::Watches>>, Option<std::time::Duration>) {
    if cfg.poll.is_some() {
        return (None, cfg.poll);
    }
    match watcher::Watches::start(dir, shared.intake.clone()) {
        Ok(w) => (Some(Arc::new(w)), None),
        Err(e) => {
            tracing::error!("{e}; falling back to polling every {}s", intake::POLL_FALLBACK.as_secs());
            (None, Some(intake::POLL_FALLBACK))
        }
    }
}

/// Holds an exclusive lock file for the process lifetime.
struct InstanceLock {
    _file: std::fs::File,
}

enum LockError {
    /// Another daemon holds it.
    Held(anyhow::Error),
    /// The lock file cannot be made (a read-only folder, say).
    Io(anyhow::Error),
}

impl LockError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            LockError::Held(e) | LockError::Io(e) => e,
        }
    }
}

impl InstanceLock {
    fn take(path: &Path, what: &str) -> Result<InstanceLock, LockError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot create lock file {}", path.display()))
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => Ok(InstanceLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held(anyhow::anyhow!(
                "another instrument-detector daemon is already using {what} (lock file {} is held); stop it first",
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(LockError::Io(anyhow::Error::new(e).context(format!("cannot lock {}", path.display()))))
            }
        }
    }
}

fn sibling_with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}
