//! The ONNX Runtime engine against tract, on generated models and images.
//!
//! Needs the ONNX Runtime library, found the way the daemon finds it
//! (`ORT_DYLIB_PATH`, else the project's `.venv` from `scripts/setup-python.sh`).

use image::{ImageFormat, RgbImage};
use instrument_model::engine::{self, Backend, BackendChoice, Classifier, EngineError, EngineOptions};
use instrument_model::model::{LoadedModel, ModelSpec, keys};
use instrument_model::onnx::{self, Attr, Dim, GraphBuilder, dtype};
use instrument_model::preprocess::{DecodeLimits, PreprocessSpec, ResizeMode, preprocess_bytes};
use instrument_model::testkit;
use ndarray::{Array4, Axis};
use std::path::Path;

/// A small deterministic generator (xorshift), so the weights and images are
/// the same on every run.
struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        self.next_u32() as f32 / (u32::MAX as f32 / 2.0) - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

/// A real (if tiny) CNN: Conv(3→8, 3x3, stride 2) + Relu, Conv(8→16, 3x3) +
/// Relu, GlobalAveragePool, Flatten, Gemm(16→classes), pseudo-random weights.
fn conv_model(size: u32, classes: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut g = GraphBuilder::new("conv-test");
    let n = Dim::Named("N".into());
    let s = size as i64;
    g.input("input", dtype::FLOAT, &[n.clone(), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)]);
    let w1 = g.constant_f32("w1", &[8, 3, 3, 3], &rng.vec(8 * 27, 0.4));
    let b1 = g.constant_f32("b1", &[8], &rng.vec(8, 0.1));
    let c1 = g.node(
        "Conv",
        &["input", &w1, &b1],
        "c1",
        vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    );
    let r1 = g.node("Relu", &[&c1], "r1", vec![]);
    let w2 = g.constant_f32("w2", &[16, 8, 3, 3], &rng.vec(16 * 72, 0.25));
    let b2 = g.constant_f32("b2", &[16], &rng.vec(16, 0.1));
    let c2 = g.node(
        "Conv",
        &[&r1, &w2, &b2],
        "c2",
        vec![("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(vec![1, 1, 1, 1]))],
    );
    let r2 = g.node("Relu", &[&c2], "r2", vec![]);
    let pooled = g.node("GlobalAveragePool", &[&r2], "pooled", vec![]);
    let flat = g.node("Flatten", &[&pooled], "flat", vec![("axis", Attr::Int(1))]);
    let w3 = g.constant_f32("w3", &[classes as i64, 16], &rng.vec(classes * 16, 2.0));
    let b3 = g.constant_f32("b3", &[classes as i64], &rng.vec(classes, 0.5));
    g.node("Gemm", &[&flat, &w3, &b3], "logits", vec![("transB", Attr::Int(1))]);
    g.output("logits", dtype::FLOAT, &[n, Dim::Fixed(classes as i64)]);
    let labels: Vec<String> = (0..classes).map(|i| format!("class{i}")).collect();
    // ImageNet's normalisation, what a model without `mean`/`std` gets.
    let preprocess =
        PreprocessSpec { size, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], resize: ResizeMode::Stretch };
    let mut spec = ModelSpec::new(labels, preprocess);
    spec.metadata.insert(keys::ARCHITECTURE.into(), "conv-test".into());
    g.metadata_all(spec.to_metadata());
    onnx::encode(&g.build())
}

/// Several varied images: the colour images of the testkit, noise, and
/// gradients, decoded and preprocessed exactly as the daemon does.
fn images(model: &LoadedModel) -> Array4<f32> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut pictures: Vec<RgbImage> = Vec::new();
    for (i, label) in ["red", "green", "blue", "red", "blue"].iter().enumerate() {
        pictures.push(testkit::color_image(label, 61, 47, i as u32));
    }
    for _ in 0..4 {
        pictures.push(RgbImage::from_fn(40, 52, |_, _| {
            let v = rng.next_u32();
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        }));
    }
    for k in 0..3u32 {
        pictures.push(RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * (k + 1) * 2) as u8])
        }));
    }
    let size = model.spec.preprocess.size as usize;
    let mut batch = Array4::<f32>::zeros((pictures.len(), 3, size, size));
    for (i, picture) in pictures.iter().enumerate() {
        let bytes = testkit::encode(picture, ImageFormat::Png);
        let slice = batch.index_axis_mut(Axis(0), i);
        preprocess_bytes(&bytes, &model.spec.preprocess, &DecodeLimits::default(), slice.into_slice().unwrap())
            .unwrap();
    }
    batch
}

