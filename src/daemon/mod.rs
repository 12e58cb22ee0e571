//! The daemon: watch a folder, classify every photo exactly once, store it.
//!
//! ```text
//! notify events ─┐
//! start-up scan ─┼─▶ intake (settle rule) ─▶ workers ─▶ batcher (engine) ─▶ writer ─▶ SQLite
//! reconcile/poll ┘
//! ```
//!
//! The intake runs on tokio (events, timers, signals); decoding, inference and
//! SQLite run on plain threads, connected by bounded channels, so a burst of any
//! size costs memory proportional to the queue sizes, never to the burst.
//!
//! Shutdown (SIGINT/SIGTERM): intake stops, workers stop taking new files, the
//! batches already decoded are classified and committed, and the process exits
//! 0. A second signal exits at once. Nothing is lost either way: a file without
//! a committed row is found again by the next start-up scan.

pub mod metrics;
pub mod organize;
pub mod pipeline;
pub mod scan;
pub mod settle;

use crate::engine::{self, BackendChoice, EngineOptions};
use crate::model::LoadedModel;
use crate::preprocess::DecodeLimits;
use crate::store::{Outcome, Store, path_text};
use anyhow::{Context, bail};
use pipeline::{Gate, Item, Registry, Work, WriteMsg};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything `watch` can be told.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub model: PathBuf,
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

