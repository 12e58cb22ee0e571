//! What the daemon is doing, for machines (Prometheus `/metrics`, `/healthz` on
//! an optional local HTTP port) and for people (`instrument-detector status`,
//! which reads the status file the daemon rewrites every two seconds).

use crate::store::{FailureKind, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters for logs, `status` and metrics. Each is written by one stage and
/// read by the reporters; relaxed atomics suffice (no other memory depends on them).
pub(crate) struct Stats {
    /// Candidates held by the intake (settling + ready), set by its tick.
    pub(crate) intake_depth: AtomicU64,
    pub(crate) batch_sizes: Histogram,
    pub(crate) decode_seconds: Histogram,
    pub(crate) infer_seconds: Histogram,
    /// Files offered to the settle stage.
    pub(crate) seen: AtomicU64,
    /// Files found already recorded as they are.
    pub(crate) skipped: AtomicU64,
    /// Files whose content the database already had a result for.
    pub(crate) known: AtomicU64,
    /// Distinct contents run through the model and committed.
    pub(crate) classified: AtomicU64,
    /// File rows written with a new result.
    pub(crate) recorded: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Files dispatched early whose result was dropped because they changed
    /// before their settle interval ended.
    pub(crate) resettled: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) errors: Mutex<BTreeMap<FailureKind, u64>>,
    /// A remote inference server is not answering; batches wait for it.
    pub(crate) server_unreachable: std::sync::atomic::AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            intake_depth: AtomicU64::new(0),
            batch_sizes: Histogram::new(BATCH_BUCKETS),
            decode_seconds: Histogram::new(LATENCY_BUCKETS),
            infer_seconds: Histogram::new(LATENCY_BUCKETS),
            seen: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            known: AtomicU64::new(0),
            classified: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            resettled: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            server_unreachable: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Stats {
    pub(crate) fn observe_decode(&self, took: Duration) {
        self.decode_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn observe_batch(&self, images: usize, took: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.infer_seconds.observe(took.as_secs_f64());
        self.batch_sizes.observe(images as f64);
    }

    /// Counts what a commit wrote.
    pub(crate) fn count_committed(&self, outcomes: &[Outcome]) {
        for o in outcomes {
            match o {
                Outcome::Classified { files, .. } => {
                    self.classified.fetch_add(1, Ordering::Relaxed);
                    self.recorded.fetch_add(files.len() as u64, Ordering::Relaxed);
                }
                Outcome::Failed { kind, .. } => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
                    *m.entry(*kind).or_default() += 1;
                }
                Outcome::Known { .. } | Outcome::Deleted { .. } => {}
            }
        }
    }
}

/// A fixed-bucket histogram with atomic counters (cheap on the hot path).
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    total: AtomicU64,
}

/// Latency buckets in seconds.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Batch-size buckets.
pub(crate) const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {total}");
    }

    pub(crate) fn mean(&self) -> f64 {
        let n = self.total.load(Ordering::Relaxed);
        if n == 0 { 0.0 } else { self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6 / n as f64 }
    }
}

/// A snapshot for people and for the status file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
    pub folder: String,
    pub db: String,
    pub model: String,
    pub model_sha256: String,
    pub backend: String,
    pub files_seen: u64,
    pub contents_classified: u64,
    pub files_recorded: u64,
    pub files_failed: u64,
    /// Files dispatched early whose result was dropped because they changed
    /// before their settle interval ended (they were settled again).
    #[serde(default)]
    pub files_resettled: u64,
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    pub queue_intake: u64,
    pub queue_workers: u64,
    pub queue_batcher: u64,
    pub queue_writer: u64,
    pub batches: u64,
    pub mean_batch_size: f64,
    pub mean_decode_ms: f64,
    pub mean_inference_ms_per_batch: f64,
    /// The inference server (`--backend triton`) is not answering; the
    /// photos wait for it.
    #[serde(default)]
    pub inference_server_unreachable: bool,
}

/// Everything the reporters need, shared with the daemon.
pub(crate) struct Monitor {
    pub(crate) shared: Arc<super::Shared>,
    pub(crate) started_at: String,
    pub(crate) folder: PathBuf,
    pub(crate) db: PathBuf,
    pub(crate) queues: Queues,
}

/// Receivers kept only to read queue lengths. They are receivers, not
/// senders, so they never keep a queue open at shutdown; the reporters are
/// stopped before the stages are joined, so they never keep a failed stage's
/// queue alive either (see `Pipeline::shutdown`).
pub(crate) struct Queues {
    pub(crate) workers: crossbeam_channel::Receiver<super::worker::Work>,
    pub(crate) batcher: crossbeam_channel::Receiver<super::batcher::Job>,
    pub(crate) writer: crossbeam_channel::Receiver<Vec<super::writer::Item>>,
}

impl Monitor {
    fn s(&self) -> &Stats {
        &self.shared.stats
    }

