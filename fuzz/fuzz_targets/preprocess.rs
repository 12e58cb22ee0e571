//! Bytes to tensor, exactly as the daemon does it: sniff, decode (with the
//! DCT-scaled JPEG path and the generic path), orient, resize, normalise.
//!
//! The target links `instrument-model` without its default `onnx` feature:
//! preprocessing alone, so the sanitizer build does not have to instrument
//! the inference engines too.
//!
//! Limits are tight so that a header claiming a huge image is refused rather
//! than allocated (the point of the limits), and so that libFuzzer's own
//! `-rss_limit_mb` catches any decoder that ignores them.
#![no_main]

use instrument_model::preprocess::{self, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_file_bytes: 4 * 1024 * 1024,
        max_pixels: 4_000_000,
        max_side: 4096,
        max_alloc: 64 * 1024 * 1024,
    };
    preprocess::fuzz_one(data, &limits);
});