/// Counters for logs, `status` and metrics.
pub struct Stats {
    pub intake_depth: AtomicU64,
    pub batch_sizes: metrics::Histogram,
    pub decode_seconds: metrics::Histogram,
    pub infer_seconds: metrics::Histogram,
    pub seen: AtomicU64,
    pub skipped: AtomicU64,
    pub known: AtomicU64,
    pub classified: AtomicU64,
    pub recorded: AtomicU64,
    pub failed: AtomicU64,
    /// Files dispatched early whose result was dropped because they changed
    /// before their settle interval ended.
    pub resettled: AtomicU64,
    pub batches: AtomicU64,
    pub decode_ns: AtomicU64,
    pub infer_ns: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            intake_depth: AtomicU64::new(0),
            batch_sizes: metrics::Histogram::new(metrics::BATCH_BUCKETS),
            decode_seconds: metrics::Histogram::new(metrics::LATENCY_BUCKETS),
            infer_seconds: metrics::Histogram::new(metrics::LATENCY_BUCKETS),
            seen: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            known: AtomicU64::new(0),
            classified: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            resettled: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            decode_ns: AtomicU64::new(0),
            infer_ns: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Stats {
    pub fn count_error(&self, kind: &str) {
        let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(kind.to_string()).or_default() += 1;
    }
}

/// Messages into the intake.
#[derive(Debug)]
pub enum IntakeMsg {
    /// A path that may be a new or changed file.
    Candidate(PathBuf),
    /// A path whose writer just closed it, or that was renamed into place:
    /// most likely complete, so it is dispatched at once (see [`pipeline::Gate`]).
    Written(PathBuf),
    /// A path that may have disappeared.
    Gone(PathBuf),
    /// A folder whose content may be unknown (moved in, or events were lost).
    Rescan(PathBuf),
}

/// State shared by the intake and the pipeline threads.
pub struct Shared {
    pub stopping: AtomicBool,
    /// Workers currently reading/decoding (the batcher waits only if > 0).
    pub decoding: AtomicUsize,
    pub registry: Mutex<Registry>,
    /// Paths dispatched and not yet committed, each with whether it went
    /// early (with a gate).
    pub inflight: Mutex<HashMap<PathBuf, bool>>,
    /// How many of those went early. Their results wait in the writer for
    /// their settle interval, so the intake stops sending files early at
    /// `--queue` of them: memory stays bounded whatever the interval.
    pub early_inflight: AtomicUsize,
    /// Set when events may have been lost; the intake then rescans.
    pub rescan: AtomicBool,
    /// Set when the watcher ran out of inotify watches at run time: events
    /// no longer cover every folder, so the intake polls from then on.
    pub watches_exhausted: AtomicBool,
    pub stats: Stats,
    requeue_tx: mpsc::Sender<IntakeMsg>,
    /// Tensor buffers handed back by the batchers once copied into a batch,
    /// reused by the workers: no zero-fill and no fresh pages per image.
    tensors: (crossbeam_channel::Sender<Vec<f32>>, crossbeam_channel::Receiver<Vec<f32>>),
    /// The model in use (swapped by the batcher between batches).
    model: std::sync::RwLock<(Arc<LoadedModel>, engine::Backend)>,
}

impl Shared {
    pub fn current_model(&self) -> Arc<LoadedModel> {
        self.model.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub fn current_backend(&self) -> engine::Backend {
        self.model.read().unwrap_or_else(|e| e.into_inner()).1
    }

    pub fn set_model(&self, model: Arc<LoadedModel>, backend: engine::Backend) {
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = (model, backend);
    }

    /// A tensor buffer of `len` elements, reused if one is free. Its content
    /// is whatever it held: the caller overwrites every element.
    pub fn tensor_buffer(&self, len: usize) -> Vec<f32> {
        match self.tensors.1.try_recv() {
            Ok(mut v) => {
                v.resize(len, 0.0);
                v
            }
            Err(_) => vec![0.0; len],
        }
    }

    /// Hands a tensor buffer back for reuse (dropped if enough are free).
    pub fn recycle_tensor(&self, v: Vec<f32>) {
        let _ = self.tensors.0.try_send(v);
    }

    pub fn release(&self, path: &Path) {
        if self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(path) == Some(true) {
            self.early_inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Sends a path back to the intake to settle again; if the intake is full
    /// a rescan will find it.
    pub fn requeue(&self, path: &Path) {
        if self.requeue_tx.try_send(IntakeMsg::Candidate(path.to_path_buf())).is_err() {
            self.rescan.store(true, Ordering::SeqCst);
        }
    }
}

/// Holds an exclusive lock file for the process lifetime.
struct InstanceLock {
    _file: std::fs::File,
}

fn lock(path: &Path, what: &str) -> anyhow::Result<InstanceLock> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(InstanceLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another instrument-detector daemon is already using {what} (lock file {} is held); stop it first",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

fn sibling_with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs the daemon until a signal (or `cancel`) stops it.
pub async fn run(cfg: WatchConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&cfg.dir)
        .with_context(|| format!("cannot watch {}: the folder does not exist or cannot be read", cfg.dir.display()))?;
    if !dir.is_dir() {
        bail!("cannot watch {}: not a folder", dir.display());
    }
    let model = Arc::new(LoadedModel::load(&cfg.model)?);
    let (engine, fallbacks) = engine::open(&model, cfg.backend, &cfg.engine)
        .with_context(|| format!("cannot run model {} on backend {:?}", cfg.model.display(), cfg.backend))?;
    let backend = engine.backend();

    if let Some(parent) = cfg.db.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
    }
    let _db_lock = lock(&sibling_with_suffix(&cfg.db, ".lock"), &format!("database {}", cfg.db.display()))?;
    let _dir_lock = match lock(&dir.join(".instrument-detector.lock"), &format!("folder {}", dir.display())) {
        Ok(l) => Some(l),
        Err(e) if e.to_string().contains("already using") => return Err(e),
        Err(e) => {
            tracing::warn!("{e:#}; continuing without a folder lock");
            None
        }
    };
    let store = Store::open_rw(&cfg.db).with_context(|| format!("cannot use database {}", cfg.db.display()))?;
    store.register_model(&model)?;

    let max_batch = cfg.batch_size.unwrap_or_else(|| engine.preferred_batch()).max(1);
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
    // Each step down was already logged once by `engine::open` (at info for
    // the expected "no GPU here", at warn for anything else).
    let _ = fallbacks;

    let (intake_tx, intake_rx) = mpsc::channel::<IntakeMsg>(cfg.queue.max(16));
    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
        decoding: AtomicUsize::new(0),
        registry: Mutex::new(Registry::default()),
        inflight: Mutex::new(HashMap::new()),
        early_inflight: AtomicUsize::new(0),
        rescan: AtomicBool::new(false),
        watches_exhausted: AtomicBool::new(false),
        stats: Stats::default(),
        requeue_tx: intake_tx.clone(),
        // As many as can be decoded and not yet batched at once, plus a batch.
        tensors: crossbeam_channel::bounded(max_batch * 3 + cfg.workers.max(1)),
        model: std::sync::RwLock::new((model.clone(), backend)),
    });