    pub(crate) fn report(&self) -> StatusReport {
        let s = self.s();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatusReport {
            pid: std::process::id(),
            started_at: self.started_at.clone(),
            updated_at: crate::store::now(),
            folder: self.folder.display().to_string(),
            db: self.db.display().to_string(),
            model: self.shared.model.current().name(),
            model_sha256: self.shared.model.current().sha256.clone(),
            backend: self.shared.model.backend().as_str().to_string(),
            files_seen: l(&s.seen),
            contents_classified: l(&s.classified),
            files_recorded: l(&s.recorded) + l(&s.known),
            files_failed: l(&s.failed),
            files_resettled: l(&s.resettled),
            errors_by_kind: s
                .errors
                .lock()
                .map(|m| m.iter().map(|(k, n)| (k.to_string(), *n)).collect())
                .unwrap_or_default(),
            queue_intake: l(&s.intake_depth),
            queue_workers: self.queues.workers.len() as u64,
            queue_batcher: self.queues.batcher.len() as u64,
            queue_writer: self.queues.writer.len() as u64,
            batches: l(&s.batches),
            mean_batch_size: s.batch_sizes.mean(),
            mean_decode_ms: s.decode_seconds.mean() * 1e3,
            mean_inference_ms_per_batch: s.infer_seconds.mean() * 1e3,
            inference_server_unreachable: s.server_unreachable.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn prometheus(&self) -> String {
        let r = self.report();
        let s = self.s();
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter("instrument_detector_files_seen_total", "Files offered to the settle stage.", r.files_seen);
        counter(
            "instrument_detector_contents_classified_total",
            "Distinct contents run through the model.",
            r.contents_classified,
        );
        counter("instrument_detector_files_recorded_total", "File rows written as ok.", r.files_recorded);
        counter("instrument_detector_batches_total", "Inference batches run.", r.batches);
        counter(
            "instrument_detector_files_resettled_total",
            "Files dispatched on close whose result was dropped because they changed before the settle interval ended.",
            r.files_resettled,
        );
        let _ = writeln!(
            out,
            "# HELP instrument_detector_files_failed_total Files recorded as errors, by kind.\n# TYPE instrument_detector_files_failed_total counter"
        );
        for (k, v) in &r.errors_by_kind {
            let _ = writeln!(out, "instrument_detector_files_failed_total{{kind=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP instrument_detector_queue_depth Items waiting in each queue.\n# TYPE instrument_detector_queue_depth gauge"
        );
        for (q, v) in [
            ("intake", r.queue_intake),
            ("workers", r.queue_workers),
            ("batcher", r.queue_batcher),
            ("writer", r.queue_writer),
        ] {
            let _ = writeln!(out, "instrument_detector_queue_depth{{queue=\"{q}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP instrument_detector_inference_server_unreachable 1 while the remote inference server does not answer.\n# TYPE instrument_detector_inference_server_unreachable gauge\ninstrument_detector_inference_server_unreachable {}",
            u8::from(r.inference_server_unreachable)
        );
        s.batch_sizes.render("instrument_detector_batch_size", "Images per inference batch.", &mut out);
        s.decode_seconds.render(
            "instrument_detector_decode_seconds",
            "Read, decode and preprocess time per image.",
            &mut out,
        );
        s.infer_seconds.render("instrument_detector_inference_seconds", "Inference time per batch.", &mut out);
        let _ = writeln!(
            out,
            "# HELP instrument_detector_info The model and backend in use.\n# TYPE instrument_detector_info gauge\ninstrument_detector_info{{backend=\"{}\",model=\"{}\",model_sha256=\"{}\"}} 1",
            r.backend,
            r.model.replace(['"', '\\', '\n'], "_"),
            r.model_sha256
        );
        out
    }
}

/// The status file beside the database.
pub fn status_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(".status.json");
    PathBuf::from(s)
}

/// Rewrites the status file every two seconds (atomically, via rename).
pub(crate) async fn write_status_forever(monitor: Arc<Monitor>) {
    let path = status_path(&monitor.db);
    let tmp = path.with_extension("json.tmp");
    loop {
        if let Ok(json) = serde_json::to_vec_pretty(&monitor.report()) {
            match std::fs::write(&tmp, json) {
                Ok(()) => {
                    let _ = std::fs::rename(&tmp, &path);
                }
                // A full disk: leave the last complete status file, not a torn temporary one.
                Err(_) => {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Serves `/healthz` and `/metrics` on `addr` until the task is dropped.
pub(crate) async fn serve(addr: std::net::SocketAddr, monitor: Arc<Monitor>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    loop {
        let (mut sock, _) = listener.accept().await?;
        let monitor = monitor.clone();
        tokio::spawn(async move {
            // Read the whole request head (it may come in pieces), bounded in size and time.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let req = String::from_utf8_lossy(&buf);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match (path, monitor.shared.health.failure()) {
                ("/healthz", None) => ("200 OK", "text/plain", "ok\n".to_string()),
                ("/healthz", Some(why)) => ("503 Service Unavailable", "text/plain", format!("unhealthy: {why}\n")),
                ("/metrics", _) => ("200 OK", "text/plain; version=0.0.4", monitor.prometheus()),
                _ => ("404 Not Found", "text/plain", "try /metrics or /healthz\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
