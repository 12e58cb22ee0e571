//! `instrument-detector evaluate DIR`: accuracy, per-class accuracy and
//! precision, the confusion matrix and calibration on a labelled folder tree,
//! through the same decode, preprocessing and engine as the daemon.
//!
//! The flow: [`LabelledSet::read`] lists `DIR/<class>/<image>`, [`score`]
//! classifies every file into a [`Confusion`], and [`write_json`] or
//! [`write_text`] prints it.

use super::classify::{open_engine, workers};
use crate::ModelArgs;
use anyhow::{Context, Result, bail};
use instrument_detector::batch::{Classified, FileError, Plan, classify_paths, expand_paths};
use instrument_detector::calibration::expected_calibration_error;
use instrument_detector::engine::Classifier;
use instrument_detector::model::LoadedModel;
use instrument_detector::open_world::NONE;
use instrument_detector::output::terminal_safe;
use instrument_detector::preprocess::DecodeLimits;
use instrument_detector::store::path_text;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// A labelled tree: DIR/<class>/<image>, class names as in the model's labels.
    dir: PathBuf,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: EvaluateArgs) -> Result<ExitCode> {
    let (model, mut engine) = open_engine(&a.model)?;
    let set = LabelledSet::read(&a.dir, &model)?;
    let batch = a.model.batch_size.unwrap_or_else(|| engine.preferred_batch());
    let started = Instant::now();
    let scored = score(&set, &model, engine.as_mut(), batch)?;
    let seconds = started.elapsed().as_secs_f64();
    let run = Run { dir: &a.dir, model: &model, backend: engine.backend().as_str(), seconds };
    let mut out = std::io::stdout().lock();
    if a.json {
        write_json(&mut out, &set, &scored, &run)?
    } else {
        write_text(&mut out, &set, &scored, &run)?
    }
    Ok(ExitCode::SUCCESS)
}

/// The files under `DIR/<class>/`, each with the index of its class.
struct LabelledSet {
    /// The model's verdict labels, plus `none` when DIR has a `none/` folder
    /// (photos that should get it) and the model has no such verdict.
    labels: Vec<String>,
    files: Vec<PathBuf>,
    truth: Vec<usize>,
}

impl LabelledSet {
    fn read(dir: &Path, model: &LoadedModel) -> Result<LabelledSet> {
        let mut labels = model.spec.verdict_labels();
        if dir.join(NONE).is_dir() && !labels.iter().any(|l| l == NONE) {
            labels.push(NONE.into());
        }
        let mut set = LabelledSet { labels, files: Vec::new(), truth: Vec::new() };
        for (name, path) in class_folders(dir)? {
            let Some(k) = set.index_of(&name) else {
                bail!(
                    "folder '{}' is not one of the model's {} labels ({}), nor '{NONE}' (photos that show no instrument)",
                    terminal_safe(&name),
                    model.spec.labels.len(),
                    model.spec.labels.join(", ")
                );
            };
            for f in expand_paths(&[path])? {
                set.files.push(f);
                set.truth.push(k);
            }
        }
        if set.files.is_empty() {
            bail!("no images under {} (expected DIR/<class>/<image>)", dir.display());
        }
        Ok(set)
    }

    fn index_of(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }
}

/// The sub-folders of `dir`, sorted by name.
fn class_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut classes: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    classes.sort();
    Ok(classes)
}

/// What classifying a [`LabelledSet`] gave.
struct Confusion {
    /// `matrix[truth][predicted]`, over the set's labels.
    matrix: Vec<Vec<u64>>,
    /// (confidence, whether right) per classified file, for the ECE.
    calibration: Vec<(f64, bool)>,
    /// Files that could not be classified.
    errors: Vec<(String, FileError)>,
}

fn score(set: &LabelledSet, model: &LoadedModel, engine: &mut dyn Classifier, batch: usize) -> Result<Confusion> {
    let n = set.labels.len();
    let mut c = Confusion { matrix: vec![vec![0; n]; n], calibration: Vec::new(), errors: Vec::new() };
    let plan = Plan { workers: workers(), batch, limits: DecodeLimits::default(), top: 1, hash_contents: false };
    classify_paths(&set.files, model, engine, &plan, |i, r| match r {
        // A verdict outside the set's labels cannot happen (they include
        // every verdict the model gives), so it would only go uncounted.
        Ok(Classified { top, .. }) => {
            if let Some(k) = set.index_of(&top[0].label) {
                let t = set.truth[i];
                c.matrix[t][k] += 1;
                c.calibration.push((top[0].confidence as f64, t == k));
            }
        }
        Err(e) => c.errors.push((path_text(&set.files[i]), e)),
    })?;
    Ok(c)
}