    // Pipeline threads.
    let workers = cfg.workers.max(1);
    // Paths are small: the work queue holds as many as the intake may, so a
    // burst never waits on the intake's next wake-up to reach the workers.
    // Memory stays bounded by the decoded-tensor queue below, not by this one.
    let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(cfg.queue.max(16));
    let (job_tx, job_rx) = crossbeam_channel::bounded::<pipeline::Job>(max_batch * 2);
    let (write_tx, write_rx) = crossbeam_channel::bounded::<WriteMsg>(64);

    let writer = {
        let shared = shared.clone();
        {
            let organizer = cfg.organize.clone().map(|d| organize::Organizer::new(d, model.spec.verdict_labels()));
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || pipeline::writer_loop(shared, store, write_rx, organizer))?
        }
    };
    // One batcher per independent piece of the engine (ORT CPU: one per core),
    // all taking from the same queue of tensors; the batch size is shared
    // between them, so a round of inference still covers `max_batch` images.
    let pieces = engine.split();
    let per_batcher = max_batch.div_ceil(pieces.len()).max(1);
    let mut swap_txs = Vec::with_capacity(pieces.len());
    let mut batchers = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.into_iter().enumerate() {
        let (swap_tx, swap_rx) = crossbeam_channel::bounded::<pipeline::ModelSwap>(1);
        swap_txs.push(swap_tx);
        let (shared, model, write_tx, job_rx) = (shared.clone(), model.clone(), write_tx.clone(), job_rx.clone());
        let wait = cfg.batch_wait;
        batchers.push(std::thread::Builder::new().name(format!("batcher-{i}")).spawn(move || {
            pipeline::batcher_loop(shared, model, piece, per_batcher, wait, job_rx, write_tx, swap_rx)
        })?);
    }
    drop(job_rx);
    let reload_task = tokio::spawn(watch_model(cfg.clone(), shared.clone(), swap_txs));
    let ctx = Arc::new(pipeline::WorkerContext {
        shared: shared.clone(),
        limits: cfg.limits,
        follow_symlinks: cfg.follow_symlinks,
        db_path: cfg.db.clone(),
        young: (cfg.settle * 5).max(Duration::from_secs(5)),
    });
    let mut worker_handles = Vec::new();
    for i in 0..workers {
        let (ctx, rx, jobs, writes) = (ctx.clone(), work_rx.clone(), job_tx.clone(), write_tx.clone());
        worker_handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || pipeline::worker_loop(ctx, rx, jobs, writes))?,
        );
    }
    let job_tx_monitor = job_tx.clone();
    drop((work_rx, job_tx));

    let monitor = Arc::new(metrics::Monitor {
        stats: shared.clone(),
        started_at: crate::store::now(),
        folder: dir.clone(),
        db: cfg.db.clone(),
        queues: metrics::Queues { workers: work_tx.clone(), batcher: job_tx_monitor, writer: write_tx.clone() },
    });
    let status_task = tokio::spawn(metrics::write_status_forever(monitor.clone()));
    let metrics_task = match cfg.metrics {
        Some(addr) => {
            let listener_monitor = monitor.clone();
            // Bind now so a bad address fails at start-up, not later.
            let probe = std::net::TcpListener::bind(addr).with_context(|| format!("cannot serve metrics on {addr}"))?;
            drop(probe);
            Some(tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, listener_monitor).await {
                    tracing::error!("metrics server stopped: {e}");
                }
            }))
        }
        None => None,
    };

    // Events.
    let mut poll = cfg.poll;
    let _watcher = if poll.is_none() {
        match start_watcher(&dir, intake_tx.clone(), shared.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("{e}; falling back to polling every {}s", POLL_FALLBACK.as_secs());
                poll = Some(POLL_FALLBACK);
                None
            }
        }
    } else {
        None
    };

    let intake = Intake {
        root: dir.clone(),
        cfg: cfg.clone(),
        shared: shared.clone(),
        work_tx,
        write_tx: write_tx.clone(),
        intake_tx,
        poll,
    };
    intake.run(intake_rx, cancel).await;

    // Shutdown: stop taking work, drain what is decoded, commit, exit.
    tracing::info!("stopping: finishing the batches in flight");
    shared.stopping.store(true, Ordering::SeqCst);
    drop(_watcher);
    drop(write_tx);
    status_task.abort();
    reload_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    // The monitor holds queue senders; drop them so the pipeline can wind down.
    drop(monitor);
    let _ = std::fs::remove_file(metrics::status_path(&cfg.db));
    tokio::task::spawn_blocking(move || {
        for h in worker_handles {
            let _ = h.join();
        }
        for b in batchers {
            let _ = b.join();
        }
        let _ = writer.join();
    })
    .await?;
    let s = &shared.stats;
    tracing::info!(
        classified = s.classified.load(Ordering::Relaxed),
        recorded = s.recorded.load(Ordering::Relaxed) + s.known.load(Ordering::Relaxed),
        failed = s.failed.load(Ordering::Relaxed),
        "stopped cleanly"
    );
    Ok(())
}

