//! `instrument-detector watch`

use crate::ModelArgs;
use anyhow::Result;
use instrument_detector::daemon::{self, WatchConfig};
use instrument_detector::preprocess::DecodeLimits;
use instrument_detector::web;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// The folder to watch (recursively). Default: `watch`.
    dir: Option<PathBuf>,
    /// The folder, as a flag: what a config file's `dir` key becomes, so a
    /// folder typed on the command line wins and flag values are never
    /// mistaken for one.
    #[arg(long = "dir", value_name = "DIR", hide = true)]
    dir_flag: Option<PathBuf>,
    /// SQLite database for the results (created if missing).
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Poll the folder every SECS seconds instead of relying on file events
    /// (for network shares, which deliver none).
    #[arg(long, value_name = "SECS")]
    poll: Option<f64>,
    /// A file is taken once its size and mtime stay unchanged for this long.
    #[arg(long, default_value = "1000", value_name = "MS")]
    settle_ms: u64,
    /// Full reconcile scan every SECS seconds, as a safety net for lost events.
    #[arg(long, default_value = "300", value_name = "SECS")]
    reconcile_secs: u64,
    /// Longest wait for a batch to fill (only while more images are being decoded).
    #[arg(long, default_value = "20", value_name = "MS")]
    batch_wait_ms: u64,
    /// Decode threads (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Follow symbolic links (by default they are skipped, so nothing outside
    /// the folder is read).
    #[arg(long)]
    follow_symlinks: bool,
    /// Refuse files larger than this many megabytes.
    #[arg(long, default_value = "256", value_name = "MB")]
    max_file_mb: u64,
    /// Refuse images with more than this many megapixels (decompression bombs).
    #[arg(long, default_value = "150", value_name = "MP")]
    max_megapixels: u64,
    /// Most candidates the intake holds at once, and most files sent early
    /// whose results wait for their settle interval (bounds memory during bursts).
    #[arg(long, default_value = "4096", value_name = "N")]
    queue: usize,
    /// Serve Prometheus /metrics and /healthz on this address (e.g.
    /// 127.0.0.1:9464). Off by default; keep it on localhost unless you mean it.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Also hard-link (or copy, across file systems) each classified photo into
    /// DIR/<label>/. Originals are never moved or altered.
    #[arg(long, value_name = "DIR")]
    organize: Option<PathBuf>,
    /// Also serve the web page (browse, search, correct) on this address,
    /// e.g. 127.0.0.1:8380. Off by default.
    #[arg(long, value_name = "ADDR")]
    ui: Option<std::net::SocketAddr>,
    #[command(flatten)]
    page: crate::commands::serve::PageArgs,
}

pub fn run(a: WatchArgs) -> Result<ExitCode> {
    if let Some(p) = a.poll
        && !(p > 0.0 && p.is_finite())
    {
        anyhow::bail!("--poll must be a positive number of seconds, got {p}");
    }
    let limits = DecodeLimits {
        max_file_bytes: a.max_file_mb.saturating_mul(1024 * 1024),
        max_pixels: a.max_megapixels.saturating_mul(1_000_000),
        ..DecodeLimits::default()
    };
    let ui = a.ui.map(|addr| a.page.config(addr, a.db.clone(), &a.model));
    // With no --model, the library's retrained model wins once it has one.
    let retrained = a.model.model.is_none().then(|| instrument_detector::retrain::current(&a.db));
    let cfg = WatchConfig {
        dir: a.dir.or(a.dir_flag).unwrap_or_else(|| PathBuf::from("watch")),
        db: a.db,
        model: a.model.model_path(),
        retrained,
        backend: a.model.backend,
        engine: a.model.engine_options(),
        settle: Duration::from_millis(a.settle_ms),
        poll: a.poll.map(Duration::from_secs_f64),
        reconcile: Duration::from_secs(a.reconcile_secs.max(1)),
        batch_size: a.model.batch_size,
        batch_wait: Duration::from_millis(a.batch_wait_ms),
        workers: a.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        follow_symlinks: a.follow_symlinks,
        limits,
        queue: a.queue,
        metrics: a.metrics,
        organize: a.organize,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        tokio::spawn(handle_signals(cancel.clone()));
        let Some(ui) = ui else { return daemon::run(cfg, cancel).await };
        // The page stops with the daemon, and the daemon with a page that
        // cannot start (an address in use is a mistake to hear about at once).
        let page = tokio::spawn(web::serve(ui, cancel.clone(), None));
        let daemon = daemon::run(cfg, cancel.clone());
        tokio::pin!(daemon);
        tokio::select! {
            done = &mut daemon => { cancel.cancel(); done }
            served = page => {
                let served = served.map_err(anyhow::Error::from).and_then(|r| r);
                cancel.cancel();
                daemon.await?;
                served
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: graceful stop. Second: exit at once.
async fn handle_signals(cancel: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("signal received: finishing in-flight work (send it again to exit at once)");
    cancel.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("second signal: exiting now; unfinished files will be picked up at the next start");
    std::process::exit(130);
}
