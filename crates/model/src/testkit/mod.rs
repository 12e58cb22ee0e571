//! Tiny models and images for tests, examples and benchmarks.
//!
//! Tests must run without the shipped model or the dataset, so they build their
//! own: a colour classifier whose answer is known in advance (a red picture is
//! "red"), written through the same ONNX writer the trainer uses.

pub mod raw_files;

use crate::model::{ModelSpec, keys};
use crate::onnx::{Attr, Dim, GraphBuilder, dtype};
use crate::preprocess::{PreprocessSpec, ResizeMode};
use image::{DynamicImage, ImageFormat, RgbImage};
use std::path::Path;

/// The labels of [`color_model`], in output order.
pub const COLOR_LABELS: [&str; 3] = ["red", "green", "blue"];

/// A 3-class ONNX model: global average pool, then `logits = 10 * mean(channel)`.
/// Inputs are normalised with mean 0.5 and std 0.5, so a pure red image gives
/// logits (10, -10, -10) and is classified "red" with ~100% confidence.
pub fn color_model(size: u32) -> Vec<u8> {
    color_model_with(size, &COLOR_LABELS.map(String::from), 3)
}

/// The spec of the colour models: inputs normalised with mean and std 0.5.
fn color_spec(size: u32, labels: &[String], architecture: &str) -> ModelSpec {
    let preprocess = PreprocessSpec { size, mean: [0.5; 3], std: [0.5; 3], resize: ResizeMode::Stretch };
    let mut spec = ModelSpec::new(labels.to_vec(), preprocess);
    spec.metadata.insert(keys::ARCHITECTURE.into(), architecture.into());
    spec
}

/// Like [`color_model`], but with any label list and output width (used to
/// build deliberately broken models).
pub fn color_model_with(size: u32, labels: &[String], outputs: usize) -> Vec<u8> {
    let mut g = GraphBuilder::new("color");
    let n = Dim::Named("N".into());
    g.input("input", dtype::FLOAT, &[n.clone(), Dim::Fixed(3), Dim::Fixed(size as i64), Dim::Fixed(size as i64)]);
    let pooled = g.node("GlobalAveragePool", &["input"], "pooled", vec![]);
    let flat = g.node("Flatten", &[&pooled], "flat", vec![("axis", Attr::Int(1))]);
    // Weight [outputs, 3]: row k picks channel k % 3, scaled by 10.
    let mut w = vec![0.0f32; outputs * 3];
    for k in 0..outputs {
        w[k * 3 + k % 3] = 10.0;
    }
    let w = g.constant_f32("w", &[outputs as i64, 3], &w);
    let b = g.constant_f32("b", &[outputs as i64], &vec![0.0; outputs]);
    g.node("Gemm", &[&flat, &w, &b], "logits", vec![("transB", Attr::Int(1))]);
    g.output("logits", dtype::FLOAT, &[n, Dim::Fixed(outputs as i64)]);
    g.metadata_all(color_spec(size, labels, "color-test").to_metadata());
    crate::onnx::encode(&g.build())
}

