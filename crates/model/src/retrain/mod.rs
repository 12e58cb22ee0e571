//! Retraining the model's own head on a person's corrections, in seconds.
//!
//! The shipped models are a frozen backbone with a linear head (see
//! [`graph`]). A retrain keeps the backbone and fits a new head on the
//! backbone's features of the original dataset plus the corrected photos:
//!
//! 1. **Features** of every photo ([`features`]), kept in a cache keyed by
//!    backbone and content ([`cache`]): the first retrain pays one backbone
//!    pass per dataset photo (minutes on a laptop CPU), every later one only
//!    the new corrections.
//! 2. **Fit** ([`fit`]): softmax regression from the old head, pulled back
//!    toward it (L2-SP); the loss reads the answer the daemon gives, so an
//!    open-world model's ImageNet expert is in it, and a photo corrected to
//!    `none` is taught as "none of the labels" (a uniform target, so our head
//!    is unsure, which is half of the `none` rule; the other half, ImageNet
//!    seeing no instrument, no retrain can change).
//! 3. **Guard**: the daemon's own verdict ([`ModelSpec::judge`]) on the valid
//!    split, from the features, with the old head and the new; the caller
//!    refuses a new head that gets more than one photo fewer right.
//! 4. **The file**: the old model with the new head and its lineage in the
//!    metadata, run once through a real engine to check it answers what the
//!    fit computed.

mod cache;
mod features;
mod fit;
pub mod graph;

pub use fit::FitSettings;
pub use graph::LinearHead;

use crate::engine::{self, BackendChoice, EngineError, EngineOptions};
use crate::model::{LoadedModel, ModelSpec};
use crate::open_world::NONE;
use fit::Problem;
use graph::Heads;
use ndarray::{Array1, Array2};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Metadata keys of a retrained model's lineage.
pub mod lineage {
    /// The sha256 of the model the head was retrained from.
    pub const PARENT: &str = "retrained_from";
    /// When (RFC 3339, UTC).
    pub const AT: &str = "retrained_at";
    /// How many corrections the new head was fitted on.
    pub const CORRECTIONS: &str = "corrections";
    /// The whole [`Report`](super::Report) as JSON.
    pub const REPORT: &str = "retrain_report";
}

#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error("model {model} cannot be retrained: {why}")]
    NotRetrainable { model: String, why: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is a folder named '{folder}', which is not a label of the model (its labels: {labels})")]
    UnknownLabel { path: PathBuf, folder: String, labels: String },
    #[error("{what} has no photos the backbone could read{}", match path { Some(p) => format!(" ({})", p.display()), None => String::new() })]
    Empty { what: &'static str, path: Option<PathBuf> },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the new model does not answer what the fit computed (largest difference {difference:.2e}); not written")]
    Parity { difference: f32 },
}

/// What a photo should be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Index into the model's labels.
    Label(usize),
    /// No instrument at all.
    None,
}

/// One photo and its right answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub path: PathBuf,
    pub target: Target,
}

/// Every photo of `dir/<label>/...`; a folder `none` holds photos of no instrument.
pub fn read_split(dir: &Path, labels: &[String]) -> Result<Vec<Example>, RetrainError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RetrainError + '_ {
        move |source| RetrainError::Io { path: path.to_path_buf(), source }
    }
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut examples = Vec::new();
    for folder in folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = match labels.iter().position(|l| *l == name) {
            Some(i) => Target::Label(i),
            None if name == NONE => Target::None,
            None => return Err(RetrainError::UnknownLabel { path: folder, folder: name, labels: labels.join(", ") }),
        };
        let mut photos: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map_err(io(&folder))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        photos.sort();
        examples.extend(photos.into_iter().map(|path| Example { path, target }));
    }
    Ok(examples)
}