fn open(model: &LoadedModel, choice: BackendChoice) -> Box<dyn Classifier> {
    match engine::open(model, choice, &EngineOptions::default()) {
        Ok((engine, _)) => engine,
        Err(e) => panic!("opening {choice:?}: {e}"),
    }
}

fn top1(p: &[f32]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()
}

/// Runs the same batch on ORT (whole, and one image at a time) and on tract,
/// and requires the same top-1 and softmax within 1e-4 for every image.
fn assert_parity(model: &LoadedModel) {
    let batch = images(model);
    let mut ort = open(model, BackendChoice::OrtCpu);
    assert_eq!(ort.backend(), Backend::OrtCpu);
    let mut tract = open(model, BackendChoice::Tract);
    let from_ort = ort.run(batch.view()).unwrap();
    let from_tract = tract.run(batch.view()).unwrap();
    // One row per image: the labels' scores (and an open-world model's ImageNet logits).
    assert_eq!(from_ort.shape(), [batch.len_of(Axis(0)), model.spec.output_width()]);
    assert_eq!(from_ort.shape(), from_tract.shape());
    let mut worst = 0.0f32;
    let mut winners = std::collections::BTreeSet::new();
    for i in 0..batch.len_of(Axis(0)) {
        let p_ort = model.spec.probabilities(from_ort.row(i).as_slice().unwrap());
        let p_tract = model.spec.probabilities(from_tract.row(i).as_slice().unwrap());
        assert_eq!(top1(&p_ort), top1(&p_tract), "image {i}: ort {p_ort:?} tract {p_tract:?}");
        let none = |row: ndarray::ArrayView1<f32>| model.spec.judge(row.as_slice().unwrap()).none.is_some();
        assert_eq!(none(from_ort.row(i)), none(from_tract.row(i)), "image {i}: the none verdict differs");
        winners.insert(top1(&p_ort));
        for (a, b) in p_ort.iter().zip(&p_tract) {
            worst = worst.max((a - b).abs());
        }
        // One image alone gives the same answer as inside the batch.
        let single = ort.run(batch.slice(ndarray::s![i..i + 1, .., .., ..])).unwrap();
        for (a, b) in single.row(0).iter().zip(from_ort.row(i)) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "image {i} alone: {a} vs {b} in the batch");
        }
    }
    eprintln!("{}: max |softmax(ort) - softmax(tract)| = {worst:e}, top-1 classes seen {winners:?}", model.name());
    assert!(worst <= 1e-4, "softmax differs by {worst}");
}

#[test]
fn ort_and_tract_agree_on_the_colour_model() {
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(32)).unwrap();
    assert_parity(&model);
}

#[test]
fn ort_and_tract_agree_on_a_convolutional_model() {
    for (seed, size, classes) in [(1u64, 32u32, 5usize), (77, 48, 7)] {
        let model =
            LoadedModel::from_bytes(Path::new(&format!("conv-{seed}.onnx")), conv_model(size, classes, seed)).unwrap();
        assert_parity(&model);
    }
}

#[test]
fn colour_model_classifies_colours_on_ort() {
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(24)).unwrap();
    let mut engine = open(&model, BackendChoice::OrtCpu);
    assert_eq!(engine.preferred_batch(), 8);
    let batch = images(&model);
    let out = engine.run(batch.view()).unwrap();
    for (i, label) in ["red", "green", "blue", "red", "blue"].iter().enumerate() {
        let p = model.spec.probabilities(out.row(i).as_slice().unwrap());
        assert_eq!(model.spec.labels[top1(&p)], *label);
        assert!(p[top1(&p)] > 0.99);
    }
}

