//! Export parity with random weights (Lite0 and ResNet50 at 224, Lite2 with its
//! ImageNet head at 260): the ONNX
//! graph written by the project computes what tch computes (checked in tract
//! through the daemon's engine, and ONNX Runtime where it opens).

use instrument_model::model::LoadedModel;
use instrument_model::preprocess::{PreprocessSpec, ResizeMode};
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
    check_net(&Network::new(arch, 30, 0.5, Device::Cpu), 224);
}

fn check_net(net: &Network, size: u32) {
    let arch = net.arch;
    randomise_bn(net);
    let spec = PreprocessSpec {
        size,
        mean: [0.5; 3],
        std: [0.25; 3],
        resize: ResizeMode::Stretch,
    };
    let classes: Vec<String> = (0..30).map(|i| format!("class{i:02}")).collect();
    let mut extra = BTreeMap::new();
    if net.imagenet_classes().is_some() {
        // Without this description the loader refuses the wider rows.
        let rule = instrument_model::open_world::NoneRule {
            max_instrument_mass: 0.03,
            max_confidence: 0.9,
        };
        let ow = training::imagenet::open_world(&classes, 0.5, rule);
        extra.insert(
            instrument_model::open_world::KEY.to_string(),
            ow.to_metadata(),
        );
    }
    let bytes = build_onnx(net, &spec, &classes, &extra);
    let model = LoadedModel::from_bytes(std::path::Path::new("t.onnx"), bytes.clone()).unwrap();
    assert_eq!(model.spec.labels, classes);
    assert_eq!(model.spec.preprocess, spec);
    assert_eq!(
        model.spec.metadata.get("architecture").map(String::as_str),
        Some(arch.as_str())
    );
    let s = size as i64;
    let inputs = Tensor::randn([2, 3, s, s], (Kind::Float, Device::Cpu));
    let parity = check_parity(net, &bytes, &inputs).unwrap();
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
fn lite2_with_its_imagenet_head_exports_and_matches_tch_at_260() {
    // The open-world layout: one output row is our 30 logits, then 1000 ImageNet logits.
    let net = Network::with_imagenet_head(Arch::EfficientNetLite2, 30, 0.5, Device::Cpu, 1000);
    assert_eq!(net.output_width(), 1030);
    check_net(&net, 260);
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
