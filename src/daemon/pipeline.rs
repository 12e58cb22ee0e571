//! The CPU side of the daemon: workers (read, hash, decode, preprocess), the
//! batcher (one engine), and the writer (one SQLite connection).
//!
//! ```text
//! intake ──paths (bounded)──▶ workers ×N ──jobs (bounded)──▶ batcher ──▶ writer ──▶ SQLite
//!                               └──────── known / failed outcomes ─────────┘
//! ```
//!
//! Early start: a file whose writer just closed it (or that was renamed into
//! place) is dispatched at once instead of after its settle interval, carrying
//! a [`Gate`]: the look taken at that event. Its result waits in the writer
//! until the interval has passed and a second look finds the file unchanged;
//! otherwise it is discarded and the file settles again. The settle rule (two
//! equal looks an interval apart, the content read in between) is kept, but
//! decoding and inference happen during the interval instead of after it.
//!
//! Exactly once: a path is "in flight" from dispatch until the writer commits
//! its row, so the intake never hands it out twice; a content hash is in the
//! [`Registry`] from the moment a worker claims it until its prediction is
//! committed, so the same bytes under a second name wait for that result instead
//! of being classified again.

use super::Shared;
use super::settle::Observation;
use crate::engine::Classifier;
use crate::model::LoadedModel;
use crate::predict::top_k;
use crate::preprocess::{DecodeLimits, preprocess_bytes};
use crate::store::{FileMeta, Outcome, PredictionRow, Store, path_text};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Content hashes being classified, with the other paths waiting on them.
#[derive(Default)]
pub struct Registry {
    waiting: HashMap<String, Vec<(PathBuf, FileMeta)>>,
}

/// The settle check still owed by a file that was dispatched early: its row
/// may be committed only at `due` or later, and only if the file still looks
/// like `look` (the look taken at the event that dispatched it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub due: Instant,
    pub look: Observation,
}

/// A path handed to the workers, with the gate it must pass if dispatched early.
#[derive(Debug)]
pub struct Work {
    pub path: PathBuf,
    pub gate: Option<Gate>,
}

/// A decoded image on its way to the engine.
pub struct Job {
    pub path: PathBuf,
    pub gate: Option<Gate>,
    pub file: FileMeta,
    pub hash: String,
    pub tensor: Vec<f32>,
    /// The model whose preprocessing made `tensor`.
    pub model_sha256: String,
}

/// A validated replacement model and its engine, handed to the batcher.
pub type ModelSwap = (Arc<LoadedModel>, Box<dyn Classifier>);

/// One result for the writer: the outcome, the paths it releases, and the
/// gate it must pass first (if its file was dispatched early).
pub struct Item {
    pub outcome: Outcome,
    pub paths: Vec<PathBuf>,
    pub gate: Option<Gate>,
}

impl Item {
    pub fn new(outcome: Outcome, paths: Vec<PathBuf>, gate: Option<Gate>) -> Item {
        Item { outcome, paths, gate }
    }
}

/// What the writer receives.
pub enum WriteMsg {
    Outcomes(Vec<Item>),
}

pub struct WorkerContext {
    pub shared: Arc<Shared>,
    pub limits: DecodeLimits,
    pub follow_symlinks: bool,
    pub db_path: PathBuf,
    /// Decode errors of a file modified less than this ago are retried later
    /// instead of recorded: it may still be being written.
    pub young: Duration,
}

/// Modification time in nanoseconds, as stored in `files.mtime_ns`.
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

/// One worker thread: takes paths until the queue closes or shutdown starts.
pub fn worker_loop(ctx: Arc<WorkerContext>, paths: Receiver<Work>, jobs: Sender<Job>, writes: Sender<WriteMsg>) {
    let store = match Store::open_ro(&ctx.db_path) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("worker cannot open the database: {e}");
            return;
        }
    };
    while !ctx.shared.stopping.load(Ordering::SeqCst) {
        let Work { path, gate } = match paths.recv_timeout(Duration::from_millis(100)) {
            Ok(w) => w,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        ctx.shared.decoding.fetch_add(1, Ordering::SeqCst);
        let result = process(&ctx, &store, &path, gate, &jobs, &writes);
        ctx.shared.decoding.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = result {
            tracing::error!("{}: {e}", path_text(&path));
            ctx.shared.release(&path);
        }
    }
}

