//! Workers: read a settled file, hash it, claim its content, decode and
//! preprocess it, and hand the tensor to the batchers.
//!
//! ```text
//! intake ──Work──▶ worker ×N ──Job──▶ batchers
//!                    └──── known / failed / skipped ────▶ writer
//! ```
//!
//! A worker stops when the work queue closes (the intake has stopped and the
//! queue is drained); the decoded tensors it already sent are still classified.

use super::Shared;
use super::batcher::Job;
use super::ledger::ContentClaim;
use super::settle::{Gate, Observation};
use super::writer::Item;
use crate::model::LoadedModel;
use crate::preprocess::{DecodeFailure, DecodeLimits, preprocess_bytes};
use crate::store::{FailureKind, FileMeta, Outcome, Store, path_text};
use crossbeam_channel::{Receiver, Sender};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A settled path handed to the workers, with the gate it must pass if it
/// was dispatched early.
#[derive(Debug)]
pub(crate) struct Work {
    pub(crate) path: PathBuf,
    pub(crate) gate: Option<Gate>,
}

/// What every worker needs besides its queues.
pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) limits: DecodeLimits,
    pub(crate) follow_symlinks: bool,
    pub(crate) db_path: PathBuf,
    /// Decode errors of a file modified less than this ago are retried later
    /// instead of recorded: it may still be being written.
    pub(crate) young: Duration,
}

/// One worker thread: takes paths until the work queue closes.
pub(crate) fn run(worker: Arc<Worker>, paths: Receiver<Work>, jobs: Sender<Job>, writes: Sender<Vec<Item>>) {
    let store = match Store::open_ro(&worker.db_path) {
        Ok(s) => s,
        Err(e) => {
            // Only at start-up (the writer created the database first); the
            // other workers carry on.
            tracing::error!("worker cannot open the database: {e}");
            return;
        }
    };
    let ctx = Context { worker: &worker, store: &store, jobs: &jobs, writes: &writes };
    for Work { path, gate } in paths.iter() {
        worker.shared.decoding.fetch_add(1, Ordering::SeqCst);
        let result = ctx.process(&path, gate);
        worker.shared.decoding.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = result {
            tracing::error!("{}: {e}", path_text(&path));
            worker.shared.ledger.release_path(&path);
        }
    }
}

struct Context<'a> {
    worker: &'a Worker,
    store: &'a Store,
    jobs: &'a Sender<Job>,
    writes: &'a Sender<Vec<Item>>,
}

/// A file read whole, as it was when read.
struct Read {
    meta: std::fs::Metadata,
    file: FileMeta,
    bytes: Vec<u8>,
}

