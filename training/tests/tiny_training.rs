//! A tiny generated dataset (three colours, 32 px) learns in 2 epochs, and the
//! run folder holds everything it should. Epochs 1-2 train the head on frozen
//! (random-init) features, through ONNX Runtime when it opens, else tch; epoch 3
//! trains everything in tch; a resumed run adds epoch 4.

use image::ImageFormat;
use instrument_detector::testkit::{COLOR_LABELS, color_image, encode};
use std::path::Path;
use training::nets::Arch;
use training::train::{AugmentLevel, DeviceChoice, OptimizerKind, TrainArgs};

fn make_dataset(root: &Path) {
    for (split, n) in [("train", 16u32), ("valid", 6), ("test", 6)] {
        for (ci, label) in COLOR_LABELS.iter().enumerate() {
            let dir = root.join(split).join(label);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let seed = i * 10 + ci as u32 + if split == "train" { 0 } else { 1000 };
                let img = color_image(label, 40 + (i % 3) * 8, 36, seed);
                std::fs::write(
                    dir.join(format!("{i:03}.jpg")),
                    encode(&img, ImageFormat::Jpeg),
                )
                .unwrap();
            }
        }
    }
}

#[test]
fn colours_learn_in_two_epochs_and_fill_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    let out = dir.path().join("run");
    let args = TrainArgs {
        data: data.clone(),
        arch: Arch::EfficientNetLite0,
        pretrained: None,
        epochs: 3,
        out: out.clone(),
        seed: 1,
        batch_size: 16,
        optimizer: OptimizerKind::Adamw,
        lr: 0.003,
        pct_start: 0.3,
        weight_decay: 1e-4,
        clip_value: 0.1,
        dropout: 0.2,
        label_smoothing: 0.1,
        warmup_epochs: 2,
        warmup_lr: Some(0.01),
        augment: AugmentLevel::Light,
        size: 32,
        workers: Some(2),
        threads: None,
        device: DeviceChoice::Cpu,
        amp: false,
        resume: None,
        hard_valid: true,
        max_batches: None,
        frozen_features: training::train::FeatureEngine::Auto,
        no_export: false,
        dataset_name: "colours".into(),
    };
    let report = training::train::run(args).unwrap();
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let loss = |r: &Vec<String>| r[3].parse::<f64>().unwrap();
    assert!(
        loss(&rows[1]) < loss(&rows[0]),
        "training loss falls: {csv}"
    );
    assert!(report.valid_acc > 0.5, "above chance (1/3): {report:?}");
    for f in [
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "metrics.csv",
        "curves.png",
        "confusion.png",
        "report.md",
        "final.json",
        "model.onnx",
    ] {
        assert!(out.join(f).is_file(), "{f} missing from the run folder");
    }
    let model = instrument_detector::model::LoadedModel::load(&out.join("model.onnx")).unwrap();
    assert_eq!(
        model.spec.labels,
        ["blue", "green", "red"],
        "sorted class order"
    );
    assert_eq!(model.spec.preprocess.size, 32);
    assert!((model.spec.preprocess.mean[0] - 127.0 / 255.0).abs() < 1e-6);
    assert!(model.spec.temperature > 0.0);

    // Resume continues from the checkpoint for one more epoch.
    let mut more: TrainArgs = serde_json::from_value(read_args(&out)).unwrap();
    more.epochs = 4;
    more.resume = Some(out.join("last.safetensors"));
    more.no_export = true;
    training::train::run(more).unwrap();
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
}

fn read_args(out: &Path) -> serde_json::Value {
    training::weights::read_meta(&out.join("last.safetensors"))
        .unwrap()
        .args
}

#[test]
fn class_order_is_python_sorted() {
    let dir = tempfile::tempdir().unwrap();
    for c in ["acordian", "Xylophone", "banjo", "Didgeridoo"] {
        std::fs::create_dir_all(dir.path().join("train").join(c)).unwrap();
    }
    let ds = training::data::Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.classes, ["Didgeridoo", "Xylophone", "acordian", "banjo"]);
}

#[test]
fn augmentation_is_reproducible_under_a_seed() {
    let img = color_image("red", 60, 40, 3);
    let spec = training::data::spec_for(Arch::EfficientNetLite0, 32);
    let aug = AugmentLevel::Strong.augment().unwrap();
    let run = |seed| {
        let mut out = vec![0f32; spec.tensor_len()];
        training::data::augment_into(
            &img,
            &spec,
            &aug,
            &mut training::rng::Rng::derive(seed, 1, 2),
            &mut out,
        );
        out
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}
