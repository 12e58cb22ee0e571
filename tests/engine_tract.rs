//! The tract engine on generated models: labels, shapes and refusal of bad models.

use instrument_detector::engine::{self, BackendChoice, EngineOptions};
use instrument_detector::model::LoadedModel;
use instrument_detector::preprocess::{DecodeLimits, preprocess_bytes};
use instrument_detector::testkit;
use std::path::Path;

#[test]
fn color_model_classifies_colours_on_tract() {
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(32)).unwrap();
    let (mut engine, _) = engine::open(&model, BackendChoice::Tract, &EngineOptions::default()).unwrap();
    let spec = &model.spec.preprocess;
    let labels = ["blue", "red", "green", "red"];
    let mut batch = ndarray::Array4::<f32>::zeros((labels.len(), 3, 32, 32));
    for (i, label) in labels.iter().enumerate() {
        let bytes = testkit::encode(&testkit::color_image(label, 50, 40, i as u32), image::ImageFormat::Png);
        let slice = batch.index_axis_mut(ndarray::Axis(0), i);
        preprocess_bytes(&bytes, spec, &DecodeLimits::default(), slice.into_slice().unwrap()).unwrap();
    }
    let out = engine.run(batch.view()).unwrap();
    assert_eq!(out.shape(), [4, 3]);
    for (i, label) in labels.iter().enumerate() {
        let probs = model.spec.probabilities(out.row(i).as_slice().unwrap());
        let best = (0..3).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap();
        assert_eq!(model.spec.labels[best], *label);
        assert!(probs[best] > 0.99);
    }
}

#[test]
fn output_width_must_match_labels() {
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let bytes = testkit::color_model_with(16, &labels, 5);
    let err = LoadedModel::from_bytes(Path::new("bad.onnx"), bytes).unwrap_err().to_string();
    assert!(err.contains("5 classes") && err.contains("3 labels"), "{err}");
}

#[test]
fn garbage_is_not_a_model() {
    let err = LoadedModel::from_bytes(Path::new("x.onnx"), b"definitely not protobuf \xff\xff".to_vec()).unwrap_err();
    assert!(err.to_string().contains("x.onnx"), "{err}");
}
