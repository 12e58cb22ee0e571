//! A tiny generated dataset (three colours, 32 px) learns in 2 epochs, and the
//! run folder holds everything it should. Epochs 1-2 train the head on frozen
//! (random-init) features, through ONNX Runtime when it opens, else tch; epoch 3
//! trains everything in tch; a resumed run adds epoch 4.

use image::ImageFormat;
use instrument_model::testkit::{COLOR_LABELS, color_image, encode};
use std::path::Path;
use training::nets::Arch;
use training::train::{AugmentLevel, DeviceChoice, OptimizerKind, TrainArgs};

/// Training runs one at a time: libtorch's seed and thread count are process
/// globals, and two runs interleaving their random draws are not reproducible.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    let out = dir.path().join("run");
    // Two photos a person corrected to red join the train split.
    let corrections = dir.path().join("corrections");
    make_corrections(&corrections, &[("red", 2), ("none", 1)]);
    let mut args = tiny_args(&data, &out);
    args.corrections = Some(corrections);
    args.corrections_repeat = 3;
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
    let model = instrument_model::model::LoadedModel::load(&out.join("model.onnx")).unwrap();
    assert_eq!(
        model.spec.labels,
        ["blue", "green", "red"],
        "sorted class order"
    );
    assert_eq!(model.spec.preprocess.size, 32);
    let lineage = &model.spec.metadata["corrections"];
    assert!(
        lineage.starts_with("2 photos from ") && lineage.ends_with("(3x each)"),
        "{lineage}"
    );
    assert!((model.spec.preprocess.mean[0] - 127.0 / 255.0).abs() < 1e-6);
    assert!(model.spec.temperature > 0.0);

    // A run that learns nothing is refused against this model, and kept
    // aside; one as good is kept.
    let good = dir.path().join("good.onnx");
    std::fs::copy(out.join("model.onnx"), &good).unwrap();
    let bad_out = dir.path().join("bad");
    let mut bad = tiny_args(&data, &bad_out);
    (bad.epochs, bad.warmup_epochs, bad.lr, bad.warmup_lr) = (1, 1, 1e-9, Some(1e-9));
    bad.no_worse_than = Some(good.clone());
    let err = training::train::run(bad).unwrap_err().to_string();
    assert!(err.starts_with("refused: the new model answers"), "{err}");
    assert!(!bad_out.join("model.onnx").exists() && bad_out.join("model.refused.onnx").is_file());

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

/// The run every test here starts from: Lite0 at 32 px, random init, 3 epochs
/// (2 head-only), light augmentation.
fn tiny_args(data: &Path, out: &Path) -> TrainArgs {
    TrainArgs {
        data: data.to_path_buf(),
        arch: Arch::EfficientNetLite0,
        pretrained: None,
        epochs: 3,
        out: out.to_path_buf(),
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
        size: Some(32),
        open_world: true,
        expert_weight: 1.0,
        expert_in_loss: false,
        none_max_mass: 0.1,
        none_max_confidence: 0.8,
        l2sp: 0.0,
        negatives: None,
        workers: Some(2),
        threads: None,
        device: DeviceChoice::Cpu,
        amp: false,
        resume: None,
        hard_valid: true,
        max_batches: None,
        frozen_features: training::train::FeatureEngine::Auto,
        no_export: false,
        corrections: None,
        corrections_repeat: 1,
        no_worse_than: None,
        dataset_name: "colours".into(),
    }
}

#[test]
fn an_open_world_run_keeps_the_imagenet_head_and_exports_the_none_rule() {
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    // "ImageNet weights": a random Lite0 with a 1000-class head, as the wheels ship it.
    let pretrained = dir.path().join("imagenet.safetensors");
    let imagenet =
        training::nets::Network::new(Arch::EfficientNetLite0, 1000, 0.2, tch::Device::Cpu);
    imagenet.vs.save(&pretrained).unwrap();
    let negatives = dir.path().join("negatives");
    std::fs::create_dir_all(&negatives).unwrap();
    for i in 0..4u32 {
        let img = color_image("green", 40, 30, 500 + i);
        std::fs::write(
            negatives.join(format!("{i}.png")),
            encode(&img, ImageFormat::Png),
        )
        .unwrap();
    }
    let out = dir.path().join("run");
    let mut args = tiny_args(&data, &out);
    args.pretrained = Some(pretrained);
    args.epochs = 2;
    args.augment = AugmentLevel::Scene;
    args.negatives = Some(negatives);
    // Thresholds no photo can stay under: everything is `none`, which shows
    // the rule's numbers travel from the flags through the file to the verdicts.
    args.none_max_mass = 1.01;
    args.none_max_confidence = 1.01;
    let report = training::train::run(args).unwrap();
    let none = report
        .none
        .expect("an open-world run reports its none rule");
    assert_eq!(
        (none.valid_called_none, none.valid_total),
        (18, 18),
        "{none:?}"
    );
    assert_eq!(
        (none.negatives_called_none, none.negatives_total),
        (4, 4),
        "{none:?}"
    );

    let model = instrument_model::model::LoadedModel::load(&out.join("model.onnx")).unwrap();
    let ow = model
        .spec
        .open_world
        .as_ref()
        .expect("the exported model declares its open world");
    assert_eq!(ow.imagenet_classes, 1000);
    assert_eq!(ow.none_rule.max_instrument_mass, 1.01);
    assert_eq!(model.spec.output_width(), 3 + 1000);
    // The ImageNet head is the pretrained file's, untouched by training.
    let meta = training::weights::read_meta(&out.join("best.safetensors")).unwrap();
    assert_eq!(meta.imagenet_classes, Some(1000));
    let (trained, _) =
        training::weights::open_checkpoint(&out.join("best.safetensors"), tch::Device::Cpu)
            .unwrap();
    let (w, _) = trained.imagenet_weights().unwrap();
    let (w0, _) = imagenet.head_weights();
    assert!(
        w.allclose(w0, 0.0, 0.0, false),
        "the ImageNet head must not train"
    );
}

/// `dir/<label>/<n>.jpg`, as `instrument-detector correct --export` writes them.
fn make_corrections(dir: &Path, photos: &[(&str, u32)]) {
    for (label, n) in photos {
        std::fs::create_dir_all(dir.join(label)).unwrap();
        for i in 0..*n {
            let colour = if *label == "none" { "green" } else { label };
            let img = color_image(colour, 40, 36, 5000 + i);
            std::fs::write(
                dir.join(label).join(format!("{i}.jpg")),
                encode(&img, ImageFormat::Jpeg),
            )
            .unwrap();
        }
    }
}

#[test]
fn corrections_join_the_train_split_and_a_label_the_dataset_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data);
    let mut ds = training::data::Dataset::open(&data).unwrap();
    let before = ds.train.len();
    let corrections = dir.path().join("corrections");
    make_corrections(&corrections, &[("blue", 2), ("none", 3)]);
    let added = ds.add_corrections(&corrections, 2).unwrap();
    assert_eq!((added.photos, added.none), (2, 3));
    assert_eq!(
        ds.train.len(),
        before + 4,
        "each photo twice; none left out"
    );
    let blue = ds.classes.iter().position(|c| c == "blue").unwrap();
    assert!(ds.train[before..].iter().all(|s| s.label == blue));
    make_corrections(&corrections, &[("purple", 1)]);
    let err = ds.add_corrections(&corrections, 1).unwrap_err().to_string();
    assert!(
        err.contains("'purple' is not a class of the dataset"),
        "{err}"
    );
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
