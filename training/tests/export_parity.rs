//! Export parity at 224 for both architectures with random weights: the ONNX
//! graph written by the project computes what tch computes (checked in tract
//! through the daemon's engine, and ONNX Runtime where it opens).

use instrument_detector::model::LoadedModel;
use instrument_detector::preprocess::{PreprocessSpec, ResizeMode};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};
use training::export::{build_onnx, check_parity};
use training::nets::{Arch, Network};

/// Random batch-norm statistics, so folding is really exercised.
fn randomise_bn(net: &Network) {
    tch::manual_seed(7);
    tch::no_grad(|| {
        for (name, mut t) in net.vs.variables() {
            let n = t.size()[0];
            if name.ends_with("running_mean") {
                t.copy_(&(Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.1));
            } else if name.ends_with("running_var") {
                t.copy_(&(Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.5 + 0.75));
            } else if t.dim() == 1 && !name.starts_with("fc") && !name.starts_with("_fc") {
                if name.ends_with("weight") {
                    t.copy_(&(Tensor::rand([n], (Kind::Float, Device::Cpu)) * 0.5 + 0.5));
                } else {
                    t.copy_(&(Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.1));
                }
            }
        }
    });
}

fn check(arch: Arch) {
    let net = Network::new(arch, 30, 0.5, Device::Cpu);
    randomise_bn(&net);
    let spec = PreprocessSpec {
        size: 224,
        mean: [0.5; 3],
        std: [0.25; 3],
        resize: ResizeMode::Stretch,
    };
    let classes: Vec<String> = (0..30).map(|i| format!("class{i:02}")).collect();
    let bytes = build_onnx(&net, &spec, &classes, &BTreeMap::new());
    let model = LoadedModel::from_bytes(std::path::Path::new("t.onnx"), bytes.clone()).unwrap();
    assert_eq!(model.spec.labels, classes);
    assert_eq!(model.spec.preprocess, spec);
    assert_eq!(
        model.spec.metadata.get("architecture").map(String::as_str),
        Some(arch.as_str())
    );
    let inputs = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
    let parity = check_parity(&net, &bytes, &inputs).unwrap();
    assert!(!parity.is_empty());
    for p in &parity {
        eprintln!("{arch:?} {p}");
        assert_eq!(p.argmax_agree, 2);
    }
}

#[test]
fn lite0_export_matches_tch_at_224() {
    check(Arch::EfficientNetLite0);
}

#[test]
fn resnet50_export_matches_tch_at_224() {
    check(Arch::ResNet50);
}

#[test]
fn a_broken_graph_fails_parity() {
    let net = Network::new(Arch::EfficientNetLite0, 3, 0.5, Device::Cpu);
    randomise_bn(&net);
    let spec = PreprocessSpec {
        size: 64,
        mean: [0.5; 3],
        std: [0.25; 3],
        resize: ResizeMode::Stretch,
    };
    let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let bytes = build_onnx(&net, &spec, &classes, &BTreeMap::new());
    // Perturb the network after export: tch now disagrees with the graph.
    tch::no_grad(|| {
        let mut b = net.vs.variables()["_fc.bias"].shallow_clone();
        let _ = b.g_add_scalar_(1.0);
    });
    let inputs = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let err = check_parity(&net, &bytes, &inputs).unwrap_err();
    assert!(err.to_string().contains("export parity failed"), "{err}");
}