/// [`color_model`] with an open-world ImageNet head appended, as the trainer
/// exports real models: 3 colour logits, then 4 "ImageNet" logits, with the
/// metadata that makes the daemon apply the product of experts and the `none`
/// rule ([`crate::open_world`]). ImageNet class 0 is a red instrument (the
/// twin of "red"), class 1 a green one, classes 2 and 3 are not instruments;
/// class 3 answers darkness. So:
/// - a red, green or blue picture keeps its colour (the classifier is sure);
/// - a black picture is `none` (the classifier cannot tell, and ImageNet
///   sees no instrument);
/// - a white picture is an instrument (ImageNet sees one, though the
///   classifier cannot tell which). Green and blue have no twin and share
///   ImageNet's class 1.
pub fn open_world_color_model(size: u32) -> Vec<u8> {
    let mut g = GraphBuilder::new("color-open-world");
    let n = Dim::Named("N".into());
    g.input("input", dtype::FLOAT, &[n.clone(), Dim::Fixed(3), Dim::Fixed(size as i64), Dim::Fixed(size as i64)]);
    let pooled = g.node("GlobalAveragePool", &["input"], "pooled", vec![]);
    let flat = g.node("Flatten", &[&pooled], "flat", vec![("axis", Attr::Int(1))]);
    #[rustfmt::skip]
    let w = [
        10.0, 0.0, 0.0,   0.0, 10.0, 0.0,   0.0, 0.0, 10.0,    // red, green, blue
        10.0, 0.0, 0.0,   0.0, 10.0, 0.0,   0.0, 0.0, 0.0,     // ImageNet 0, 1, 2
        -10.0, -10.0, -10.0,                                  // ImageNet 3: darkness
    ];
    let w = g.constant_f32("w", &[7, 3], &w);
    let b = g.constant_f32("b", &[7], &[0.0; 7]);
    g.node("Gemm", &[&flat, &w, &b], "scores", vec![("transB", Attr::Int(1))]);
    g.output("scores", dtype::FLOAT, &[n, Dim::Fixed(7)]);
    let mut spec = color_spec(size, &COLOR_LABELS.map(String::from), "color-open-world-test");
    spec.open_world = Some(open_world_color_description());
    g.metadata_all(spec.to_metadata());
    crate::onnx::encode(&g.build())
}

/// An open-world colour model laid out as `training` exports real ones, so
/// that `retrain` can replace its head: the tensor `features` (the three
/// channel means), our head `fc_weight`/`fc_bias`, and the ImageNet head
/// `imagenet_fc_weight`/`imagenet_fc_bias` of [`open_world_color_model`].
/// Its head makes one mistake on purpose: a blue picture is called green
/// (the blue row is zero, and the green row answers blue too), so a
/// correction has something to teach.
pub fn retrainable_color_model(size: u32) -> Vec<u8> {
    let mut g = GraphBuilder::new("color-retrainable");
    let n = Dim::Named("N".into());
    g.input("input", dtype::FLOAT, &[n.clone(), Dim::Fixed(3), Dim::Fixed(size as i64), Dim::Fixed(size as i64)]);
    let pooled = g.node("GlobalAveragePool", &["input"], "pooled", vec![]);
    let features = g.node("Flatten", &[&pooled], "features", vec![("axis", Attr::Int(1))]);
    #[rustfmt::skip]
    let own = [
        10.0, 0.0, 0.0,     // red
        -5.0, 10.0, 10.0,   // green, and blue by mistake
        0.0, 0.0, 0.0,      // blue: knows nothing
    ];
    let w = g.constant_f32("fc_weight", &[3, 3], &own);
    let b = g.constant_f32("fc_bias", &[3], &[0.0; 3]);
    let logits = g.node("Gemm", &[&features, &w, &b], "logits", vec![("transB", Attr::Int(1))]);
    #[rustfmt::skip]
    let imagenet = [10.0, 0.0, 0.0,   0.0, 10.0, 0.0,   0.0, 0.0, 0.0,   -10.0, -10.0, -10.0];
    let wi = g.constant_f32("imagenet_fc_weight", &[4, 3], &imagenet);
    let bi = g.constant_f32("imagenet_fc_bias", &[4], &[0.0; 4]);
    let imagenet = g.node("Gemm", &[&features, &wi, &bi], "imagenet_logits", vec![("transB", Attr::Int(1))]);
    g.node("Concat", &[&logits, &imagenet], "scores", vec![("axis", Attr::Int(1))]);
    g.output("scores", dtype::FLOAT, &[n, Dim::Fixed(7)]);
    let mut spec = color_spec(size, &COLOR_LABELS.map(String::from), "color-retrainable-test");
    spec.open_world = Some(open_world_color_description());
    g.metadata_all(spec.to_metadata());
    crate::onnx::encode(&g.build())
}

