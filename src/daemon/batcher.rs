//! Batchers: gather decoded tensors into batches, run the engine, rank the
//! labels, and hand the results to the writer.
//!
//! There is one batcher per independent piece of the engine (ORT on the CPU:
//! one per core), all taking from the same queue. A batch holds up to
//! `max_batch` images and waits at most `max_wait` for stragglers, and not at
//! all when no worker is decoding anything that could join it. A model swap
//! takes effect between batches; tensors made for the old model go round again.
//!
//! A batcher stops when the job queue closes (every worker has stopped) and is
//! empty: what was decoded before shutdown is still classified and committed.

use super::Shared;
use super::settle::Gate;
use super::swap::ModelSwap;
use super::writer::Item;
use crate::engine::{Classifier, EngineError};
use crate::model::LoadedModel;
use crate::predict::top_k;
use crate::store::{FailureKind, FileMeta, Outcome, PredictionRow};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The first and the longest wait before a batch goes again to a server
/// that did not answer.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_LAST: Duration = Duration::from_secs(5);

/// A decoded image on its way to the engine.
pub(crate) struct Job {
    pub(crate) path: PathBuf,
    pub(crate) gate: Option<Gate>,
    pub(crate) file: FileMeta,
    pub(crate) hash: String,
    pub(crate) tensor: Vec<f32>,
    /// The model whose preprocessing made `tensor`.
    pub(crate) model_sha256: String,
}

pub(crate) struct Batcher {
    pub(crate) shared: Arc<Shared>,
    pub(crate) model: Arc<LoadedModel>,
    pub(crate) engine: Box<dyn Classifier>,
    pub(crate) max_batch: usize,
    pub(crate) max_wait: Duration,
    /// The batch buffer, kept between batches (no fresh pages for each).
    pub(crate) spare: Vec<f32>,
}