fn send_write(writes: &Sender<WriteMsg>, outcome: Outcome, paths: Vec<PathBuf>, gate: Option<Gate>) {
    // The writer outlives every worker; a send error means shutdown raced us
    // and the file will simply be found again by the next start-up scan.
    let _ = writes.send(WriteMsg::Outcomes(vec![Item::new(outcome, paths, gate)]));
}

fn process(
    ctx: &WorkerContext,
    store: &Store,
    path: &Path,
    gate: Option<Gate>,
    jobs: &Sender<Job>,
    writes: &Sender<WriteMsg>,
) -> Result<(), crate::store::StoreError> {
    let shared = &ctx.shared;
    let text = path_text(path);
    let meta = match if ctx.follow_symlinks { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) } {
        Ok(m) => m,
        Err(_) => {
            // Gone since it settled: the deletion is recorded by the intake.
            shared.release(path);
            return Ok(());
        }
    };
    if !meta.is_file() {
        tracing::debug!("{text}: not a regular file, skipped");
        shared.release(path);
        return Ok(());
    }
    if let Some(g) = gate
        && Observation::of(&meta) != Some(g.look)
    {
        // Changed since the event that dispatched it early: settle it the slow way.
        shared.release(path);
        shared.requeue(path);
        return Ok(());
    }
    let file = FileMeta { path: text.clone(), size: meta.len() as i64, mtime_ns: mtime_ns(&meta) };
    if let Some(state) = store.file_state(&text)?
        && state.status != "deleted"
        && state.size == Some(file.size)
        && state.mtime_ns == Some(file.mtime_ns)
    {
        shared.release(path);
        shared.stats.skipped.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    if meta.len() > ctx.limits.max_file_bytes {
        let message = format!("file is {} bytes, over the limit of {} bytes", meta.len(), ctx.limits.max_file_bytes);
        send_write(
            writes,
            Outcome::Failed { file, content_hash: None, kind: "too_large".into(), message },
            vec![path.into()],
            gate,
        );
        return Ok(());
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            shared.release(path);
            return Ok(());
        }
        Err(e) => {
            let message = format!("cannot read the file: {e}");
            send_write(
                writes,
                Outcome::Failed { file, content_hash: None, kind: "unreadable".into(), message },
                vec![path.into()],
                gate,
            );
            return Ok(());
        }
    };
    if bytes.len() as u64 != meta.len() {
        // Changed while we read it: let it settle again.
        shared.release(path);
        shared.requeue(path);
        return Ok(());
    }
    let hash = blake3::hash(&bytes).to_hex().to_string();
    // One model for this file from here on; a swap in between sends it round again.
    let model = shared.current_model();

    {
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiters) = reg.waiting.get_mut(&hash) {
            waiters.push((path.to_path_buf(), file));
            return Ok(());
        }
        if store.has_prediction(&hash, &model.sha256)? {
            drop(reg);
            send_write(writes, Outcome::Known { content_hash: hash, file }, vec![path.into()], gate);
            shared.stats.known.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        reg.waiting.insert(hash.clone(), Vec::new());
    }

    let spec = &model.spec.preprocess;
    let mut tensor = shared.tensor_buffer(spec.tensor_len());
    let started = Instant::now();
    let decoded = preprocess_bytes(&bytes, spec, &ctx.limits, &mut tensor);
    shared.stats.decode_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    shared.stats.decode_seconds.observe(started.elapsed().as_secs_f64());
    drop(bytes);
    match decoded {
        Ok(()) => {
            let job = Job {
                path: path.to_path_buf(),
                gate,
                file,
                hash: hash.clone(),
                tensor,
                model_sha256: model.sha256.clone(),
            };
            if jobs.send(job).is_err() {
                // Shutting down: leave the file for the next start.
                let waiters = shared.forget_hash(&hash);
                shared.release(path);
                for (p, _) in waiters {
                    shared.release(&p);
                }
            }
        }
        Err(e) => {
            let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or(Duration::MAX);
            // A file still being written by a slow writer that paused longer
            // than the settle interval looks truncated ("corrupt"), or, if
            // only created or a few bytes in, "empty" or "not_image" (no full
            // signature yet): while it is young, look again later instead of
            // recording an error for a partial state.
            if e.kind().may_be_partial_write() && age < ctx.young {
                tracing::debug!("{text}: {e}; modified {age:?} ago, will look again");
                let waiters = shared.forget_hash(&hash);
                shared.release(path);
                shared.requeue(path);
                for (p, _) in waiters {
                    shared.release(&p);
                    shared.requeue(&p);
                }
                return Ok(());
            }
            send_write(
                writes,
                Outcome::Failed { file, content_hash: Some(hash), kind: e.kind().into(), message: e.to_string() },
                vec![path.into()],
                gate,
            );
        }
    }
    Ok(())
}