/// A new model and one engine piece per batcher.
type Replacement = (Arc<LoadedModel>, Vec<Box<dyn engine::Classifier>>);

/// Swaps the model when its file changes (checked every 2 s) or on SIGHUP.
/// A new model is loaded, validated and opened on the same backend choice off
/// the pipeline; only a model that passes all of that reaches the batcher, so
/// a broken file is refused and the old model stays.
async fn watch_model(
    cfg: WatchConfig,
    shared: Arc<Shared>,
    swaps: Vec<crossbeam_channel::Sender<pipeline::ModelSwap>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.len(), m.modified()?))).ok();
    let mut last = stamp(&cfg.model);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = stamp(&cfg.model);
        if !forced && now == last {
            continue;
        }
        last = now;
        let (cfg2, current) = (cfg.clone(), shared.current_model().sha256.clone());
        let batchers = swaps.len();
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Replacement>> {
            let m = LoadedModel::load(&cfg2.model)?;
            if m.sha256 == current {
                return Ok(None);
            }
            // One piece per batcher: one open gives as many as the engine
            // splits into (ORT CPU: one per core); should the new model land
            // on a backend that splits into fewer, open it again.
            let mut pieces = Vec::with_capacity(batchers);
            while pieces.len() < batchers {
                let (e, _) = engine::open(&m, cfg2.backend, &cfg2.engine)?;
                pieces.extend(e.split());
            }
            pieces.truncate(batchers);
            Store::open_rw(&cfg2.db)?.register_model(&m)?;
            Ok(Some((Arc::new(m), pieces)))
        })
        .await;
        match loaded {
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

/// Sets up the recursive notify watcher. Its callback runs on notify's own
/// thread and never blocks: if the intake is full, it asks for a rescan.
fn start_watcher(
    dir: &Path,
    tx: mpsc::Sender<IntakeMsg>,
    shared: Arc<Shared>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
    use notify::{RecursiveMode, Watcher};
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if event.need_rescan() {
                shared.rescan.store(true, Ordering::SeqCst);
            }
            let msgs: Vec<IntakeMsg> = match event.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    event.paths.into_iter().map(IntakeMsg::Gone).collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    let mut it = event.paths.into_iter();
                    let mut v = Vec::new();
                    if let Some(from) = it.next() {
                        v.push(IntakeMsg::Gone(from));
                    }
                    v.extend(it.map(IntakeMsg::Candidate));
                    v
                }
                // A writer closed the file, or it was renamed into place: the
                // moment it most likely became complete.
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    event.paths.into_iter().map(IntakeMsg::Written).collect()
                }
                EventKind::Access(_) => Vec::new(),
                _ => event.paths.into_iter().map(IntakeMsg::Candidate).collect(),
            };
            for m in msgs {
                if tx.try_send(m).is_err() {
                    shared.rescan.store(true, Ordering::SeqCst);
                }
            }
        }
        Err(e) => {
            if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                // Once: from now on the intake polls (see `Intake::run`).
                if !shared.watches_exhausted.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        "{INOTIFY_HINT}; new folders are no longer watched, polling every {}s from now on",
                        POLL_FALLBACK.as_secs()
                    );
                }
            } else {
                tracing::warn!("file watcher error: {e}; rescanning");
            }
            shared.rescan.store(true, Ordering::SeqCst);
        }
    };
    let mut watcher = notify::recommended_watcher(handler).context("cannot start the file watcher")?;
    watcher.watch(dir, RecursiveMode::Recursive).map_err(|e| {
        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            anyhow::anyhow!("{INOTIFY_HINT}")
        } else {
            anyhow::anyhow!("cannot watch {}: {e}", dir.display())
        }
    })?;
    Ok(watcher)
}

