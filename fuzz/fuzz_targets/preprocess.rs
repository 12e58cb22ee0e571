//! Bytes to tensor, exactly as the daemon does it: sniff, decode (with the
//! DCT-scaled JPEG path and the generic path), orient, resize, normalise.
//!
//! Limits are tight so that a header claiming a huge image is refused rather
//! than allocated (the point of the limits), and so that libFuzzer's own
//! `-rss_limit_mb` catches any decoder that ignores them.
#![no_main]

use instrument_detector::preprocess::{DecodeLimits, PreprocessSpec, ResizeMode, preprocess_bytes, sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_file_bytes: 4 * 1024 * 1024,
        max_pixels: 4_000_000,
        max_side: 4096,
        max_alloc: 64 * 1024 * 1024,
    };
    let _ = sniff(data);
    // The last byte picks the model input and resize mode, so both the
    // stretch and centre-crop paths and the scaled JPEG decode are reached.
    let (mode, size) = match data.last().map(|b| b % 4) {
        Some(0) => (ResizeMode::Stretch, 224),
        Some(1) => (ResizeMode::CenterCrop, 224),
        Some(2) => (ResizeMode::Stretch, 16),
        _ => (ResizeMode::CenterCrop, 3),
    };
    let spec = PreprocessSpec { size, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], resize: mode };
    let mut out = vec![0.0f32; spec.tensor_len()];
    if preprocess_bytes(data, &spec, &limits, &mut out).is_ok() {
        assert!(out.iter().all(|v| v.is_finite()), "non-finite value in the tensor");
    }
});