/// The batcher: gathers jobs into batches (up to `max_batch`, waiting at most
/// `max_wait` for stragglers, and not at all when nothing else is on its way),
/// runs the engine, and hands the results to the writer.
#[allow(clippy::too_many_arguments)]
pub fn batcher_loop(
    shared: Arc<Shared>,
    mut model: Arc<LoadedModel>,
    mut engine: Box<dyn Classifier>,
    max_batch: usize,
    max_wait: Duration,
    jobs: Receiver<Job>,
    writes: Sender<WriteMsg>,
    swaps: Receiver<ModelSwap>,
) {
    let mut swaps = swaps;
    // The batch buffer, kept between batches (no fresh pages for each).
    let mut spare: Vec<f32> = Vec::new();
    loop {
        // Model changes take effect here, between batches.
        let first = crossbeam_channel::select! {
            recv(swaps) -> swap => {
                match swap {
                    Ok((m, e)) => {
                        tracing::info!(model = %m.path.display(), sha256 = &m.sha256[..12], backend = %e.backend(), "switched to the new model");
                        model = m;
                        engine = e;
                        shared.set_model(model.clone(), engine.backend());
                    }
                    // No more reloads (shutting down): stop listening for them.
                    Err(_) => swaps = crossbeam_channel::never(),
                }
                continue;
            }
            recv(jobs) -> job => match job {
                Ok(j) => j,
                Err(_) => break,
            },
        };
        let backend = engine.backend().as_str().to_string();
        let per_image = model.spec.preprocess.tensor_len();
        let size = model.spec.preprocess.size as usize;
        let mut batch = vec![first];
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(j) => {
                    batch.push(j);
                    continue;
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            // Wait only if a worker is decoding something that could join.
            if shared.decoding.load(Ordering::SeqCst) == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match jobs.recv_timeout(deadline - now) {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // Tensors made for a previous model go round again with the new one.
        let (batch, stale): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.model_sha256 == model.sha256);
        for job in stale {
            let waiters = shared.forget_hash(&job.hash);
            shared.release(&job.path);
            shared.requeue(&job.path);
            for (p, _) in waiters {
                shared.release(&p);
                shared.requeue(&p);
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        // Copied once into one contiguous batch (no zero-fill first: every
        // element is written by the copies).
        let mut flat = std::mem::take(&mut spare);
        flat.clear();
        flat.reserve(n * per_image);
        let mut batch = batch;
        for job in &mut batch {
            flat.extend_from_slice(&job.tensor);
            shared.recycle_tensor(std::mem::take(&mut job.tensor));
        }
        let started = Instant::now();
        let result = match ndarray::Array4::from_shape_vec((n, 3, size, size), flat) {
            Ok(input) => {
                let result = engine.run(input.view());
                spare = input.into_raw_vec_and_offset().0;
                result
            }
            // Cannot happen (every tensor was made for this model); if it did,
            // the files get error rows instead of being dropped.
            Err(e) => Err(crate::engine::EngineError::Inference {
                backend: engine.backend(),
                reason: format!("{n} tensors do not make a ({n}, 3, {size}, {size}) batch: {e}"),
            }),
        };
        let elapsed = started.elapsed();
        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        shared.stats.infer_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        shared.stats.infer_seconds.observe(elapsed.as_secs_f64());
        shared.stats.batch_sizes.observe(n as f64);
        tracing::debug!(batch = n, ms = elapsed.as_secs_f64() * 1e3, "batch classified");
        let per_ms = elapsed.as_secs_f64() * 1e3 / n as f64;
        let outcomes = match result {
            Ok(out) => batch
                .into_iter()
                .enumerate()
                .map(|(i, job)| {
                    let row: Vec<f32> = out.row(i).to_vec();
                    let prediction = PredictionRow {
                        content_hash: job.hash,
                        model_sha256: model.sha256.clone(),
                        top5: top_k(&model.spec, &row, 5),
                        backend: backend.clone(),
                        inference_ms: per_ms,
                    };
                    Item::new(Outcome::Classified { prediction, files: vec![job.file] }, vec![job.path], job.gate)
                })
                .collect(),
            Err(e) => {
                tracing::error!("inference failed for a batch of {n}: {e}");
                batch
                    .into_iter()
                    .map(|job| {
                        Item::new(
                            Outcome::Failed {
                                file: job.file,
                                content_hash: Some(job.hash),
                                kind: "inference".into(),
                                message: e.to_string(),
                            },
                            vec![job.path],
                            job.gate,
                        )
                    })
                    .collect()
            }
        };
        if writes.send(WriteMsg::Outcomes(outcomes)).is_err() {
            break;
        }
    }
}

/// The writer: one connection, one transaction per gathered batch. On a write
/// failure (disk full, a lock held too long) the batch is kept and retried, and
/// the bounded queues upstream make the whole intake wait.
///
/// Results of files dispatched early are held until their gate is due, then
/// committed only if a second look finds the file as it was read.
pub fn writer_loop(
    shared: Arc<Shared>,
    mut store: Store,
    writes: Receiver<WriteMsg>,
    mut organizer: Option<super::organize::Organizer>,
) {
    let mut held: Vec<Item> = Vec::new();
    let mut open = true;
    while open || !held.is_empty() {
        let next_due = held.iter().filter_map(|i| i.gate.map(|g| g.due)).min();
        let mut items = Vec::new();
        let first = match (open, next_due) {
            (true, None) => writes.recv().map_err(|_| RecvTimeoutError::Disconnected),
            (true, Some(due)) => writes.recv_deadline(due),
            (false, due) => {
                // Shutting down: nothing more comes; wait for the held gates.
                std::thread::sleep(due.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now())));
                Err(RecvTimeoutError::Timeout)
            }
        };
        match first {
            Ok(WriteMsg::Outcomes(v)) => {
                items.extend(v);
                while items.len() < 256 {
                    match writes.try_recv() {
                        Ok(WriteMsg::Outcomes(v)) => items.extend(v),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let now = Instant::now();
        items.append(&mut held);
        let (due, later): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| i.gate.is_none_or(|g| g.due <= now));
        held = later;
        let ready: Vec<Item> = due.into_iter().filter_map(|i| pass_gate(&shared, i)).collect();
        if ready.is_empty() {
            continue;
        }
        let committed = commit_with_retry(&shared, &mut store, ready);
        if let Some(org) = organizer.as_mut() {
            org.place(&committed);
        }
    }
}

/// The second look for an item whose gate is due: `Some` if its file is as it
/// was at the first look (or it had no gate), `None` if the file changed (or
/// went) meanwhile, in which case its result is discarded and the file, with
/// any paths that waited on its content, goes back to settle again.
fn pass_gate(shared: &Shared, item: Item) -> Option<Item> {
    let Some(gate) = item.gate else { return Some(item) };
    let Some(path) = item.paths.first() else { return Some(Item { gate: None, ..item }) };
    if super::settle::observe(path) == Some(gate.look) {
        return Some(Item { gate: None, ..item });
    }
    tracing::debug!("{}: changed during its settle interval; its early result is dropped", path_text(path));
    shared.stats.resettled.fetch_add(1, Ordering::Relaxed);
    // The content hash is registered by the path that classified it (not by a
    // `Known` lookup): its waiters go round again too.
    let owned = match &item.outcome {
        Outcome::Classified { prediction, .. } => Some(prediction.content_hash.as_str()),
        Outcome::Failed { content_hash, .. } => content_hash.as_deref(),
        _ => None,
    };
    let waiters = owned.map(|h| shared.forget_hash(h)).unwrap_or_default();
    for p in item.paths.iter().chain(waiters.iter().map(|(p, _)| p)) {
        shared.release(p);
        shared.requeue(p);
    }
    None
}

/// Commits and returns what was committed (waiters included).
fn commit_with_retry(shared: &Shared, store: &mut Store, items: Vec<Item>) -> Vec<Outcome> {
    let mut backoff = Duration::from_millis(200);
    loop {
        // The registry stays locked across the commit so that no worker can see
        // "not in flight" and "not in the database" for the same content.
        let mut reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut outcomes = Vec::with_capacity(items.len());
        let mut paths: Vec<PathBuf> = Vec::new();
        let mut hashes = Vec::new();
        for Item { outcome, paths: ps, .. } in &items {
            paths.extend(ps.iter().cloned());
            let mut outcome = outcome.clone();
            match &mut outcome {
                Outcome::Classified { prediction, files } => {
                    if let Some(waiters) = reg.waiting.get(&prediction.content_hash) {
                        for (p, f) in waiters {
                            files.push(f.clone());
                            paths.push(p.clone());
                        }
                    }
                    hashes.push(prediction.content_hash.clone());
                }
                Outcome::Failed { content_hash: Some(h), kind, message, .. } => {
                    if let Some(waiters) = reg.waiting.get(h) {
                        for (p, f) in waiters {
                            outcomes.push(Outcome::Failed {
                                file: f.clone(),
                                content_hash: Some(h.clone()),
                                kind: kind.clone(),
                                message: message.clone(),
                            });
                            paths.push(p.clone());
                        }
                    }
                    hashes.push(h.clone());
                }
                _ => {}
            }
            outcomes.push(outcome);
        }
        match store.commit(&outcomes) {
            Ok(()) => {
                for h in &hashes {
                    reg.waiting.remove(h);
                }
                drop(reg);
                for o in &outcomes {
                    match o {
                        Outcome::Classified { files, .. } => {
                            shared.stats.classified.fetch_add(1, Ordering::Relaxed);
                            shared.stats.recorded.fetch_add(files.len() as u64, Ordering::Relaxed);
                        }
                        Outcome::Failed { kind, .. } => {
                            shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                            shared.stats.count_error(kind);
                        }
                        _ => {}
                    }
                }
                for p in &paths {
                    shared.release(p);
                }
                if backoff > Duration::from_millis(200) {
                    tracing::info!("database writes work again; resuming");
                }
                return outcomes;
            }
            Err(e) => {
                drop(reg);
                tracing::error!(
                    "cannot write {} results to the database, keeping them and retrying in {:?}: {e}",
                    outcomes.len(),
                    backoff
                );
                std::thread::sleep(backoff);
                // Space may have come back while we slept: shrink the WAL first, or the
                // retries would fill the freed space with WAL frames that no automatic
                // checkpoint ever copies out (it waits for 1000 pages).
                match store.checkpoint_truncate() {
                    Ok(true) => tracing::info!(
                        "database checkpointed: the write-ahead log was copied into the database and truncated"
                    ),
                    Ok(false) => tracing::warn!(
                        "database checkpoint could not finish (a reader holds old frames); retrying the write anyway"
                    ),
                    Err(e) => tracing::warn!("database checkpoint failed: {e}"),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Shared {
    /// Removes a hash from the registry, returning the paths that waited on it.
    pub fn forget_hash(&self, hash: &str) -> Vec<(PathBuf, FileMeta)> {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.waiting.remove(hash).unwrap_or_default()
    }
}

pub type SharedRegistry = Mutex<Registry>;