/// How often the folder is scanned when file events cannot be relied on.
const POLL_FALLBACK: Duration = Duration::from_secs(10);

pub const INOTIFY_HINT: &str = "the system ran out of inotify watches (one is needed per folder); raise the limit with \
`sudo sysctl fs.inotify.max_user_watches=524288` (persist it in /etc/sysctl.d/), or run with --poll SECS";

struct Intake {
    root: PathBuf,
    cfg: WatchConfig,
    shared: Arc<Shared>,
    work_tx: crossbeam_channel::Sender<Work>,
    write_tx: crossbeam_channel::Sender<WriteMsg>,
    intake_tx: mpsc::Sender<IntakeMsg>,
    poll: Option<Duration>,
}

impl Intake {
    async fn run(self, mut rx: mpsc::Receiver<IntakeMsg>, cancel: CancellationToken) {
        let mut settler = settle::Settler::new(self.cfg.settle, self.cfg.queue.max(16));
        let mut ready: VecDeque<Work> = VecDeque::new();
        // Housekeeping (scans, gauges) runs on a tick; settling and dispatch
        // do not: the loop sleeps until the next candidate is due, so a file is
        // taken one settle interval after it stopped changing.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let scanning = Arc::new(AtomicBool::new(false));
        let mut every = self.poll.unwrap_or(self.cfg.reconcile);
        let mut next_scan = Instant::now() + every;
        self.start_scan(self.root.clone(), &scanning, true); // start-up reconcile
        loop {
            let accepting = settler.len() + ready.len() < self.cfg.queue.max(16);
            // While paths wait for room in the work queue, retry soon; otherwise
            // sleep until the next candidate is due (or an hour when none is).
            let wake = if ready.is_empty() {
                settler.next_due().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
            } else {
                Instant::now() + Duration::from_millis(5)
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = rx.recv(), if accepting => match msg {
                    None => break,
                    Some(IntakeMsg::Candidate(p)) => self.candidate(p, false, &mut settler, &mut ready, &scanning),
                    Some(IntakeMsg::Written(p)) => {
                        self.candidate(p, true, &mut settler, &mut ready, &scanning);
                        self.dispatch(&mut ready, &mut settler);
                    }
                    Some(IntakeMsg::Gone(p)) => self.gone(p, &scanning),
                    Some(IntakeMsg::Rescan(p)) => {
                        if !self.start_scan(p, &scanning, false) {
                            self.shared.rescan.store(true, Ordering::SeqCst);
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    ready.extend(settler.poll(Instant::now(), settle::observe).into_iter().map(|path| Work { path, gate: None }));
                    self.dispatch(&mut ready, &mut settler);
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if every > POLL_FALLBACK && self.shared.watches_exhausted.load(Ordering::SeqCst) {
                        every = POLL_FALLBACK;
                        next_scan = next_scan.min(now + every);
                    }
                    self.shared.stats.intake_depth.store((settler.len() + ready.len()) as u64, Ordering::Relaxed);
                    if self.shared.rescan.load(Ordering::SeqCst) && self.start_scan(self.root.clone(), &scanning, true) {
                        self.shared.rescan.store(false, Ordering::SeqCst);
                    }
                    if now >= next_scan && self.start_scan(self.root.clone(), &scanning, true) {
                        next_scan = now + every;
                    }
                }
            }
        }
    }

    /// Takes a path from an event or a scan. A `written` one (closed by its
    /// writer, or renamed into place) that is not empty goes straight to the
    /// workers with a gate; anything else waits out the settle interval first.
    fn candidate(
        &self,
        p: PathBuf,
        written: bool,
        settler: &mut settle::Settler,
        ready: &mut VecDeque<Work>,
        scanning: &Arc<AtomicBool>,
    ) {
        if p.file_name().is_some_and(scan::is_ignored_name) || in_ignored_dir(&self.root, &p) {
            return;
        }
        let Ok(meta) = (if self.cfg.follow_symlinks { std::fs::metadata(&p) } else { std::fs::symlink_metadata(&p) })
        else {
            return;
        };
        if meta.is_dir() {
            // A folder moved or copied in: its files may predate our watch on it.
            if !self.start_scan(p, scanning, false) {
                self.shared.rescan.store(true, Ordering::SeqCst);
            }
            return;
        }
        if !meta.is_file() {
            tracing::debug!("{}: not a regular file (symlink or special), skipped", path_text(&p));
            return;
        }
        self.shared.stats.seen.fetch_add(1, Ordering::Relaxed);
        let (look, now) = (settle::observe(&p), Instant::now());
        let Some(look) = look.filter(|l| written && l.size > 0) else {
            settler.offer(p, look, now);
            return;
        };
        let early = self.shared.early_inflight.load(Ordering::SeqCst);
        if early + ready.len() < self.cfg.queue.max(16) {
            settler.remove(&p);
            ready.push_back(Work { path: p, gate: Some(Gate { due: now + self.cfg.settle, look }) });
        } else {
            tracing::debug!(
                "{}: {early} files already wait for their settle interval (--queue): this one settles first",
                path_text(&p)
            );
            settler.offer(p, Some(look), now);
        }
    }

    fn gone(&self, p: PathBuf, scanning: &Arc<AtomicBool>) {
        if std::fs::symlink_metadata(&p).is_ok() {
            // Renamed over, or recreated: treat as new content.
            let _ = self.intake_tx.try_send(IntakeMsg::Candidate(p));
            return;
        }
        let text = path_text(&p);
        let _ =
            self.write_tx.send(WriteMsg::Outcomes(vec![Item::new(Outcome::Deleted { path: text }, Vec::new(), None)]));
        // If it was a folder, its files are found gone by a reconcile.
        if !self.start_scan(self.root.clone(), scanning, true) {
            self.shared.rescan.store(true, Ordering::SeqCst);
        }
    }

    /// Hands settled paths to the workers without ever blocking the intake.
    fn dispatch(&self, ready: &mut VecDeque<Work>, settler: &mut settle::Settler) {
        let mut deferred = Vec::new();
        while let Some(w) = ready.pop_front() {
            {
                let mut inflight = self.shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
                if inflight.contains_key(&w.path) {
                    // Being processed: look again once that is committed.
                    deferred.push(w.path);
                    continue;
                }
                inflight.insert(w.path.clone(), w.gate.is_some());
                if w.gate.is_some() {
                    self.shared.early_inflight.fetch_add(1, Ordering::SeqCst);
                }
            }
            match self.work_tx.try_send(w) {
                Ok(()) => {}
                Err(e) => {
                    let w = e.into_inner();
                    self.shared.release(&w.path);
                    ready.push_front(w);
                    break;
                }
            }
        }
        let now = Instant::now();
        for p in deferred {
            let obs = settle::observe(&p);
            settler.offer(p, obs, now);
        }
    }

    /// Starts a scan of `dir` on the blocking pool unless one is running.
    fn start_scan(&self, dir: PathBuf, scanning: &Arc<AtomicBool>, check_deleted: bool) -> bool {
        if scanning.swap(true, Ordering::SeqCst) {
            return false;
        }
        let scanning = scanning.clone();
        let tx = self.intake_tx.clone();
        let write_tx = self.write_tx.clone();
        let shared = self.shared.clone();
        let (db, follow, root) = (self.cfg.db.clone(), self.cfg.follow_symlinks, self.root.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = reconcile(&root, &dir, &db, follow, check_deleted, &tx, &write_tx, &shared) {
                tracing::warn!("scan of {} stopped: {e:#}", dir.display());
            }
            scanning.store(false, Ordering::SeqCst);
        });
        true
    }
}

fn in_ignored_dir(root: &Path, p: &Path) -> bool {
    p.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.parent())
        .is_some_and(|parent| parent.components().any(|c| scan::is_ignored_name(c.as_os_str())))
}

