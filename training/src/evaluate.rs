//! `training evaluate MODEL.onnx`: the numbers a user gets, measured through
//! the daemon's own decode, preprocessing and engine on an exported model.

use crate::data::{Dataset, HARD_VARIANTS, Mode, Sample, limits, read_rgb};
use crate::eval::{Predictions, Reader, Scorer, argmax, predict};
use anyhow::{Context, Result};
use instrument_model::engine::{self, BackendChoice, Classifier, EngineOptions};
use instrument_model::model::LoadedModel;
use instrument_model::preprocess::{preprocess_bytes, resize_rgb};
use std::path::Path;
use std::sync::Arc;

fn line(name: &str, p: &Predictions, t: f64) -> String {
    format!(
        "{name:<11} {:.4} ({}/{})  ECE at T=1 {:.4}, at T={t:.3} {:.4}",
        p.accuracy(),
        p.correct(),
        p.labels.len(),
        p.ece(1.0),
        p.ece(t)
    )
}

/// How many of `samples` the model at `model_path` answers right, through
/// the daemon's engine and its own preprocessing and open-world reading (so
/// two models are compared as a user would meet them).
pub fn correct_on(
    model_path: &Path,
    samples: &[Sample],
    classes: &[String],
    seed: u64,
) -> Result<usize> {
    let model = LoadedModel::load(model_path)?;
    anyhow::ensure!(
        model.spec.labels == classes,
        "{}: its labels differ from the dataset's classes",
        model_path.display()
    );
    let (mut clf, _) = engine::open(&model, BackendChoice::Auto, &EngineOptions::default())
        .with_context(|| format!("opening {}", model_path.display()))?;
    let reader = model.spec.open_world.as_ref().map(|ow| Reader {
        open_world: ow,
        classes: &model.spec.labels,
    });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut scorer = Scorer::Engine(clf.as_mut());
    let samples = Arc::new(samples.to_vec());
    let p = predict(
        &mut scorer,
        samples,
        &model.spec.preprocess,
        Mode::Plain,
        16,
        workers,
        seed,
    )?;
    Ok(p.read_with(reader).correct())
}

pub fn run(
    model_path: &Path,
    data: &Path,
    backend: BackendChoice,
    big: usize,
    seed: u64,
) -> Result<()> {
    let model = LoadedModel::load(model_path)?;
    let (mut clf, _) = engine::open(&model, backend, &EngineOptions::default())
        .with_context(|| format!("opening {}", model_path.display()))?;
    let ds = Dataset::open(data)?;
    anyhow::ensure!(
        ds.classes == model.spec.labels,
        "the dataset's classes differ from the model's labels"
    );
    let spec = model.spec.preprocess.clone();
    let t = model.spec.temperature as f64;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "model {} (sha256 {}), backend {}",
        model.name(),
        model.sha256,
        clf.backend()
    );
    let reader = model.spec.open_world.as_ref().map(|ow| Reader {
        open_world: ow,
        classes: &model.spec.labels,
    });
    let mut scorer = Scorer::Engine(clf.as_mut());
    let mut measure = |samples: &Arc<Vec<Sample>>, mode: Mode| {
        predict(&mut scorer, samples.clone(), &spec, mode, 16, workers, seed)
            .map(|p| p.read_with(reader))
    };
    let valid = Arc::new(ds.valid.clone());
    let vp = measure(&valid, Mode::Plain)?;
    println!("{}", line("valid", &vp, t));
    let hard_mode = Mode::Hard {
        variants: HARD_VARIANTS.len(),
    };
    let hp = measure(&valid, hard_mode)?;
    println!("{}", line("hard valid", &hp, t));
    for (name, acc) in HARD_VARIANTS
        .iter()
        .zip(hp.per_variant(HARD_VARIANTS.len()))
    {
        println!("  {name:<17} {acc:.4}");
    }
    if !ds.test.is_empty() {
        let tp = measure(&Arc::new(ds.test.clone()), Mode::Plain)?;
        print_test(&tp, &ds.classes, t);
    }
    if big > 0 {
        let (same, n) = same_top1_at_full_size(clf.as_mut(), &model, &ds.valid[..], big)?;
        println!("4000x3000 JPEG vs original thumbnail: same top-1 on {same}/{n}");
    }
    Ok(())
}

/// The test split's lines: the summary, per class, and the confused pairs.
fn print_test(tp: &Predictions, classes: &[String], t: f64) {
    println!("{}", line("test", tp, t));
    let k = classes.len();
    let cm = tp.confusion(k);
    let per: Vec<String> = (0..k)
        .map(|i| {
            format!(
                "{} {}/{}",
                classes[i],
                cm[i][i],
                cm[i].iter().sum::<usize>()
            )
        })
        .collect();
    println!("test per class: {}", per.join(", "));
    println!(
        "test confused: {}",
        crate::eval::confused_pairs(&cm, classes).join(", ")
    );
}

/// Full-size photo vs its thumbnail: each of the first `big` valid images
/// upscaled to a 4000x3000 JPEG, then both files go through the daemon's
/// preprocessing. Returns (same top-1, images compared).
fn same_top1_at_full_size(
    clf: &mut dyn Classifier,
    model: &LoadedModel,
    valid: &[Sample],
    big: usize,
) -> Result<(usize, usize)> {
    let spec = &model.spec.preprocess;
    let (mut same, mut n) = (0, 0);
    let len = spec.tensor_len();
    for s in valid.iter().take(big) {
        let img = read_rgb(&s.path, 0)?;
        let large = resize_rgb(&img, 4000, 3000, None);
        let mut jpeg = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90);
        large.write_with_encoder(enc)?;
        let thumb = std::fs::read(&s.path)?;
        let mut buf = vec![0f32; 2 * len];
        preprocess_bytes(&jpeg, spec, &limits(), &mut buf[..len])?;
        preprocess_bytes(&thumb, spec, &limits(), &mut buf[len..])?;
        let view =
            ndarray::ArrayView4::from_shape((2, 3, spec.size as usize, spec.size as usize), &buf)?;
        let out = clf.run(view)?;
        let rows: Vec<Vec<f32>> = out.outer_iter().map(|r| r.to_vec()).collect();
        let top = |row: &[f32]| argmax(&model.spec.probabilities(row));
        same += (top(&rows[0]) == top(&rows[1])) as usize;
        n += 1;
    }
    Ok((same, n))
}
