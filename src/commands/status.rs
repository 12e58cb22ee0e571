//! `instrument-detector status`: what the daemon is doing, for a person.

use anyhow::Result;
use instrument_detector::daemon::metrics::{StatusReport, status_path};
use instrument_detector::output::terminal_safe;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatusArgs) -> Result<ExitCode> {
    // Written with `writeln!`, not `println!`: a reader that closes the pipe
    // early (`status | head -1`) is an error to return, not a panic.
    let mut out = std::io::stdout().lock();
    let path = status_path(&a.db);
    let report: Option<StatusReport> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    // The file is rewritten every 2 s; older than 10 s means the daemon is gone.
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() < 10);
    let running = report.as_ref().is_some_and(|r| fresh && std::path::Path::new(&format!("/proc/{}", r.pid)).exists());
    if a.json {
        writeln!(out, "{}", serde_json::json!({ "running": running, "status": report }))?;
        return Ok(if running { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let Some(r) = report.filter(|_| running) else {
        writeln!(out, "no daemon is running on {} (no fresh {})", a.db.display(), path.display())?;
        return Ok(ExitCode::from(1));
    };
    writeln!(out, "instrument-detector pid {} running since {}", r.pid, r.started_at)?;
    writeln!(out, "  folder   {}", terminal_safe(&r.folder))?;
    writeln!(out, "  database {}", terminal_safe(&r.db))?;
    writeln!(
        out,
        "  model    {} ({}), backend {}",
        terminal_safe(&r.model),
        &r.model_sha256[..12.min(r.model_sha256.len())],
        r.backend
    )?;
    writeln!(
        out,
        "  files    {} seen, {} recorded ok, {} failed; {} contents classified",
        r.files_seen, r.files_recorded, r.files_failed, r.contents_classified
    )?;
    for (k, v) in &r.errors_by_kind {
        writeln!(out, "           {v} {k}")?;
    }
    if r.files_resettled > 0 {
        writeln!(out, "           {} changed while being classified and were settled again", r.files_resettled)?;
    }
    writeln!(
        out,
        "  queues   intake {}, workers {}, batcher {}, writer {}",
        r.queue_intake, r.queue_workers, r.queue_batcher, r.queue_writer
    )?;
    writeln!(
        out,
        "  speed    {} batches, mean batch {:.1}, decode {:.1} ms/image, inference {:.1} ms/batch",
        r.batches, r.mean_batch_size, r.mean_decode_ms, r.mean_inference_ms_per_batch
    )?;
    if r.inference_server_unreachable {
        writeln!(out, "  server   the inference server is not answering: photos wait for it")?;
    }
    Ok(ExitCode::SUCCESS)
}
