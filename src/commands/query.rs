//! `instrument-detector query` and `stats`: read-only, safe while the daemon runs.

use anyhow::{Context, Result, bail};
use instrument_detector::output::{csv_safe, terminal_safe};
use instrument_detector::store::query::{self, Filter};
use instrument_detector::store::{FailureKind, FileStatus, Store};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Status {
    Ok,
    Error,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Only results with this top-1 label (`unknown`: below --min-confidence).
    #[arg(long)]
    label: Option<String>,
    /// Results below this confidence (0..1) read as `unknown`.
    #[arg(long, value_name = "C")]
    min_confidence: Option<f64>,
    /// Only results recorded since TIME: RFC 3339 (2026-11-28T10:00:00Z), a
    /// date (2026-11-28), or an age (90s, 15m, 2h, 3days).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only paths matching this glob (`*`, `?`, `[...]`); a relative pattern
    /// matches at any depth, e.g. 'holiday/*.jpg'.
    #[arg(long, value_name = "GLOB")]
    path: Option<String>,
    /// Only classified files, or only files that failed.
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// At most N results.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Count results below this confidence as `unknown`.
    #[arg(long, value_name = "C")]
    min_confidence: Option<f64>,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
}

fn check_confidence(c: Option<f64>) -> Result<()> {
    if let Some(c) = c
        && !(0.0..=1.0).contains(&c)
    {
        bail!("--min-confidence must be between 0 and 1, got {c}");
    }
    Ok(())
}

/// Parses `--since` into the database's timestamp format.
pub fn parse_since(s: &str) -> Result<String> {
    use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
    let s = s.trim();
    let at: DateTime<Utc> = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).context("invalid date")?.and_utc()
    } else if let Ok(age) = humantime::parse_duration(s) {
        Utc::now() - chrono::Duration::from_std(age).context("--since age is too large")?
    } else {
        bail!("--since: cannot read '{s}'; use 2026-11-28T10:00:00Z, 2026-11-28 or an age such as 2h");
    };
    Ok(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub fn query(a: QueryArgs) -> Result<ExitCode> {
    check_confidence(a.min_confidence)?;
    let store = Store::open_ro(&a.db)?;
    let filter = Filter {
        label: a.label,
        min_confidence: a.min_confidence,
        since: a.since.as_deref().map(parse_since).transpose()?,
        path_glob: a.path,
        status: a.status.map(|s| match s {
            Status::Ok => FileStatus::Ok,
            Status::Error => FileStatus::Error,
        }),
        limit: a.limit,
        // Only JSON and CSV show the prediction's model, backend and top 5.
        without_prediction_details: matches!(a.format, Format::Table),
        ..Filter::default()
    };
    let rows = query::results(&store, &filter)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match a.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &rows)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record([
                "path",
                "status",
                "label",
                "confidence",
                "error_kind",
                "error",
                "model_sha256",
                "backend",
                "classified_at",
                "corrected",
            ])?;
            for r in &rows {
                w.write_record([
                    csv_safe(&r.path),
                    r.status.to_string(),
                    r.label.clone().unwrap_or_default(),
                    r.confidence.map(|c| format!("{c:.4}")).unwrap_or_default(),
                    r.error_kind.map(|k| k.to_string()).unwrap_or_default(),
                    csv_safe(r.error.as_deref().unwrap_or_default()),
                    r.model_sha256.clone().unwrap_or_default(),
                    r.backend.clone().unwrap_or_default(),
                    r.classified_at.clone().unwrap_or_default(),
                    r.corrected.to_string(),
                ])?;
            }
            w.flush()?;
        }
        Format::Table => {
            if rows.is_empty() {
                writeln!(out, "no results")?;
            }
            for r in &rows {
                let what = match r.status {
                    // A person's label has no confidence to show.
                    FileStatus::Ok if r.corrected => {
                        format!("{:<12} {:>6}", r.label.as_deref().unwrap_or("?"), "fixed")
                    }
                    FileStatus::Ok => format!(
                        "{:<12} {:>5.1}%",
                        r.label.as_deref().unwrap_or("?"),
                        r.confidence.unwrap_or(0.0) * 100.0
                    ),
                    _ => format!(
                        "ERROR ({}): {}",
                        r.error_kind.map_or("?", FailureKind::as_str),
                        terminal_safe(r.error.as_deref().unwrap_or(""))
                    ),
                };
                writeln!(out, "{what}  {}", terminal_safe(&r.path))?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn stats(a: StatsArgs) -> Result<ExitCode> {
    check_confidence(a.min_confidence)?;
    let store = Store::open_ro(&a.db)?;
    let s = query::summary(&store, a.min_confidence)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "files": s.files, "ok": s.ok, "errors": s.errors, "deleted": s.deleted,
                "distinct_contents": s.distinct_contents,
                "corrections": s.corrections,
                "labels": s.labels.iter().map(|(l, n)| serde_json::json!({"label": l, "count": n})).collect::<Vec<_>>(),
                "error_kinds": s.error_kinds.iter().map(|(k, n)| serde_json::json!({"kind": k, "count": n})).collect::<Vec<_>>(),
                "models": s.models,
                "backends": s.backends.iter().map(|(b, n)| serde_json::json!({"backend": b, "count": n})).collect::<Vec<_>>(),
            }),
        )?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} files: {} classified, {} errors ({} deleted files not counted)",
        s.files, s.ok, s.errors, s.deleted
    )?;
    if s.corrections > 0 {
        writeln!(out, "{} photos corrected by hand (their labels below are the corrections)", s.corrections)?;
    }
    if !s.labels.is_empty() {
        writeln!(out, "\nby label:")?;
        for (l, n) in &s.labels {
            writeln!(out, "  {:<14} {n}", terminal_safe(l))?;
        }
    }
    if !s.error_kinds.is_empty() {
        writeln!(out, "\nerrors by kind:")?;
        for (k, n) in &s.error_kinds {
            writeln!(out, "  {k:<14} {n}")?;
        }
    }
    if !s.models.is_empty() {
        writeln!(out, "\nmodels:")?;
        for m in &s.models {
            writeln!(
                out,
                "  {}  {}  {} predictions",
                &m.sha256[..12.min(m.sha256.len())],
                terminal_safe(&m.name),
                m.predictions
            )?;
        }
    }
    if !s.backends.is_empty() {
        writeln!(out, "\nbackends:")?;
        for (b, n) in &s.backends {
            writeln!(out, "  {b:<14} {n} predictions")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