#[test]
fn a_non_contiguous_batch_gives_the_same_answer() {
    let model = LoadedModel::from_bytes(Path::new("conv.onnx"), conv_model(32, 4, 5)).unwrap();
    let mut engine = open(&model, BackendChoice::OrtCpu);
    let batch = images(&model);
    let expected = engine.run(batch.view()).unwrap();
    // The same numbers stored NHWC and viewed as NCHW: not standard layout.
    let nhwc = batch.view().permuted_axes([0, 2, 3, 1]).as_standard_layout().into_owned();
    let view = nhwc.view().permuted_axes([0, 3, 1, 2]);
    assert!(!view.is_standard_layout());
    let got = engine.run(view).unwrap();
    assert_eq!(got.shape(), expected.shape());
    for (a, b) in got.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn explicit_thread_count_is_accepted() {
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(16)).unwrap();
    let options = EngineOptions { threads: Some(1), ..Default::default() };
    let (mut engine, fallbacks) =
        engine::open(&model, BackendChoice::OrtCpu, &options).map_err(|e| e.to_string()).unwrap();
    assert!(fallbacks.is_empty());
    let out = engine.run(Array4::<f32>::zeros((3, 3, 16, 16)).view()).unwrap();
    assert_eq!(out.shape(), [3, 3]);
}

/// A batch split across several single-threaded sessions ("lanes") gives
/// the rows, in order, that one session gives, for every way the rows divide.
#[test]
fn lanes_split_a_batch_and_keep_its_order() {
    let model = LoadedModel::from_bytes(Path::new("conv.onnx"), conv_model(24, 5, 7)).unwrap();
    let open_lanes = |lanes: usize| {
        let options = EngineOptions { threads: Some(3), ort_lanes: Some(lanes), ..Default::default() };
        engine::open(&model, BackendChoice::OrtCpu, &options).map_err(|e| e.to_string()).unwrap().0
    };
    let (mut one, mut three) = (open_lanes(1), open_lanes(3));
    let all = images(&model);
    assert_eq!(all.shape()[0], 12);
    for rows in [1usize, 2, 3, 4, 5, 7, 12] {
        let batch = all.slice(ndarray::s![..rows, .., .., ..]);
        let expected = one.run(batch).unwrap();
        let got = three.run(batch).unwrap();
        assert_eq!(got.shape(), expected.shape(), "{rows} rows");
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{rows} rows: {a} vs {b}");
        }
    }
    // Different images per row, so a reordering would show.
    let out = three.run(all.view()).unwrap();
    let rows: Vec<Vec<f32>> = out.rows().into_iter().map(|r| r.to_vec()).collect();
    assert!(rows.windows(2).any(|w| w[0] != w[1]), "the test images must differ");
}

#[test]
fn cuda_without_a_gpu_fails_clearly() {
    // This machine has no GPU (and the CPU wheel has no CUDA provider): naming
    // the CUDA backend must be an error that says CUDA, never a quiet CPU run.
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(16)).unwrap();
    match engine::open(&model, BackendChoice::Cuda, &EngineOptions::default()) {
        Ok((engine, _)) => {
            // Only acceptable where a GPU really is present.
            assert_eq!(engine.backend(), Backend::Cuda);
            eprintln!("CUDA is available here; the failure path was not exercised");
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("--backend cuda: {msg}");
            assert!(matches!(e, EngineError::Unavailable { backend: Backend::Cuda, .. }), "{msg}");
            assert!(msg.contains("CUDA"), "{msg}");
        }
    }
}

#[test]
fn auto_steps_down_from_cuda_to_ort_cpu_with_a_reason() {
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(16)).unwrap();
    let (engine, fallbacks) = match engine::open(&model, BackendChoice::Auto, &EngineOptions::default()) {
        Ok(x) => x,
        Err(e) => panic!("auto: {e}"),
    };
    if engine.backend() == Backend::Cuda {
        eprintln!("CUDA is available here; nothing to step down from");
        return;
    }
    assert_eq!(engine.backend(), Backend::OrtCpu);
    assert_eq!(fallbacks.len(), 1, "{fallbacks:?}");
    assert_eq!(fallbacks[0].from, Backend::Cuda);
    assert!(fallbacks[0].reason.contains("CUDA"), "{}", fallbacks[0].reason);
    let (lib, source) = engine::ort_backend::loaded_library().expect("ORT is loaded");
    eprintln!("auto → ort-cpu, library {} (from {source}); CUDA step: {}", lib.display(), fallbacks[0].reason);
}

#[test]
fn ort_and_tract_agree_on_the_shipped_models() {
    // Whatever models ship in models/ (none in a bare checkout: then this only says so).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "onnx")).collect()
        })
        .unwrap_or_default();
    paths.sort();
    if paths.is_empty() {
        eprintln!("no models/*.onnx here; shipped-model parity not checked");
    }
    for path in paths {
        let model = LoadedModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_parity(&model);
    }
}
