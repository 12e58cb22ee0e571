//! INT8 QDQ quantisation on a small generated model: the quantised graph is
//! valid (tract and, where available, ONNX Runtime run it), its outputs stay
//! close to the fp32 model's, and its metadata is kept and marked.

use crate::common::skip_or_fail_in_ci;
use image::{ImageFormat, RgbImage};
use instrument_model::engine::{self, BackendChoice, EngineOptions};
use instrument_model::model::{LoadedModel, ModelSpec};
use instrument_model::onnx::{self, Attr, Dim, GraphBuilder, dtype};
use instrument_model::preprocess::{PreprocessSpec, ResizeMode};
use instrument_model::quantize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SIZE: i64 = 16;

/// Conv(3x3) -> Clip(0,6) -> Conv(1x1) -> Add(residual) -> depthwise Conv ->
/// Clip -> GlobalAveragePool -> Flatten -> Gemm: the op pattern of the shipped
/// EfficientNet-Lite0, in miniature.
fn small_model() -> Vec<u8> {
    let mut state = 7u64;
    let mut rand = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut g = GraphBuilder::new("small");
    let n = Dim::Named("N".into());
    g.input("input", dtype::FLOAT, &[n.clone(), Dim::Fixed(3), Dim::Fixed(SIZE), Dim::Fixed(SIZE)]);
    g.constant_f32("clip_min", &[], &[0.0]);
    g.constant_f32("clip_max", &[], &[6.0]);
    let conv = |g: &mut GraphBuilder,
                rand: &mut dyn FnMut() -> f32,
                x: &str,
                cin: i64,
                cout: i64,
                k: i64,
                groups: i64,
                out: &str| {
        let w: Vec<f32> = (0..cout * cin / groups * k * k).map(|_| rand() * 1.5).collect();
        let b: Vec<f32> = (0..cout).map(|_| rand() * 0.2).collect();
        let wn = g.constant_f32(&format!("{out}_w"), &[cout, cin / groups, k, k], &w);
        let bn = g.constant_f32(&format!("{out}_b"), &[cout], &b);
        let p = k / 2;
        g.node(
            "Conv",
            &[x, &wn, &bn],
            out,
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("group", Attr::Int(groups)),
            ],
        )
    };
    let c1 = conv(&mut g, &mut rand, "input", 3, 8, 3, 1, "c1");
    let r1 = g.node("Clip", &[&c1, "clip_min", "clip_max"], "r1", vec![]);
    let c2 = conv(&mut g, &mut rand, &r1, 8, 8, 1, 1, "c2");
    let a = g.node("Add", &[&c2, &r1], "a", vec![]);
    let c3 = conv(&mut g, &mut rand, &a, 8, 8, 3, 8, "c3");
    let r3 = g.node("Clip", &[&c3, "clip_min", "clip_max"], "r3", vec![]);
    let p = g.node("GlobalAveragePool", &[&r3], "pooled", vec![]);
    let f = g.node("Flatten", &[&p], "flat", vec![("axis", Attr::Int(1))]);
    let w: Vec<f32> = (0..4 * 8).map(|_| rand()).collect();
    g.constant_f32("fc_w", &[4, 8], &w);
    g.constant_f32("fc_b", &[4], &[0.1, -0.1, 0.0, 0.2]);
    g.node("Gemm", &[&f, "fc_w", "fc_b"], "logits", vec![("transB", Attr::Int(1))]);
    g.output("logits", dtype::FLOAT, &[n, Dim::Fixed(4)]);
    let labels = ["a", "b", "c", "d"].map(String::from).to_vec();
    let preprocess = PreprocessSpec { size: SIZE as u32, mean: [0.5; 3], std: [0.25; 3], resize: ResizeMode::Stretch };
    g.metadata_all(ModelSpec::new(labels, preprocess).to_metadata());
    onnx::encode(&g.build())
}

fn images(dir: &Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let img = RgbImage::from_fn(40, 30, |x, y| {
                image::Rgb([
                    ((x * 6 + i * 31) % 256) as u8,
                    ((y * 8 + i * 17) % 256) as u8,
                    ((x * y + i * 53) % 256) as u8,
                ])
            });
            let p = dir.join(format!("{i}.png"));
            img.save_with_format(&p, ImageFormat::Png).unwrap();
            p
        })
        .collect()
}