impl Confusion {
    fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    fn correct(&self) -> u64 {
        (0..self.matrix.len()).map(|k| self.matrix[k][k]).sum()
    }

    fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.total().max(1) as f64
    }

    fn ece(&self) -> f64 {
        expected_calibration_error(self.calibration.clone())
    }

    /// (photos that show an instrument, how many of them were called `none`),
    /// when `none` is one of the labels.
    fn called_none(&self, none: Option<usize>) -> (u64, u64) {
        let rows = self.matrix.iter().enumerate().filter(|(t, _)| Some(*t) != none);
        rows.fold((0, 0), |(n, c), (_, row)| (n + row.iter().sum::<u64>(), c + none.map_or(0, |k| row[k])))
    }

    /// Images, correct, accuracy and precision of every label that has images.
    fn per_class<'a>(&self, labels: &'a [String]) -> BTreeMap<&'a str, ClassScore> {
        let predicted = |k: usize| -> u64 { self.matrix.iter().map(|row| row[k]).sum() };
        (0..labels.len())
            .filter_map(|k| {
                let images: u64 = self.matrix[k].iter().sum();
                let correct = self.matrix[k][k];
                let precision = match predicted(k) {
                    0 => 0.0,
                    p => correct as f64 / p as f64,
                };
                (images > 0).then(|| {
                    let accuracy = correct as f64 / images as f64;
                    (labels[k].as_str(), ClassScore { images, correct, accuracy, precision })
                })
            })
            .collect()
    }

    /// "3 as guitar, 1 as sitar": where the images of class `k` went instead.
    fn mistaken_for(&self, k: usize, labels: &[String]) -> String {
        let wrong = self.matrix[k].iter().enumerate().filter(|(j, c)| *j != k && **c > 0);
        wrong.map(|(j, c)| format!("{c} as {}", labels[j])).collect::<Vec<_>>().join(", ")
    }
}

#[derive(serde::Serialize)]
struct ClassScore {
    images: u64,
    correct: u64,
    accuracy: f64,
    precision: f64,
}

/// Where and how the set was scored, for the printed report.
struct Run<'a> {
    dir: &'a Path,
    model: &'a LoadedModel,
    backend: &'a str,
    seconds: f64,
}

fn write_json(out: &mut impl Write, set: &LabelledSet, c: &Confusion, run: &Run) -> Result<()> {
    let (instrument_photos, called_none) = c.called_none(set.index_of(NONE));
    let errors: Vec<_> = c
        .errors
        .iter()
        .map(|(p, e)| serde_json::json!({"path": p, "error_kind": e.kind(), "error": e.to_string()}))
        .collect();
    let report = serde_json::json!({
        "accuracy": c.accuracy(), "images": c.total(), "correct": c.correct(), "errors": errors,
        "per_class": c.per_class(&set.labels), "labels": set.labels, "confusion": c.matrix, "ece": c.ece(),
        "instrument_photos_called_none": called_none, "instrument_photos": instrument_photos,
        "model": run.model.path, "model_sha256": run.model.sha256, "backend": run.backend,
        "seconds": run.seconds, "images_per_second": c.total() as f64 / run.seconds,
    });
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)?;
    Ok(())
}

fn write_text(out: &mut impl Write, set: &LabelledSet, c: &Confusion, run: &Run) -> Result<()> {
    writeln!(
        out,
        "accuracy {:.2}% ({}/{}) on {}  [{} backend, {:.1} img/s, ECE {:.3}]",
        c.accuracy() * 100.0,
        c.correct(),
        c.total(),
        run.dir.display(),
        run.backend,
        c.total() as f64 / run.seconds,
        c.ece()
    )?;
    let none = set.index_of(NONE);
    let (instrument_photos, called_none) = c.called_none(none);
    if none.is_some() && instrument_photos > 0 {
        let share = called_none as f64 * 100.0 / instrument_photos as f64;
        writeln!(out, "  {called_none} of {instrument_photos} instrument photos called '{NONE}' ({share:.1}%)")?;
    }
    for (label, s) in c.per_class(&set.labels) {
        if s.accuracy < 1.0 {
            let k = set.index_of(label).expect("per_class names the set's labels");
            writeln!(out, "  {label:<14} {:>5.1}%  ({})", s.accuracy * 100.0, c.mistaken_for(k, &set.labels))?;
        }
    }
    for (p, e) in &c.errors {
        writeln!(out, "  error ({}): {}: {}", e.kind(), terminal_safe(p), terminal_safe(&e.to_string()))?;
    }
    Ok(())
}
