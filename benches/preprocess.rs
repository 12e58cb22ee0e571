//! Decode + preprocess per image: 224 px JPEG, 12 MP JPEG (with and without
//! DCT scaling), PNG. Inputs are generated here (deterministic, photo-like:
//! smooth gradients plus sensor-like noise), so the bench needs no data.
//!
//!     cargo bench --bench preprocess

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::{DynamicImage, ImageFormat, RgbImage};
use instrument_model::preprocess::{
    DecodeLimits, PreprocessSpec, ResizeMode, decode_rgb, preprocess_bytes, tensor_from_rgb,
};
use std::hint::black_box;
use std::io::Cursor;

fn photo(w: u32, h: u32) -> RgbImage {
    let mut state = 0x1234_5678_9abc_def0u64;
    RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state & 31) as i32 - 16;
        let fx = x as f32 / w as f32;
        let fy = y as f32 / h as f32;
        let blob = ((fx * 9.0).sin() * (fy * 7.0).cos() * 60.0) as i32;
        let px = |base: f32| (base as i32 + blob + n).clamp(0, 255) as u8;
        image::Rgb([px(200.0 * fx + 30.0), px(180.0 * fy + 20.0), px(120.0 * (1.0 - fx) + 40.0)])
    })
}

fn encode(img: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90);
            DynamicImage::ImageRgb8(img).write_with_encoder(enc).expect("jpeg encodes");
        }
        f => DynamicImage::ImageRgb8(img).write_to(&mut buf, f).expect("image encodes"),
    }
    buf.into_inner()
}

fn bench(c: &mut Criterion) {
    let spec = PreprocessSpec { size: 224, mean: [0.5; 3], std: [0.5; 3], resize: ResizeMode::Stretch };
    let limits = DecodeLimits::default();
    let inputs = [
        ("jpeg_224px", encode(photo(224, 224), ImageFormat::Jpeg)),
        ("jpeg_12mp_4032x3024", encode(photo(4032, 3024), ImageFormat::Jpeg)),
        ("png_1024x768", encode(photo(1024, 768), ImageFormat::Png)),
    ];
    let mut g = c.benchmark_group("decode_preprocess");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let mut out = vec![0.0f32; spec.tensor_len()];
    for (name, bytes) in &inputs {
        g.bench_function(*name, |b| {
            b.iter(|| preprocess_bytes(black_box(bytes), &spec, &limits, &mut out).expect("decodes"))
        });
    }
    // The same 12 MP photo decoded at full size (no DCT scaling): what the
    // scaling buys.
    let (_, big) = &inputs[1];
    g.bench_function("jpeg_12mp_4032x3024_full_decode", |b| {
        b.iter(|| {
            let img = decode_rgb(black_box(big), 0, &limits).expect("decodes");
            tensor_from_rgb(&img, &spec, &mut out)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