fn quantized(dir: &Path) -> (LoadedModel, LoadedModel, Vec<PathBuf>) {
    quantized_with(dir, &quantize::QuantizeOptions::default())
}

/// GEMM routing from 8 input channels: the small model's 1x1 conv (c2) is routed.
const ROUTED: quantize::QuantizeOptions = quantize::QuantizeOptions { gemm_route_min_channels: Some(8) };

fn quantized_with(dir: &Path, options: &quantize::QuantizeOptions) -> (LoadedModel, LoadedModel, Vec<PathBuf>) {
    let fp32 = LoadedModel::from_bytes(Path::new("small.onnx"), small_model()).unwrap();
    let imgs = images(dir, 12);
    let names = quantize::activations_to_quantize(&fp32.proto).unwrap();
    let ranges = quantize::calibrate(&fp32, &imgs, &names, |_, _| {}).unwrap();
    let (q, report) = quantize::quantize_model(&fp32.proto, &ranges, &BTreeMap::new(), options).unwrap();
    assert_eq!(report.weights, 4, "{report:?}");
    assert_eq!(report.padded_inputs, 1, "the first conv's 3 input channels are padded to 4: {report:?}");
    assert_eq!(report.gemm_routed, usize::from(options.gemm_route_min_channels.is_some()), "{report:?}");
    assert!(report.skipped_weights.is_empty(), "{report:?}");
    let int8 = LoadedModel::from_bytes(Path::new("small.int8.onnx"), onnx::encode(&q)).unwrap();
    (fp32, int8, imgs)
}

fn logits(model: &LoadedModel, backend: BackendChoice, imgs: &[PathBuf]) -> Option<Vec<Vec<f32>>> {
    let (mut clf, _) = match engine::open(model, backend, &EngineOptions::default()) {
        Ok(x) => x,
        Err(e) if backend == BackendChoice::OrtCpu => {
            skip_or_fail_in_ci(&format!("ONNX Runtime is not available, so the ORT half of this test cannot run: {e}"));
            return None;
        }
        Err(e) => panic!("{backend:?} cannot open the model: {e}"),
    };
    let spec = &model.spec.preprocess;
    let mut out = Vec::new();
    for p in imgs {
        let mut t = vec![0.0; spec.tensor_len()];
        let bytes = std::fs::read(p).unwrap();
        instrument_model::preprocess::preprocess_bytes(&bytes, spec, &Default::default(), &mut t).unwrap();
        let x = ndarray::Array4::from_shape_vec((1, 3, SIZE as usize, SIZE as usize), t).unwrap();
        out.push(clf.run(x.view()).unwrap().row(0).to_vec());
    }
    Some(out)
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    let scale = a.iter().flatten().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().flatten().zip(b.iter().flatten()).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst <= 0.05 * scale, "{what}: worst |fp32 - int8| = {worst} against a logit scale of {scale}");
}

#[test]
fn metadata_is_kept_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let (fp32, int8, _) = quantized(dir.path());
    let meta = onnx::metadata_of(&int8.proto);
    assert_eq!(meta.get("quantization").map(String::as_str), Some("int8-qdq"));
    assert_eq!(int8.spec.labels, fp32.spec.labels);
    assert_eq!(int8.spec.preprocess, fp32.spec.preprocess);
    assert!(quantize::is_quantized(&int8.proto) && !quantize::is_quantized(&fp32.proto));
    let ops: Vec<&str> = int8.proto.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
    assert!(ops.contains(&"QuantizeLinear") && ops.contains(&"DequantizeLinear"), "{ops:?}");
    // Weights are stored as int8: the file shrinks.
    assert!(int8.proto.graph.as_ref().unwrap().initializer.iter().any(|t| t.data_type == dtype::INT8));
}

#[test]
fn quantised_output_is_close_to_fp32_in_tract() {
    let dir = tempfile::tempdir().unwrap();
    let (fp32, int8, imgs) = quantized(dir.path());
    let a = logits(&fp32, BackendChoice::Tract, &imgs).unwrap();
    let b = logits(&int8, BackendChoice::Tract, &imgs).unwrap();
    assert_close(&a, &b, "tract");
}

#[test]
fn quantised_output_is_close_to_fp32_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (fp32, int8, imgs) = quantized(dir.path());
    let Some(a) = logits(&fp32, BackendChoice::OrtCpu, &imgs) else { return };
    let b = logits(&int8, BackendChoice::OrtCpu, &imgs).unwrap();
    assert_close(&a, &b, "onnx runtime");
}