/// One batcher thread.
pub(crate) fn run(mut b: Batcher, jobs: Receiver<Job>, writes: Sender<Vec<Item>>, swaps: Receiver<ModelSwap>) {
    let mut swaps = swaps;
    loop {
        let first = crossbeam_channel::select! {
            recv(swaps) -> swap => {
                match swap {
                    Ok(swap) => b.switch(swap),
                    // No more reloads (shutting down): stop listening for them.
                    Err(_) => swaps = crossbeam_channel::never(),
                }
                continue;
            }
            recv(jobs) -> job => match job {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let batch = b.gather(first, &jobs);
        let batch = b.send_stale_round_again(batch);
        if batch.is_empty() {
            continue;
        }
        if writes.send(b.classify(batch)).is_err() {
            return; // the writer is gone (a stage failed)
        }
    }
}

impl Batcher {
    /// Runs the engine on `input`. A server that does not answer is not the
    /// photos' fault: the batch waits (with backoff) and is sent again, said
    /// once when the server goes and once when it is back. `None` if the
    /// daemon stops meanwhile (the photos have no row, so the next start's
    /// scan finds them).
    fn run_waiting_for_the_server(
        &mut self,
        input: ndarray::ArrayView4<'_, f32>,
    ) -> Option<Result<ndarray::Array2<f32>, EngineError>> {
        // One flag for every batcher: the outage is said once, and so is its end.
        let away = &self.shared.stats.server_unreachable;
        let mut wait = RETRY_FIRST;
        loop {
            // Once it is known to be away, a stopping daemon does not wait on
            // it again: each try may take the request's whole timeout.
            if away.load(Ordering::Relaxed) && self.shared.health.stopping() {
                return None;
            }
            match self.engine.run(input) {
                Err(EngineError::Unreachable { reason, .. }) => {
                    if !away.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            "the inference server is unreachable ({reason}); the photos wait, and are sent again \
                             until it answers"
                        );
                    }
                    self.pause(wait);
                    wait = (wait * 2).min(RETRY_LAST);
                }
                answered => {
                    if away.swap(false, Ordering::Relaxed) {
                        tracing::info!("the inference server answers again");
                    }
                    return Some(answered);
                }
            }
        }
    }

    /// Sleeps `wait`, or less if the daemon starts stopping meanwhile.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.shared.health.stopping() {
            std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        }
    }

    fn switch(&mut self, (model, engine): ModelSwap) {
        tracing::info!(model = %model.path.display(), sha256 = &model.sha256[..12], backend = %engine.backend(), "switched to the new model");
        self.shared.model.set(model.clone(), engine.backend());
        self.model = model;
        self.engine = engine;
    }

    /// Takes what is queued, up to `max_batch`; waits for more only while a
    /// worker is decoding something that could join, and at most `max_wait`.
    fn gather(&self, first: Job, jobs: &Receiver<Job>) -> Vec<Job> {
        let mut batch = vec![first];
        let deadline = Instant::now() + self.max_wait;
        while batch.len() < self.max_batch {
            match jobs.try_recv() {
                Ok(j) => {
                    batch.push(j);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if self.shared.decoding.load(Ordering::SeqCst) == 0 || now >= deadline {
                break;
            }
            match jobs.recv_timeout(deadline - now) {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        batch
    }

    /// Tensors made for a previous model go back to settle and are decoded
    /// again for the current one.
    fn send_stale_round_again(&self, batch: Vec<Job>) -> Vec<Job> {
        let (current, stale): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| j.model_sha256 == self.model.sha256);
        for job in stale {
            self.shared.send_back(&job.path, Some(&job.hash));
        }
        current
    }

    /// Runs one batch and turns each row into a result (or, if the engine
    /// fails, an error row for each file: none is dropped).
    fn classify(&mut self, mut batch: Vec<Job>) -> Vec<Item> {
        let n = batch.len();
        let size = self.model.spec.preprocess.size as usize;
        // Copied once into one contiguous batch (no zero-fill first: every
        // element is written by the copies).
        let mut flat = std::mem::take(&mut self.spare);
        flat.clear();
        flat.reserve(n * self.model.spec.preprocess.tensor_len());
        for job in &mut batch {
            flat.extend_from_slice(&job.tensor);
            self.shared.tensors.give_back(std::mem::take(&mut job.tensor));
        }
        let started = Instant::now();
        let result = match ndarray::Array4::from_shape_vec((n, 3, size, size), flat) {
            Ok(input) => {
                let result = self.run_waiting_for_the_server(input.view());
                self.spare = input.into_raw_vec_and_offset().0;
                match result {
                    Some(result) => result,
                    None => {
                        tracing::warn!(
                            "stopping while the inference server is unreachable: {n} photos are left without a \
                             row, and are classified at the next start"
                        );
                        return Vec::new();
                    }
                }
            }
            // Cannot happen (every tensor was made for this model); if it did,
            // the files get error rows instead of being dropped.
            Err(e) => Err(EngineError::Inference {
                backend: self.engine.backend(),
                reason: format!("{n} tensors do not make a ({n}, 3, {size}, {size}) batch: {e}"),
            }),
        };
        let elapsed = started.elapsed();
        self.shared.stats.observe_batch(n, elapsed);
        tracing::debug!(batch = n, ms = elapsed.as_secs_f64() * 1e3, "batch classified");
        match result {
            Ok(rows) => {
                let backend = self.engine.backend().as_str().to_string();
                let per_ms = elapsed.as_secs_f64() * 1e3 / n as f64;
                let item = |(i, job): (usize, Job)| {
                    let prediction = PredictionRow {
                        content_hash: job.hash,
                        model_sha256: self.model.sha256.clone(),
                        top5: top_k(&self.model.spec, &rows.row(i).to_vec(), 5),
                        backend: backend.clone(),
                        inference_ms: per_ms,
                    };
                    let outcome = Outcome::Classified { prediction, files: vec![job.file] };
                    Item { outcome, paths: vec![job.path], gate: job.gate }
                };
                batch.into_iter().enumerate().map(item).collect()
            }
            Err(e) => {
                tracing::error!("inference failed for a batch of {n}: {e}");
                let item = |job: Job| {
                    let outcome = Outcome::Failed {
                        file: job.file,
                        content_hash: Some(job.hash),
                        kind: FailureKind::Inference,
                        message: e.to_string(),
                    };
                    Item { outcome, paths: vec![job.path], gate: job.gate }
                };
                batch.into_iter().map(item).collect()
            }
        }
    }
}
