//! The tract engine on generated models: labels, shapes and refusal of bad models.

use instrument_model::engine::{self, BackendChoice, EngineOptions};
use instrument_model::model::LoadedModel;
use instrument_model::preprocess::{DecodeLimits, preprocess_bytes};
use instrument_model::testkit;
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
    assert!(err.contains("5 columns") && err.contains("3 labels"), "{err}");
}

#[test]
fn garbage_is_not_a_model() {
    let err = LoadedModel::from_bytes(Path::new("x.onnx"), b"definitely not protobuf \xff\xff".to_vec()).unwrap_err();
    assert!(err.to_string().contains("x.onnx"), "{err}");
}

#[test]
fn a_model_that_returns_the_wrong_row_count_is_an_inference_error_not_a_panic() {
    // Passes the dry run (a batch of 2), then answers 3 images with 2 rows.
    let model = LoadedModel::from_bytes(Path::new("two-rows.onnx"), testkit::two_row_color_model(32)).unwrap();
    let (mut engine, _) = engine::open(&model, BackendChoice::Tract, &EngineOptions::default()).unwrap();
    let batch = ndarray::Array4::<f32>::zeros((3, 3, 32, 32));
    let err = engine.run(batch.view()).expect_err("3 images, 2 rows");
    assert!(err.to_string().contains("a batch of 3 produced output shape [2, 3]"), "{err}");
    assert_eq!(engine.run(ndarray::Array4::<f32>::zeros((2, 3, 32, 32)).view()).unwrap().shape(), [2, 3]);
}

#[test]
fn a_model_that_collapses_the_batch_axis_is_refused_when_opened() {
    // Averages over the batch: right for one image, wrong for two.
    let mut proto = instrument_model::onnx::decode(&testkit::color_model(32)).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let mut g = instrument_model::onnx::GraphBuilder::new("collapse");
    g.node(
        "ReduceMean",
        &["logits"],
        "collapsed",
        vec![("axes", instrument_model::onnx::Attr::Ints(vec![0])), ("keepdims", instrument_model::onnx::Attr::Int(1))],
    );
    graph.node.extend(g.build().graph.unwrap().node);
    graph.output[0].name = "collapsed".into();
    let model = LoadedModel::from_bytes(Path::new("collapse.onnx"), instrument_model::onnx::encode(&proto)).unwrap();
    let err = engine::open(&model, BackendChoice::Tract, &EngineOptions::default()).map(|_| ()).expect_err("refused");
    assert!(err.to_string().contains("a batch of 2 produced output shape [1, 3]"), "{err}");
}
