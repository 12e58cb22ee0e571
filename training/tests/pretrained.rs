//! The pretrained loader checks every name and shape and says what did not match.

use tch::{Device, Kind, Tensor};
use training::nets::{Arch, Network};
use training::weights::load_pretrained;

/// A state dict shaped like ImageNet Lite0: every tensor of the network, the
/// head with 1000 classes, plus the `num_batches_tracked` PyTorch writes.
fn imagenet_like(net: &Network) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = net
        .vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let shape = if name == "_fc.weight" {
                vec![1000, 1280]
            } else if name == "_fc.bias" {
                vec![1000]
            } else {
                t.size()
            };
            (name, Tensor::randn(&shape, (Kind::Float, Device::Cpu)))
        })
        .collect();
    out.push(("_bn0.num_batches_tracked".into(), Tensor::from(7i64)));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn loads_every_tensor_and_reinitialises_a_head_of_another_width() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Network::new(Arch::EfficientNetLite0, 30, 0.5, Device::Cpu);
    let dict = imagenet_like(&net);
    let path = dir.path().join("lite0.safetensors");
    Tensor::write_safetensors(&dict, &path).unwrap();
    let report = load_pretrained(&mut net, &path).unwrap();
    assert_eq!(
        report.loaded,
        net.vs.variables().len() - 2,
        "all but the two head tensors load"
    );
    assert_eq!(
        report.head_reinitialised.len(),
        2,
        "{:?}",
        report.head_reinitialised
    );
    assert_eq!(report.ignored, vec!["_bn0.num_batches_tracked".to_string()]);
    let vars = net.vs.variables();
    let want = &dict
        .iter()
        .find(|(n, _)| n == "_blocks.3._depthwise_conv.weight")
        .unwrap()
        .1;
    let got = &vars["_blocks.3._depthwise_conv.weight"];
    assert!(got.allclose(want, 0.0, 0.0, false), "weights were copied");
    assert_eq!(vars["_fc.weight"].size(), vec![30, 1280]);
}

#[test]
fn wrong_shape_and_missing_names_are_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Network::new(Arch::EfficientNetLite0, 30, 0.5, Device::Cpu);
    let mut dict = imagenet_like(&net);
    for (name, t) in dict.iter_mut() {
        if name == "_blocks.3._depthwise_conv.weight" {
            *t = Tensor::zeros([144, 1, 3, 3], (Kind::Float, Device::Cpu)); // the model needs 5x5
        }
    }
    dict.retain(|(n, _)| n != "_conv_head.weight");
    dict.push((
        "_extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    let path = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&dict, &path).unwrap();
    let err = format!("{:#}", load_pretrained(&mut net, &path).unwrap_err());
    assert!(
        err.contains("shape mismatch: _blocks.3._depthwise_conv.weight: file has [144, 1, 3, 3], model needs [144, 1, 5, 5]"),
        "{err}"
    );
    assert!(
        err.contains("missing in file: _conv_head.weight (model needs shape [1280, 320, 1, 1])"),
        "{err}"
    );
    assert!(
        err.contains("unexpected in file: _extra.weight [2]"),
        "{err}"
    );
    assert!(err.contains("3 problem(s)"), "{err}");
}

#[test]
fn resnet50_uses_torchvision_names() {
    let net = Network::new(Arch::ResNet50, 30, 0.5, Device::Cpu);
    let vars = net.vs.variables();
    for (name, shape) in [
        ("conv1.weight", vec![64, 3, 7, 7]),
        ("bn1.running_var", vec![64]),
        ("layer1.0.downsample.0.weight", vec![256, 64, 1, 1]),
        ("layer1.0.downsample.1.weight", vec![256]),
        ("layer3.5.conv2.weight", vec![256, 256, 3, 3]),
        ("layer4.2.bn3.bias", vec![2048]),
        ("fc.weight", vec![30, 2048]),
    ] {
        assert_eq!(vars.get(name).map(|t| t.size()), Some(shape), "{name}");
    }
    // torchvision's resnet50 state dict has 320 tensors, 53 of them num_batches_tracked.
    assert_eq!(vars.len(), 320 - 53);
}

#[test]
fn missing_file_is_a_clear_error() {
    let mut net = Network::new(Arch::EfficientNetLite0, 3, 0.5, Device::Cpu);
    let err =
        load_pretrained(&mut net, std::path::Path::new("/nonexistent/w.safetensors")).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn the_pypi_lite2_weights_fit_the_network_and_its_imagenet_head() {
    // Written by `scripts/setup-python.sh --training`, which the test command runs.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/weights/efficientnet-lite2.safetensors");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup-python.sh --training",
        path.display()
    );
    let mut net = Network::with_imagenet_head(Arch::EfficientNetLite2, 30, 0.5, Device::Cpu, 1000);
    let report = load_pretrained(&mut net, &path).unwrap();
    // Every tensor but our own (30-wide) head: the backbone and the ImageNet head.
    assert_eq!(report.loaded, net.vs.variables().len() - 2);
    assert_eq!(report.head_reinitialised.len(), 2);
    let (w, b) = net.imagenet_weights().unwrap();
    assert_eq!(w.size(), vec![1000, 1280]);
    assert!(b.is_some());
}