/// Everything one retrain needs.
pub struct Retrain<'a> {
    pub base: &'a LoadedModel,
    /// The original dataset's train split.
    pub train: Vec<Example>,
    /// Its valid split: the guard.
    pub valid: Vec<Example>,
    pub corrections: Vec<Example>,
    pub settings: FitSettings,
    /// Where the features are kept between retrains.
    pub cache_dir: PathBuf,
    pub backend: BackendChoice,
    pub engine: EngineOptions,
}

/// Where a retrain is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    Features { done: usize, total: usize },
    Fitting { step: usize, steps: usize, loss: f32 },
    Checking,
}

/// What a retrain did and measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub parent_sha256: String,
    pub settings: FitSettings,
    pub train_photos: usize,
    pub corrections: usize,
    /// Of them, corrected to `none`.
    pub corrections_none: usize,
    /// Photos that could not be read (left out), with why.
    pub unreadable: Vec<String>,
    pub features_cached: usize,
    pub features_computed: usize,
    pub feature_seconds: f64,
    pub fit_seconds: f64,
    pub valid_photos: usize,
    pub valid_right_before: usize,
    pub valid_right_after: usize,
    pub corrections_right_before: usize,
    pub corrections_right_after: usize,
    /// The file the features are kept in.
    pub feature_cache: PathBuf,
}

impl Report {
    /// The guard: more than one valid photo fewer right than before.
    pub fn refused(&self) -> bool {
        self.valid_right_after + 1 < self.valid_right_before
    }
}

/// A retrained model: its bytes (not yet written anywhere) and its report.
pub struct Retrained {
    pub bytes: Vec<u8>,
    pub report: Report,
}

/// Runs a retrain; the caller decides where the model goes (and refuses it
/// when [`Report::refused`]).
pub fn retrain(job: Retrain<'_>, progress: &mut dyn FnMut(Progress)) -> Result<Retrained, RetrainError> {
    let heads = Heads::of(job.base)?;
    let backbone = graph::backbone(job.base, heads.own.inputs)?;
    let started = Instant::now();
    let (sets, tally, feature_cache) = job_features(&job, &backbone, heads.own.inputs, progress)?;
    let Sets { train, valid, corrections, unreadable } = sets;
    let feature_seconds = started.elapsed().as_secs_f64();
    let first_train = job.train.first().and_then(|e| e.path.parent()?.parent()).map(Path::to_path_buf);
    if train.is_empty() {
        return Err(RetrainError::Empty { what: "the train split", path: first_train });
    }
    // Nothing to learn: a new head fitted on no correction would only be the
    // same model under a new name, and redo the whole library.
    if corrections.is_empty() {
        return Err(RetrainError::Empty { what: "the corrected photos", path: None });
    }
    let spec = &job.base.spec;
    let fitted: Vec<(&[f32], Target)> = train.iter().chain(&corrections).map(|(f, t)| (f.as_slice(), *t)).collect();
    let weights: Vec<f32> = std::iter::repeat_n(1.0, train.len())
        .chain(std::iter::repeat_n(job.settings.correction_weight, corrections.len()))
        .collect();
    let problem = problem(spec, &heads, &fitted, weights, &job.settings, train.len());
    let fit_started = Instant::now();
    let steps = job.settings.steps;
    let head = fit::fit(&problem, &heads.own, &job.settings, &mut |step, loss| {
        if step % 10 == 0 || step == steps {
            progress(Progress::Fitting { step, steps, loss })
        }
    });
    let fit_seconds = fit_started.elapsed().as_secs_f64();
    progress(Progress::Checking);
    let right =
        |head: &LinearHead, set: &Labelled| set.iter().filter(|(f, t)| verdict(spec, &heads, head, f) == *t).count();
    let report = Report {
        parent_sha256: job.base.sha256.clone(),
        settings: job.settings,
        train_photos: train.len(),
        corrections: corrections.len(),
        corrections_none: corrections.iter().filter(|(_, t)| *t == Target::None).count(),
        unreadable,
        features_cached: tally.cached,
        features_computed: tally.computed,
        feature_seconds,
        fit_seconds,
        valid_photos: valid.len(),
        valid_right_before: right(&heads.own, &valid),
        valid_right_after: right(&head, &valid),
        corrections_right_before: right(&heads.own, &corrections),
        corrections_right_after: right(&head, &corrections),
        feature_cache,
    };
    let bytes = graph::with_head(job.base, &head, &lineage_of(&report));
    check_parity(&bytes, &job, &heads, &head)?;
    Ok(Retrained { bytes, report })
}

