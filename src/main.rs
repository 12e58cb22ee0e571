//! The `instrument-detector` command line.

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use instrument_detector::engine::triton::TritonTarget;
use instrument_detector::engine::{BackendChoice, EngineOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// Watches a folder of photos, says which musical instrument each one shows,
/// and keeps the answers in a SQLite database you can query.
///
/// Every subcommand also takes `--config FILE`: a TOML file with the same keys
/// as the flags (top-level keys for `watch`, a `[query]`, `[stats]`, ... table for
/// the others). Flags typed on the command line win.
#[derive(Parser, Debug)]
#[command(name = "instrument-detector", version, about, long_about = None, max_term_width = 100, args_override_self = true)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// Options of every command that runs the model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// ONNX model file (labels and preprocessing are read from its metadata).
    /// Default: the shipped model, models/instrument-lite2.onnx (models/instrument-lite0.onnx is the faster choice).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Inference backend. `auto` tries CUDA, then ONNX Runtime on the CPU, then
    /// tract, and logs why it stepped down; a named backend is that one or an error.
    /// `triton` sends the preprocessed batches to a Triton server (--triton-url).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// The Triton server's HTTP address, for --backend triton. Its model's
    /// config must carry the sha256 of --model's file (parameter `model_sha256`).
    #[arg(long, value_name = "URL")]
    triton_url: Option<String>,
    /// The model's name on the Triton server.
    #[arg(long, value_name = "NAME", default_value = "instrument")]
    triton_model: String,
    /// ONNX Runtime library (libonnxruntime.so.*). Default: $ORT_DYLIB_PATH,
    /// then the project's .venv (made by scripts/setup-python.sh).
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
    /// Inference threads (default: the number of physical cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Images per inference batch (default: 8 on CPU, 64 on CUDA).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
}

impl ModelArgs {
    fn engine_options(&self) -> EngineOptions {
        let triton = self.triton_url.clone().map(|url| TritonTarget { url, model: self.triton_model.clone() });
        EngineOptions { threads: self.threads, ort_lib: self.ort_lib.clone(), cuda_device: 0, ort_lanes: None, triton }
    }
    fn model_path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(commands::default_model_path)
    }
    /// For a command on a library: `--model`, else the library's retrained
    /// model when it has one, else the shipped model.
    fn model_for_library(&self, db: &std::path::Path) -> PathBuf {
        instrument_detector::retrain::model_for(self.model.as_deref(), db, commands::default_model_path())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch a folder and classify every photo put into it, exactly once.
    #[command(args_override_self = true)]
    Watch(commands::watch::WatchArgs),
    /// List results from the database.
    #[command(args_override_self = true)]
    Query(commands::query::QueryArgs),
    /// Counts per label, errors by kind, the models and backends used.
    #[command(args_override_self = true)]
    Stats(commands::query::StatsArgs),
    /// Classify files or folders now, without a database; prints the top-k.
    #[command(args_override_self = true)]
    Classify(commands::classify::ClassifyArgs),
    /// Accuracy on a labelled folder tree (DIR/<class>/<image>).
    #[command(args_override_self = true)]
    Evaluate(commands::evaluate::EvaluateArgs),
    /// Correct a result: the photo's real label, which wins over the model's
    /// and teaches the next retraining.
    #[command(args_override_self = true)]
    Correct(commands::correct::CorrectArgs),
    /// Redo results made by other models (e.g. after retraining).
    #[command(args_override_self = true)]
    Reclassify(commands::reclassify::ReclassifyArgs),
    /// Fit a new head on the dataset plus your corrections (seconds once the
    /// dataset's features are cached) and put it in use, unless it is worse.
    #[command(args_override_self = true)]
    Retrain(commands::retrain::RetrainArgs),
    /// A static HTML page of the results, with thumbnails grouped by instrument.
    #[command(args_override_self = true)]
    Report(commands::report::ReportArgs),
    /// Serve the local web page: browse, search and correct the results.
    #[command(args_override_self = true)]
    Serve(commands::serve::ServeArgs),
    /// Write a statically quantised INT8 (QDQ) copy of a model, calibrated on images.
    #[command(args_override_self = true)]
    Quantize(commands::quantize::QuantizeArgs),
    /// What the running daemon is doing: counts, queues, speed.
    #[command(args_override_self = true)]
    Status(commands::status::StatusArgs),
}

fn init_logging(verbose: u8, quiet: bool, default: &str) {
    use tracing_subscriber::EnvFilter;
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => default,
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,instrument_detector={level},instrument_model={level}")));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = match commands::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}", instrument_detector::output::terminal_safe(&format!("{e:#}")));
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    // The long-running commands say what they are doing; the others only what went wrong.
    let default_level = if matches!(cli.command, Command::Watch(_) | Command::Serve(_)) { "info" } else { "warn" };
    init_logging(cli.verbose, cli.quiet, default_level);
    let result: Result<ExitCode> = match cli.command {
        Command::Watch(a) => commands::watch::run(a),
        Command::Query(a) => commands::query::query(a),
        Command::Stats(a) => commands::query::stats(a),
        Command::Classify(a) => commands::classify::classify(a),
        Command::Evaluate(a) => commands::evaluate::run(a),
        Command::Correct(a) => commands::correct::run(a),
        Command::Reclassify(a) => commands::reclassify::run(a),
        Command::Retrain(a) => commands::retrain::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Serve(a) => commands::serve::run(a),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`query | head`): what it wanted it has, as
        // ripgrep does, end quietly and successfully.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, ripgrep-style.
            eprintln!("error: {}", instrument_detector::output::terminal_safe(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// Whether an error comes from writing to a closed pipe, wherever in its chain.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