#[test]
fn gemm_routed_and_padded_copies_stay_close_to_fp32_in_both_runtimes() {
    let dir = tempfile::tempdir().unwrap();
    let (fp32, int8, imgs) = quantized_with(dir.path(), &ROUTED);
    let a = logits(&fp32, BackendChoice::Tract, &imgs).unwrap();
    assert_close(&a, &logits(&int8, BackendChoice::Tract, &imgs).unwrap(), "tract, routed");
    if let Some(b) = logits(&int8, BackendChoice::OrtCpu, &imgs) {
        assert_close(&a, &b, "onnx runtime, routed");
    }
}

/// Dequantised weight values of every `DequantizeLinear` on an initializer, by its output.
fn dequantised_weights(m: &LoadedModel) -> BTreeMap<String, (Vec<i64>, Vec<f32>)> {
    let g = m.proto.graph.as_ref().unwrap();
    let init = |name: &str| g.initializer.iter().find(|t| t.name == name);
    let mut out = BTreeMap::new();
    for n in g.node.iter().filter(|n| n.op_type == "DequantizeLinear") {
        let (Some(q), Some(s), Some(z)) = (init(&n.input[0]), init(&n.input[1]), init(&n.input[2])) else { continue };
        if q.data_type != dtype::INT8 {
            continue;
        }
        let scales: Vec<f32> = s.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let per = q.raw_data.len() / scales.len();
        let values = q
            .raw_data
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as i8 as f32 - z.raw_data[i / per] as i8 as f32) * scales[i / per])
            .collect();
        out.insert(n.output[0].clone(), (q.dims.clone(), values));
    }
    out
}

#[test]
fn gemm_routing_changes_the_zero_point_and_not_one_weight_value() {
    let dir = tempfile::tempdir().unwrap();
    let (_, plain, _) = quantized_with(dir.path(), &quantize::QuantizeOptions::default());
    let (_, routed, _) = quantized_with(dir.path(), &ROUTED);
    let (a, b) = (dequantised_weights(&plain), dequantised_weights(&routed));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "routing must dequantise to exactly the same weights");
    let zero_points = |m: &LoadedModel| -> Vec<i8> {
        let g = m.proto.graph.as_ref().unwrap();
        g.initializer
            .iter()
            .filter(|t| t.name == "c2_w_zero_point")
            .flat_map(|t| t.raw_data.iter().map(|&v| v as i8))
            .collect()
    };
    assert_eq!(zero_points(&plain), vec![0; 8]);
    assert_eq!(zero_points(&routed), vec![-1; 8]);
    // The first conv: 3 input channels padded to 4, the extra one all zeros,
    // fed by a uint8 Pad whose value is the input's zero point.
    let (dims, w) = &b["c1_w_dq"];
    assert_eq!(dims, &vec![8, 4, 3, 3]);
    assert!(w.chunks(9).skip(3).step_by(4).all(|k| k.iter().all(|v| *v == 0.0)));
    let g = routed.proto.graph.as_ref().unwrap();
    let pad = g.node.iter().find(|n| n.op_type == "Pad").expect("a Pad node");
    assert_eq!(pad.input[0], "input_q");
    assert_eq!(pad.input[2], "input_zero_point");
}

#[test]
fn weights_round_trip_per_channel() {
    let w = [1.0f32, -0.5, 0.25, 0.0, 0.01, -0.02, 0.03, 0.04];
    let (q, s) = quantize::quantize_weights_per_channel(&w, 2);
    assert_eq!(s.len(), 2);
    assert_eq!(q[0], 127, "the largest magnitude maps to 127");
    for (c, chunk) in w.chunks(4).enumerate() {
        for (j, v) in chunk.iter().enumerate() {
            let back = q[c * 4 + j] as f32 * s[c];
            assert!((back - v).abs() <= s[c] / 2.0 + 1e-7, "{v} -> {back}");
        }
    }
}

#[test]
fn a_quantised_model_is_not_quantised_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_, int8, _) = quantized(dir.path());
    let err =
        quantize::quantize_model(&int8.proto, &Default::default(), &BTreeMap::new(), &Default::default()).unwrap_err();
    assert!(err.to_string().contains("already quantised"), "{err}");
}
