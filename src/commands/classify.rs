//! `instrument-detector classify`: the daemon's decode, preprocessing and
//! engine, without a database.

use crate::ModelArgs;
use anyhow::{Context, Result, bail};
use instrument_detector::batch::{Classified, FileResult, Plan, classify_paths, expand_paths};
use instrument_detector::engine::{self, Classifier};
use instrument_detector::model::LoadedModel;
use instrument_detector::output::terminal_safe;
use instrument_detector::preprocess::DecodeLimits;
use instrument_detector::store::path_text;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// Image files or folders (searched recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// How many labels to print per image.
    #[arg(long, default_value = "3", value_name = "K")]
    top: usize,
    /// One JSON object per line: path, label, confidence, topk, or error.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub(super) fn open_engine(m: &ModelArgs) -> Result<(LoadedModel, Box<dyn Classifier>)> {
    let path = m.model_path();
    let model = LoadedModel::load(&path)?;
    let (engine, _) = engine::open(&model, m.backend, &m.engine_options())
        .with_context(|| format!("cannot run model {}", path.display()))?;
    Ok((model, engine))
}

pub(super) fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

pub fn classify(a: ClassifyArgs) -> Result<ExitCode> {
    let files = expand_paths(&a.paths)?;
    if files.is_empty() {
        bail!("no files found under the given paths");
    }
    let (model, mut engine) = open_engine(&a.model)?;
    let batch = a.model.batch_size.unwrap_or_else(|| engine.preferred_batch());
    let mut results: Vec<Option<FileResult>> = files.iter().map(|_| None).collect();
    let plan =
        Plan { workers: workers(), batch, limits: DecodeLimits::default(), top: a.top.max(1), hash_contents: false };
    classify_paths(&files, &model, engine.as_mut(), &plan, |i, r| results[i] = Some(r))?;
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (path, r) in files.iter().zip(results) {
        let shown = path_text(path);
        // classify_paths calls back once per file unless the engine failed,
        // and an engine failure has already returned above.
        let r = r.expect("classify_paths reports every file");
        match r {
            Ok(Classified { top, .. }) => {
                if a.json {
                    let best = &top[0];
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "path": shown, "label": best.label, "confidence": best.confidence,
                            "topk": top, "backend": engine.backend().as_str(), "model_sha256": model.sha256,
                        })
                    )?;
                } else {
                    let ranked: Vec<String> =
                        top.iter().map(|s| format!("{} {:.1}%", s.label, s.confidence * 100.0)).collect();
                    writeln!(out, "{}: {}", terminal_safe(&shown), ranked.join(", "))?;
                }
            }
            Err(e) => {
                failed += 1;
                if a.json {
                    let line = serde_json::json!({"path": shown, "error_kind": e.kind(), "error": e.to_string()});
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{}: error ({}): {}",
                        terminal_safe(&shown),
                        e.kind(),
                        terminal_safe(&e.to_string())
                    )?;
                }
            }
        }
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
