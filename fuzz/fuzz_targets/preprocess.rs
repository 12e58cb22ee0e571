//! Bytes to tensor, exactly as the daemon does it: sniff, decode (with the
//! DCT-scaled JPEG path and the generic path), orient, resize, normalise.
//!
//! The daemon's own `src/preprocess.rs` is compiled into this target as a
//! module (it depends only on the decoders and the resizer), so the
//! sanitizer build does not have to instrument the inference engines too.
//!
//! Limits are tight so that a header claiming a huge image is refused rather
//! than allocated (the point of the limits), and so that libFuzzer's own
//! `-rss_limit_mb` catches any decoder that ignores them.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/preprocess.rs"]
mod preprocess;

use libfuzzer_sys::fuzz_target;
use preprocess::DecodeLimits;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_file_bytes: 4 * 1024 * 1024,
        max_pixels: 4_000_000,
        max_side: 4096,
        max_alloc: 64 * 1024 * 1024,
    };
    preprocess::fuzz_one(data, &limits);
});