impl Context<'_> {
    fn shared(&self) -> &Shared {
        &self.worker.shared
    }

    fn process(&self, path: &Path, gate: Option<Gate>) -> Result<(), crate::store::StoreError> {
        let Some(read) = self.read(path, gate)? else { return Ok(()) };
        let hash = blake3::hash(&read.bytes).to_hex().to_string();
        // One model for this file from here on; a swap in between sends it round again.
        let model = self.shared().model.current();
        let waiter = (path.to_path_buf(), read.file.clone());
        let claim =
            self.shared().ledger.claim_content(&hash, waiter, || self.store.has_prediction(&hash, &model.sha256))?;
        match claim {
            ContentClaim::Waiting => {}
            // Early, and its twin is in flight: settle first, so that its row
            // is never written without a second look at this path.
            ContentClaim::Busy => self.shared().send_back(path, None),
            ContentClaim::Known => {
                self.shared().stats.known.fetch_add(1, Ordering::Relaxed);
                self.write(Outcome::Known { content_hash: hash, file: read.file }, path, gate);
            }
            ContentClaim::Owner => self.decode(path, gate, read, hash, &model),
        }
        Ok(())
    }

    /// Looks at the file and reads it; `None` when there is nothing to do
    /// (gone, not a regular file, already recorded as it is, changed since
    /// its early dispatch) or it became an error row.
    fn read(&self, path: &Path, gate: Option<Gate>) -> Result<Option<Read>, crate::store::StoreError> {
        let ledger = &self.shared().ledger;
        let Ok(meta) = super::scan::stat(path, self.worker.follow_symlinks) else {
            // Gone since it settled: the deletion is recorded by the intake.
            ledger.release_path(path);
            return Ok(None);
        };
        if !meta.is_file() {
            tracing::debug!("{}: not a regular file, skipped", path_text(path));
            ledger.release_path(path);
            return Ok(None);
        }
        if gate.is_some_and(|g| Observation::of(&meta) != Some(g.look)) {
            // Changed since the event that dispatched it early: settle it the slow way.
            self.shared().send_back(path, None);
            return Ok(None);
        }
        let file = FileMeta::of(path, &meta);
        if self.store.file_state(&file.path)?.is_some_and(|s| s.is_current(&file)) {
            ledger.release_path(path);
            self.shared().stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if meta.len() > self.worker.limits.max_file_bytes {
            let limit = self.worker.limits.max_file_bytes;
            let message = format!("file is {} bytes, over the limit of {limit} bytes", meta.len());
            self.fail(path, gate, file, None, DecodeFailure::TooLarge.into(), message);
            return Ok(None);
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ledger.release_path(path);
                return Ok(None);
            }
            Err(e) => {
                self.fail(path, gate, file, None, FailureKind::Unreadable, format!("cannot read the file: {e}"));
                return Ok(None);
            }
        };
        if bytes.len() as u64 != meta.len() {
            // Changed while we read it: let it settle again.
            self.shared().send_back(path, None);
            return Ok(None);
        }
        Ok(Some(Read { meta, file, bytes }))
    }

    /// Decodes the content this path owns and sends it on to the batchers,
    /// or records why it cannot be (or, for a file that may still be being
    /// written, sends it back to settle).
    fn decode(&self, path: &Path, gate: Option<Gate>, read: Read, hash: String, model: &LoadedModel) {
        let shared = self.shared();
        let spec = &model.spec.preprocess;
        let mut tensor = shared.tensors.take(spec.tensor_len());
        let started = Instant::now();
        let decoded = preprocess_bytes(&read.bytes, spec, &self.worker.limits, &mut tensor);
        shared.stats.observe_decode(started.elapsed());
        let Read { meta, file, bytes } = read;
        drop(bytes);
        if decoded.is_err() {
            // Every error path below is done with the buffer.
            shared.tensors.give_back(std::mem::take(&mut tensor));
        }
        match decoded {
            Ok(()) => {
                let job =
                    Job { path: path.to_path_buf(), gate, file, hash, tensor, model_sha256: model.sha256.clone() };
                if let Err(e) = self.jobs.send(job) {
                    // The batchers are gone (a stage failed): leave the files for the next start.
                    let job = e.into_inner();
                    shared.ledger.abandon(&job.path, Some(&job.hash));
                    shared.tensors.give_back(job.tensor);
                }
            }
            Err(e) => {
                let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or(Duration::MAX);
                // A file still being written by a slow writer that paused longer
                // than the settle interval can fail this way; while it is young
                // it is looked at again later instead of recorded as an error.
                if e.kind().may_be_partial_write() && age < self.worker.young {
                    tracing::debug!("{}: {e}; modified {age:?} ago, will look again", path_text(path));
                    self.shared().send_back(path, Some(&hash));
                    return;
                }
                self.fail(path, gate, file, Some(hash), e.kind().into(), e.to_string());
            }
        }
    }

    fn fail(
        &self,
        path: &Path,
        gate: Option<Gate>,
        file: FileMeta,
        hash: Option<String>,
        kind: FailureKind,
        message: String,
    ) {
        let outcome = Outcome::Failed { file, content_hash: hash, kind, message };
        self.write(outcome, path, gate);
    }

    fn write(&self, outcome: Outcome, path: &Path, gate: Option<Gate>) {
        if self.writes.send(vec![Item { outcome, paths: vec![path.into()], gate }]).is_err() {
            // The writer is gone (a stage failed): the next start-up scan finds the file again.
            self.shared().ledger.release_path(path);
        }
    }
}