/// The open-world description of [`open_world_color_model`].
pub fn open_world_color_description() -> crate::open_world::OpenWorld {
    crate::open_world::OpenWorld {
        imagenet_classes: 4,
        imagenet_temperature: 1.0,
        twins: [("red".to_string(), vec![0])].into_iter().collect(),
        expert_weight: 1.0,
        orphan_classes: vec![1],
        instrument_classes: vec![0, 1],
        none_rule: crate::open_world::NoneRule { max_instrument_mass: 0.2, max_confidence: 0.8 },
    }
}

/// A `w`x`h` image of one flat colour (with a seed stamped in, for distinct content).
pub fn flat_image(rgb: [u8; 3], w: u32, h: u32, seed: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(w, h, image::Rgb(rgb));
    for (i, byte) in seed.to_le_bytes().iter().enumerate() {
        if (i as u32) < w {
            img.put_pixel(i as u32, 0, image::Rgb([rgb[0] ^ (byte & 1), rgb[1], rgb[2]]));
        }
    }
    img
}

/// [`color_model`] with its output cut to the first two rows of any batch: it
/// passes the engines' dry run (a batch of 2) and answers a batch of 3 with
/// the wrong number of rows, which the engines must refuse per batch.
pub fn two_row_color_model(size: u32) -> Vec<u8> {
    let mut proto = crate::onnx::decode(&color_model(size)).expect("the colour model decodes");
    let graph = proto.graph.as_mut().expect("the colour model has a graph");
    let mut g = GraphBuilder::new("slice");
    let starts = g.constant_i64("starts", &[1], &[0]);
    let ends = g.constant_i64("ends", &[1], &[2]);
    let axes = g.constant_i64("axes", &[1], &[0]);
    g.node("Slice", &["logits", &starts, &ends, &axes], "two_rows", vec![]);
    let extra = g.build().graph.expect("a graph");
    graph.node.extend(extra.node);
    graph.initializer.extend(extra.initializer);
    graph.output[0].name = "two_rows".into();
    crate::onnx::encode(&proto)
}

/// An RGB colour for each label of [`color_model`].
pub fn color_of(label: &str) -> [u8; 3] {
    match label {
        "red" => [230, 20, 20],
        "green" => [20, 230, 20],
        _ => [20, 20, 230],
    }
}

/// A `w`x`h` image of one dominant colour with a little texture (so encoders
/// produce realistic files, and distinct `seed`s give distinct content).
pub fn color_image(label: &str, w: u32, h: u32, seed: u32) -> RgbImage {
    let [r, g, b] = color_of(label);
    let mut img = RgbImage::from_fn(w, h, |x, y| {
        let n = ((x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ seed.wrapping_mul(2654435761)) % 16) as u8;
        image::Rgb([r.saturating_sub(n), g.saturating_sub(n), b.saturating_sub(n)])
    });
    // Stamp the seed's bytes into the first pixels, so distinct seeds really
    // give distinct content (the texture above repeats every 16 seeds).
    for (i, byte) in seed.to_le_bytes().iter().enumerate() {
        if (i as u32) < w {
            img.put_pixel(i as u32, 0, image::Rgb([*byte, *byte, *byte]));
        }
    }
    img
}

/// Encodes an image in `format` to bytes.
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone()).write_to(&mut buf, format).expect("encoding an RGB image");
    buf.into_inner()
}

/// Writes a colour image for `label` to `path` in `format`.
pub fn write_color_image(path: &Path, label: &str, format: ImageFormat, seed: u32) -> std::io::Result<()> {
    std::fs::write(path, encode(&color_image(label, 64, 48, seed), format))
}

/// A valid PNG signature and IHDR chunk claiming a `w`x`h` RGB image, and no
/// pixel data: the decompression-bomb header the decode limits must refuse.
pub fn png_header_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    let mut crc = 0xffff_ffffu32;
    for &b in &ihdr {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    png.extend_from_slice(&(!crc).to_be_bytes());
    png
}