/// Walks `dir`, offering every file the database does not already hold as it
/// is now (same size and mtime); then, if asked, records as deleted the paths
/// under `root` that are gone.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    root: &Path,
    dir: &Path,
    db: &Path,
    follow: bool,
    check_deleted: bool,
    tx: &mpsc::Sender<IntakeMsg>,
    write_tx: &crossbeam_channel::Sender<WriteMsg>,
    shared: &Shared,
) -> anyhow::Result<()> {
    let store = Store::open_ro(db)?;
    let started = Instant::now();
    let (mut files, mut offered, mut symlinks, mut problems) = (0u64, 0u64, 0u64, 0u64);
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(follow)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !scan::is_ignored_name(e.file_name()));
    for entry in walker {
        if shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                problems += 1;
                tracing::warn!("while scanning: {e}");
                continue;
            }
        };
        let ft = entry.file_type();
        if ft.is_symlink() {
            symlinks += 1;
            tracing::debug!("{}: symlink not followed (use --follow-symlinks)", path_text(entry.path()));
            continue;
        }
        if !ft.is_file() {
            continue;
        }
        files += 1;
        let Ok(meta) = entry.metadata() else { continue };
        let text = path_text(entry.path());
        let mtime_ns = pipeline::mtime_ns(&meta);
        if let Some(state) = store.file_state(&text)?
            && state.status != "deleted"
            && state.size == Some(meta.len() as i64)
            && state.mtime_ns == Some(mtime_ns)
        {
            continue;
        }
        offered += 1;
        if tx.blocking_send(IntakeMsg::Candidate(entry.into_path())).is_err() {
            return Ok(());
        }
    }
    let mut deleted = 0u64;
    if check_deleted {
        for p in store.live_paths_under(&path_text(root))? {
            if shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let path = PathBuf::from(&p);
            if std::fs::symlink_metadata(&path).is_err() && std::fs::symlink_metadata(unescape(&p)).is_err() {
                deleted += 1;
                if write_tx
                    .send(WriteMsg::Outcomes(vec![Item::new(Outcome::Deleted { path: p }, Vec::new(), None)]))
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    }
    tracing::info!(
        folder = %dir.display(),
        files, new_or_changed = offered, deleted, symlinks_skipped = symlinks, problems,
        ms = started.elapsed().as_millis() as u64,
        "scan finished"
    );
    Ok(())
}

/// Inverse of [`path_text`]'s `\xNN` escaping.
fn unescape(text: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1] == b'x'
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
