//! `instrument-detector classify` and `evaluate`: the daemon's decode,
//! preprocessing and engine, without a database.

use crate::ModelArgs;
use anyhow::{Context, Result, bail};
use instrument_detector::batch::{FileResult, Plan, classify_paths, expand_paths};
use instrument_detector::calibration::expected_calibration_error;
use instrument_detector::engine::{self, Classifier};
use instrument_detector::model::LoadedModel;
use instrument_detector::open_world::NONE;
use instrument_detector::output::terminal_safe;
use instrument_detector::preprocess::DecodeLimits;
use instrument_detector::store::path_text;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// A labelled tree: DIR/<class>/<image>, class names as in the model's labels.
    dir: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn open_engine(m: &ModelArgs) -> Result<(LoadedModel, Box<dyn Classifier>)> {
    let path = m.model_path();
    let model = LoadedModel::load(&path)?;
    let (engine, _) = engine::open(&model, m.backend, &m.engine_options())
        .with_context(|| format!("cannot run model {}", path.display()))?;
    Ok((model, engine))
}

fn workers() -> usize {
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
    let plan = Plan { workers: workers(), batch, limits: DecodeLimits::default(), top: a.top.max(1) };
    classify_paths(&files, &model, engine.as_mut(), &plan, |i, r| results[i] = Some(r))?;
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (path, r) in files.iter().zip(results) {
        let shown = path_text(path);
        // classify_paths calls back once per file unless the engine failed,
        // and an engine failure has already returned above.
        let r = r.expect("classify_paths reports every file");
        match r {
            Ok(top) => {
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

pub fn evaluate(a: EvaluateArgs) -> Result<ExitCode> {
    let (model, mut engine) = open_engine(&a.model)?;
    // `none` is a class like any other here: the photos under DIR/none should get it.
    let mut all_labels = model.spec.verdict_labels();
    let has_none_folder = a.dir.join(NONE).is_dir();
    if has_none_folder && !all_labels.iter().any(|l| l == NONE) {
        all_labels.push(NONE.into());
    }
    let labels = &all_labels;
    let index: BTreeMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let mut files = Vec::new();
    let mut truth = Vec::new();
    let mut classes: Vec<_> = std::fs::read_dir(&a.dir)
        .with_context(|| format!("cannot read {}", a.dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .collect();
    classes.sort_by_key(|e| e.file_name());
    for class in classes {
        let name = class.file_name().to_string_lossy().into_owned();
        let Some(&k) = index.get(name.as_str()) else {
            bail!(
                "folder '{}' is not one of the model's {} labels ({}), nor '{NONE}' (photos that show no instrument)",
                terminal_safe(&name),
                model.spec.labels.len(),
                model.spec.labels.join(", ")
            );
        };
        for f in expand_paths(&[class.path()])? {
            files.push(f);
            truth.push(k);
        }
    }
    if files.is_empty() {
        bail!("no images under {} (expected DIR/<class>/<image>)", a.dir.display());
    }
    let batch = a.model.batch_size.unwrap_or_else(|| engine.preferred_batch());
    let mut predicted: Vec<Option<(usize, f32)>> = vec![None; files.len()];
    let mut errors = Vec::new();
    let started = Instant::now();
    let plan = Plan { workers: workers(), batch, limits: DecodeLimits::default(), top: 1 };
    classify_paths(&files, &model, engine.as_mut(), &plan, |i, r| match r {
        Ok(top) => predicted[i] = index.get(top[0].label.as_str()).map(|&k| (k, top[0].confidence)),
        Err(e) => errors.push((path_text(&files[i]), e)),
    })?;
    let secs = started.elapsed().as_secs_f64();
    let n = labels.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let (mut correct, mut total) = (0u64, 0u64);
    let mut calibration = Vec::with_capacity(files.len());
    for (t, p) in truth.iter().zip(&predicted) {
        if let Some((k, conf)) = p {
            confusion[*t][*k] += 1;
            total += 1;
            let hit = t == k;
            correct += hit as u64;
            calibration.push((*conf as f64, hit));
        }
    }
    let ece = expected_calibration_error(calibration);
    let accuracy = correct as f64 / total.max(1) as f64;
    // How often a photo that does show an instrument was called `none`.
    let none_k = index.get(NONE).copied();
    let instrument_rows = confusion.iter().enumerate().filter(|(t, _)| Some(*t) != none_k);
    let (instrument_photos, called_none) = instrument_rows
        .fold((0u64, 0u64), |(n, c), (_, row)| (n + row.iter().sum::<u64>(), c + none_k.map_or(0, |k| row[k])));
    let per_class: BTreeMap<&str, serde_json::Value> = labels
        .iter()
        .enumerate()
        .filter(|(k, _)| confusion[*k].iter().sum::<u64>() > 0)
        .map(|(k, l)| {
            let imgs: u64 = confusion[k].iter().sum();
            let tp = confusion[k][k];
            let predicted_k: u64 = confusion.iter().map(|row| row[k]).sum();
            (
                l.as_str(),
                serde_json::json!({
                    "images": imgs, "correct": tp,
                    "accuracy": tp as f64 / imgs as f64,
                    "precision": if predicted_k > 0 { tp as f64 / predicted_k as f64 } else { 0.0 },
                }),
            )
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "accuracy": accuracy, "images": total, "correct": correct,
                "errors": errors.iter().map(|(p, e)| {
                    serde_json::json!({"path": p, "error_kind": e.kind(), "error": e.to_string()})
                }).collect::<Vec<_>>(),
                "per_class": per_class, "labels": labels, "confusion": confusion, "ece": ece,
                "instrument_photos_called_none": called_none, "instrument_photos": instrument_photos,
                "model": model.path, "model_sha256": model.sha256, "backend": engine.backend().as_str(),
                "seconds": secs, "images_per_second": total as f64 / secs,
            }),
        )?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "accuracy {:.2}% ({correct}/{total}) on {}  [{} backend, {:.1} img/s, ECE {:.3}]",
            accuracy * 100.0,
            a.dir.display(),
            engine.backend(),
            total as f64 / secs,
            ece
        )?;
        if none_k.is_some() && instrument_photos > 0 {
            writeln!(
                out,
                "  {called_none} of {instrument_photos} instrument photos called '{NONE}' ({:.1}%)",
                called_none as f64 * 100.0 / instrument_photos as f64
            )?;
        }
        for (l, v) in &per_class {
            let acc = v["accuracy"].as_f64().unwrap_or(0.0);
            if acc < 1.0 {
                let k = index[l];
                let confused: Vec<String> = confusion[k]
                    .iter()
                    .enumerate()
                    .filter(|(j, c)| *j != k && **c > 0)
                    .map(|(j, c)| format!("{} as {}", c, labels[j]))
                    .collect();
                writeln!(out, "  {l:<14} {:>5.1}%  ({})", acc * 100.0, confused.join(", "))?;
            }
        }
        for (p, e) in &errors {
            writeln!(out, "  error ({}): {}: {}", e.kind(), terminal_safe(p), terminal_safe(&e.to_string()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
