//! A retrain end to end on the tiny retrainable colour model (which calls
//! blue pictures green): features, fit, guard, the new file through tract.

use super::*;
use crate::testkit::{color_image, retrainable_color_model, write_color_image};
use image::ImageFormat;

const SIZE: u32 = 16;

/// The toy head's weights are ~10 (a real head's ~0.1), so it needs bigger steps.
fn settings() -> FitSettings {
    FitSettings { learning_rate: 0.05, ..FitSettings::default() }
}

fn base() -> LoadedModel {
    LoadedModel::from_bytes(Path::new("base.onnx"), retrainable_color_model(SIZE)).unwrap()
}

/// `dir/<label>/<n>.png` for each (label, count).
fn split(dir: &Path, photos: &[(&str, u32)], seed: u32) {
    for (label, count) in photos {
        std::fs::create_dir_all(dir.join(label)).unwrap();
        for i in 0..*count {
            write_color_image(&dir.join(label).join(format!("{i}.png")), label, ImageFormat::Png, seed + i).unwrap();
        }
    }
}

fn job<'a>(base: &'a LoadedModel, root: &Path, corrections: Vec<Example>, settings: FitSettings) -> Retrain<'a> {
    Retrain {
        base,
        train: read_split(&root.join("train"), &base.spec.labels).unwrap(),
        valid: read_split(&root.join("valid"), &base.spec.labels).unwrap(),
        corrections,
        settings,
        cache_dir: root.join("cache"),
        backend: BackendChoice::Tract,
        engine: EngineOptions::default(),
    }
}

/// The label the model file gives a picture of `color`, through tract.
fn label_of(bytes: &[u8], color: &str, seed: u32) -> String {
    let model = LoadedModel::from_bytes(Path::new("m.onnx"), bytes.to_vec()).unwrap();
    let (mut engine, _) = engine::open(&model, BackendChoice::Tract, &EngineOptions::default()).unwrap();
    let mut tensor = vec![0.0; model.spec.preprocess.tensor_len()];
    crate::preprocess::tensor_from_rgb(&color_image(color, 40, 30, seed), &model.spec.preprocess, &mut tensor);
    let batch = ndarray::Array4::from_shape_vec((1, 3, SIZE as usize, SIZE as usize), tensor).unwrap();
    let judgement = model.spec.judge(engine.run(batch.view()).unwrap().row(0).as_slice().unwrap());
    if judgement.none.is_some() {
        return NONE.into();
    }
    let best = judgement.probabilities.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    model.spec.labels[best].clone()
}

fn corrections_of(root: &Path, label: &str, target: Target, count: u32) -> Vec<Example> {
    let dir = root.join("library");
    std::fs::create_dir_all(&dir).unwrap();
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{label}-{i}.png"));
            write_color_image(&path, label, ImageFormat::Png, 100 + i).unwrap();
            Example { path, target }
        })
        .collect()
}

#[test]
fn corrections_teach_the_head_and_the_new_file_answers_so() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    split(&root.join("train"), &[("red", 4), ("green", 4)], 1);
    split(&root.join("valid"), &[("red", 2), ("green", 2), ("blue", 2)], 50);
    let base = base();
    assert_eq!(label_of(&base.bytes, "blue", 7), "green", "the mistake the corrections fix");
    let corrections = corrections_of(root, "blue", Target::Label(2), 2);

    let mut seen = Vec::new();
    let made = retrain(job(&base, root, corrections.clone(), settings()), &mut |p| seen.push(p)).unwrap();
    let r = &made.report;
    assert_eq!((r.train_photos, r.valid_photos, r.corrections), (8, 6, 2));
    assert_eq!((r.corrections_right_before, r.corrections_right_after), (0, 2), "{r:?}");
    assert_eq!((r.valid_right_before, r.valid_right_after), (4, 6), "the blue valid photos are right now: {r:?}");
    assert!(!r.refused());
    assert_eq!((r.features_computed, r.features_cached), (16, 0));
    assert!(seen.contains(&Progress::Checking) && seen.iter().any(|p| matches!(p, Progress::Fitting { .. })));
    // A blue picture the corrections never showed, through the new file.
    assert_eq!(label_of(&made.bytes, "blue", 9), "blue");
    assert_eq!(label_of(&made.bytes, "red", 9), "red");
    assert_eq!(label_of(&made.bytes, "green", 9), "green");
    let meta = crate::onnx::metadata_of(&crate::onnx::decode(&made.bytes).unwrap());
    assert_eq!(meta[lineage::PARENT], base.sha256);
    assert_eq!(meta[lineage::CORRECTIONS], "2");

    // The second retrain reads every feature from the cache, and so does one
    // started from the retrained model (same backbone).
    let again = retrain(job(&base, root, corrections.clone(), settings()), &mut |_| {}).unwrap();
    assert_eq!((again.report.features_computed, again.report.features_cached), (0, 16));
    let child = LoadedModel::from_bytes(Path::new("child.onnx"), made.bytes.clone()).unwrap();
    let from_child = retrain(job(&child, root, corrections, settings()), &mut |_| {}).unwrap();
    assert_eq!(from_child.report.features_computed, 0);
}

#[test]
fn a_head_that_loses_valid_photos_is_reported_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    split(&root.join("train"), &[("red", 2), ("green", 2)], 1);
    split(&root.join("valid"), &[("red", 3), ("green", 3)], 50);
    let base = base();
    // A person who says every red picture is green, loudly.
    let wrong = corrections_of(root, "red", Target::Label(1), 3);
    let settings = FitSettings { correction_weight: 100.0, ..settings() };
    let made = retrain(job(&base, root, wrong, settings), &mut |_| {}).unwrap();
    assert_eq!(made.report.valid_right_before, 6);
    assert!(made.report.valid_right_after <= 4, "{:?}", made.report);
    assert!(made.report.refused());
}

#[test]
fn a_model_without_a_linear_head_on_features_is_refused_with_the_reason() {
    let plain = LoadedModel::from_bytes(Path::new("plain.onnx"), crate::testkit::color_model(SIZE)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    split(&tmp.path().join("train"), &[("red", 1)], 1);
    split(&tmp.path().join("valid"), &[("red", 1)], 1);
    let Err(e) = retrain(job(&plain, tmp.path(), vec![], FitSettings::default()), &mut |_| {}) else {
        panic!("a plain model has no head to retrain")
    };
    assert!(e.to_string().contains("no tensor named 'features'"), "{e}");
}

#[test]
fn a_dataset_folder_that_is_not_a_label_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    split(tmp.path(), &[("red", 1), ("purple", 1)], 1);
    let e = read_split(tmp.path(), &base().spec.labels).unwrap_err();
    assert!(e.to_string().contains("'purple'") && e.to_string().contains("red, green, blue"), "{e}");
}