/// Features with the right answer of each photo.
type Labelled = Vec<(Vec<f32>, Target)>;

/// The features of the three sets, and the photos left out.
struct Sets {
    train: Labelled,
    valid: Labelled,
    corrections: Labelled,
    unreadable: Vec<String>,
}

/// The features of every photo of the job, how many were cached, and the cache file.
fn job_features(
    job: &Retrain<'_>,
    backbone: &LoadedModel,
    dim: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Sets, features::Tally, PathBuf), RetrainError> {
    let (mut engine, _) = engine::open(backbone, job.backend, &job.engine)?;
    let mut cache = cache::FeatureCache::open(&job.cache_dir, &backbone.sha256, dim)
        .map_err(|source| RetrainError::Io { path: job.cache_dir.clone(), source })?;
    let all: Vec<&Example> = job.train.iter().chain(&job.valid).chain(&job.corrections).collect();
    let paths: Vec<PathBuf> = all.iter().map(|e| e.path.clone()).collect();
    let (features, tally) =
        features::extract(&paths, engine.as_mut(), &mut cache, &backbone.spec.preprocess, &mut |done, total| {
            progress(Progress::Features { done, total })
        })?;
    let mut unreadable = Vec::new();
    let mut sets: [Labelled; 3] = Default::default();
    let bounds = [job.train.len(), job.train.len() + job.valid.len()];
    for (i, (example, f)) in all.iter().zip(features).enumerate() {
        let set = bounds.iter().filter(|&&b| i >= b).count();
        match f {
            Ok(f) => sets[set].push((f, example.target)),
            Err(why) => unreadable.push(why),
        }
    }
    let [train, valid, corrections] = sets;
    Ok((Sets { train, valid, corrections, unreadable }, tally, cache.path().to_path_buf()))
}

/// The fit's problem: features, the ImageNet expert's fixed share of each
/// photo's logits, and the targets: the first `dataset` photos are taught the
/// old model's answers (with [`FitSettings::distill`]) or their smoothed
/// labels, the corrections their smoothed labels.
fn problem(
    spec: &ModelSpec,
    heads: &Heads,
    set: &[(&[f32], Target)],
    weights: Vec<f32>,
    settings: &FitSettings,
    dataset: usize,
) -> Problem {
    let (n, c, d) = (set.len(), heads.own.outputs, heads.own.inputs);
    let features = Array2::from_shape_fn((n, d), |(i, j)| set[i].0[j]);
    let mut prior = Array2::zeros((n, c));
    let smoothing = settings.label_smoothing;
    let mut targets = Array2::from_elem((n, c), smoothing / c as f32);
    for (i, (f, target)) in set.iter().enumerate() {
        let share = expert_share(spec, heads, f);
        if settings.distill && i < dataset {
            // The old head's answer, at temperature 1 as the loss reads it.
            let old: Vec<f32> = apply(&heads.own, f).iter().zip(&share).map(|(l, e)| l + e).collect();
            targets.row_mut(i).assign(&Array1::from(crate::model::softmax(&old, 1.0)));
        } else {
            match target {
                Target::Label(k) => targets[[i, *k]] += 1.0 - smoothing,
                // "None of these": every label equally likely.
                Target::None => targets.row_mut(i).fill(1.0 / c as f32),
            }
        }
        prior.row_mut(i).assign(&Array1::from(share));
    }
    Problem { features, prior, targets, weights: Array1::from(weights) }
}

/// `expert_weight · ln q` of one photo: what the ImageNet expert adds to
/// each of our logits (zero without the open world).
fn expert_share(spec: &ModelSpec, heads: &Heads, f: &[f32]) -> Vec<f32> {
    let (Some(ow), Some(imagenet)) = (&spec.open_world, &heads.imagenet) else {
        return vec![0.0; heads.own.outputs];
    };
    let mut row = vec![0.0; heads.own.outputs];
    row.extend(apply(imagenet, f));
    ow.read(&spec.labels, &row).logits
}

/// `head` on one photo's features.
fn apply(head: &LinearHead, f: &[f32]) -> Vec<f32> {
    head.weight
        .chunks_exact(head.inputs)
        .zip(&head.bias)
        .map(|(w, b)| b + w.iter().zip(f).map(|(w, x)| w * x).sum::<f32>())
        .collect()
}

/// The model's raw output row for one photo, with `own` as our head.
fn output_row(heads: &Heads, own: &LinearHead, f: &[f32]) -> Vec<f32> {
    let mut row = apply(own, f);
    if let Some(imagenet) = &heads.imagenet {
        row.extend(apply(imagenet, f));
    }
    row
}

/// The daemon's verdict on one photo, with `own` as our head.
fn verdict(spec: &ModelSpec, heads: &Heads, own: &LinearHead, f: &[f32]) -> Target {
    let judgement = spec.judge(&output_row(heads, own, f));
    if judgement.none.is_some() {
        return Target::None;
    }
    let best = judgement.probabilities.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    Target::Label(best)
}

/// The lineage entries written into the new model.
fn lineage_of(report: &Report) -> BTreeMap<String, String> {
    BTreeMap::from([
        (lineage::PARENT.to_string(), report.parent_sha256.clone()),
        (lineage::AT.to_string(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        (lineage::CORRECTIONS.to_string(), report.corrections.to_string()),
        (lineage::REPORT.to_string(), serde_json::to_string(report).expect("plain numbers and strings serialise")),
    ])
}

/// Runs the new file on a few valid photos through a real engine and
/// compares with the rows the fit's own arithmetic gives: a head written to
/// the wrong tensor, or transposed, fails here rather than in the daemon.
fn check_parity(bytes: &[u8], job: &Retrain<'_>, heads: &Heads, head: &LinearHead) -> Result<(), RetrainError> {
    let model = LoadedModel::from_bytes(Path::new("retrained.onnx"), bytes.to_vec())
        .map_err(|e| RetrainError::NotRetrainable { model: job.base.name(), why: format!("the new file: {e}") })?;
    let backbone = graph::backbone(job.base, heads.own.inputs)?;
    let (mut whole, _) = engine::open(&model, job.backend, &job.engine)?;
    let (mut trunk, _) = engine::open(&backbone, job.backend, &job.engine)?;
    let spec = &model.spec.preprocess;
    let samples: Vec<&Example> = job.valid.iter().chain(&job.train).take(4).collect();
    let mut largest = 0.0f32;
    for example in samples {
        let Ok(bytes) = std::fs::read(&example.path) else { continue };
        let mut tensor = vec![0.0; spec.tensor_len()];
        if crate::preprocess::preprocess_bytes(&bytes, spec, &Default::default(), &mut tensor).is_err() {
            continue;
        }
        let side = spec.size as usize;
        let batch = ndarray::Array4::from_shape_vec((1, 3, side, side), tensor).expect("one photo");
        let f = trunk.run(batch.view())?.row(0).to_vec();
        let expected = output_row(heads, head, &f);
        let got = whole.run(batch.view())?.row(0).to_vec();
        let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        largest = expected.iter().zip(&got).fold(largest, |m, (e, g)| m.max((e - g).abs() / scale));
    }
    if largest > 1e-3 { Err(RetrainError::Parity { difference: largest }) } else { Ok(()) }
}

#[cfg(test)]
mod tests;
