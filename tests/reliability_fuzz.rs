//! The bytes-to-tensor path under hostile input, without libFuzzer.
//!
//! - `corpus_and_regressions_never_panic` (CI, a second or two): every file of
//!   `fuzz/corpus/preprocess/` and `fuzz/regressions/` goes through
//!   `preprocess_bytes` under the daemon's default limits and under tight ones.
//! - `mutation_soak` (CI runs it for a few seconds; the soak runs it for as long
//!   as `RELIABILITY_FUZZ_SECS` says): a deterministic mutation fuzzer over the
//!   corpus (bit flips, byte sets, truncation, splices, inserted runs and
//!   rewritten header integers), for machines without a nightly toolchain. Any
//!   panic prints the seed and iteration that reproduce it, and writes the
//!   input to `fuzz/artifacts/mutation-*`.
//! - `write_seed_corpus` (ignored): regenerates the seed corpus.
//!
//! The libFuzzer target is `fuzz/fuzz_targets/preprocess.rs` (`cargo +nightly fuzz run preprocess`).

use image::{DynamicImage, ImageFormat, RgbImage};
use instrument_model::preprocess::DecodeLimits;
use instrument_model::testkit;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn tight() -> DecodeLimits {
    DecodeLimits { max_file_bytes: 4 * 1024 * 1024, max_pixels: 4_000_000, max_side: 4096, max_alloc: 64 * 1024 * 1024 }
}

/// The same dispatch as the libFuzzer target.
fn run_one(data: &[u8], limits: &DecodeLimits) {
    instrument_model::preprocess::fuzz_one(data, limits);
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for dir in [root().join("corpus/preprocess"), root().join("regressions")] {
        for p in files_in(&dir) {
            if p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("README") || n.starts_with('.')
            }) {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            v.push((p, bytes));
        }
    }
    v
}

#[test]
fn corpus_and_regressions_never_panic() {
    let c = corpus();
    assert!(
        c.len() >= 10,
        "the seed corpus is missing: run `cargo test --release --test tests -- --ignored reliability_fuzz::write_seed_corpus`"
    );
    for (p, bytes) in &c {
        for limits in [DecodeLimits::default(), tight()] {
            let r = std::panic::catch_unwind(|| run_one(bytes, &limits));
            assert!(r.is_ok(), "{} panicked", p.display());
        }
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = d.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 if len > 1 => d.truncate(rng.below(len)),
            3 => {
                // Splice a piece of another seed in.
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + rng.below(64)).min(other.len());
                    let at = rng.below(len + 1);
                    d.splice(at..at, other[a..b].iter().copied());
                }
            }
            4 => {
                let at = rng.below(len + 1);
                let n = rng.below(32);
                let byte = rng.next() as u8;
                d.splice(at..at, std::iter::repeat_n(byte, n));
            }
            5 if len >= 4 => {
                // Rewrite a header-sized integer (widths, lengths, offsets).
                let i = rng.below(len.min(256) - 3);
                let v: u32 = [0, 1, 0xffff, 0x7fff_ffff, 0xffff_ffff, 60000, 65535][rng.below(7)];
                if rng.below(2) == 0 {
                    d[i..i + 4].copy_from_slice(&v.to_be_bytes());
                } else {
                    d[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            6 if len > 8 => {
                let a = rng.below(len);
                let b = (a + rng.below(128)).min(len);
                d.drain(a..b);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

#[test]
fn mutation_soak() {
    let secs: f64 = std::env::var("RELIABILITY_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let seed: u64 = std::env::var("RELIABILITY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234);
    let c = corpus();
    assert!(!c.is_empty());
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut iterations = 0u64;
    // A panic in the decoder is what we look for; keep the default hook quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    while Instant::now() < deadline {
        let (_, base) = &c[rng.below(c.len())];
        let (_, other) = &c[rng.below(c.len())];
        let input = mutate(&mut rng, base, other);
        let limits = tight();
        if std::panic::catch_unwind(|| run_one(&input, &limits)).is_err() {
            failure = Some((iterations, input));
            break;
        }
        iterations += 1;
    }
    std::panic::set_hook(hook);
    eprintln!(
        "mutation_soak: {iterations} inputs in {:.1}s (seed {seed}, {} seeds in the corpus)",
        started.elapsed().as_secs_f64(),
        c.len()
    );
    if let Some((i, input)) = failure {
        let dir = root().join("artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("mutation-{seed}-{i}"));
        std::fs::write(&path, &input).unwrap();
        // Re-run with the default hook for the message.
        run_one(&input, &tight());
        panic!("panic on input {} (iteration {i}); copy it to fuzz/regressions/", path.display());
    }
}

/// Regenerates `fuzz/corpus/preprocess/`: one small file per format and colour
/// type the daemon handles. Kept small (a few KB each) so fuzzing is fast.
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = root().join("corpus/preprocess");
    std::fs::create_dir_all(&dir).unwrap();
    let rgb = testkit::color_image("red", 24, 16, 7);
    let put = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();
    for (name, f) in [
        ("rgb.jpg", ImageFormat::Jpeg),
        ("rgb.png", ImageFormat::Png),
        ("rgb.bmp", ImageFormat::Bmp),
        ("rgb.gif", ImageFormat::Gif),
        ("rgb.tiff", ImageFormat::Tiff),
    ] {
        put(name, testkit::encode(&rgb, f));
    }
    // Large enough for the DCT-scaled JPEG path (min side >= 2 x 3 px target).
    put("scaled.jpg", testkit::encode(&testkit::color_image("blue", 40, 24, 3), ImageFormat::Jpeg));
    let enc = |img: DynamicImage, f: ImageFormat| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, f).unwrap();
        buf.into_inner()
    };
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(12, 9, |x, y| {
        image::Rgba([x as u8 * 20, y as u8 * 25, 7, (x * y) as u8])
    }));
    put("rgba.png", enc(rgba.clone(), ImageFormat::Png));
    put("rgba.webp", enc(rgba, ImageFormat::WebP));
    put(
        "gray.png",
        enc(
            DynamicImage::ImageLuma8(image::GrayImage::from_fn(9, 7, |x, y| image::Luma([(x * 9 + y) as u8]))),
            ImageFormat::Png,
        ),
    );
    put(
        "gray.jpg",
        enc(
            DynamicImage::ImageLuma8(image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 9 + y) as u8]))),
            ImageFormat::Jpeg,
        ),
    );
    put(
        "rgb16.png",
        enc(
            DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(6, 5, |x, y| {
                image::Rgb([x as u16 * 9000, y as u16 * 9000, 123])
            })),
            ImageFormat::Png,
        ),
    );
    put(
        "rgb16.tiff",
        enc(
            DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(6, 5, |x, _| image::Rgb([x as u16 * 9000, 1, 2]))),
            ImageFormat::Tiff,
        ),
    );
    // A JPEG with an EXIF orientation (APP1 after SOI).
    let mut jpeg =
        testkit::encode(&RgbImage::from_fn(10, 6, |x, _| image::Rgb([x as u8 * 25, 0, 0])), ImageFormat::Jpeg);
    let exif: Vec<u8> = {
        let mut tiff =
            b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00\x00\x00\x00\x00"
                .to_vec();
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.append(&mut tiff);
        let mut seg = vec![0xff, 0xe1];
        seg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        seg.extend(app1);
        seg
    };
    jpeg.splice(2..2, exif);
    put("exif-rotated.jpg", jpeg);
    // Camera RAW: every layout the RAW reader knows, each with a preview
    // big enough for the DCT-scaled path.
    let preview = testkit::encode(&testkit::color_image("green", 40, 24, 5), ImageFormat::Jpeg);
    for layout in testkit::raw_files::RawLayout::ALL {
        put(&format!("raw.{}", layout.extension()), testkit::raw_files::raw_file(layout, &preview, 6));
    }
    // HEIC (8 and 10 bit), AVIF and JPEG XL from the real encoders.
    let work = tempfile::tempdir().unwrap();
    let png = work.path().join("in.png");
    testkit::write_color_image(&png, "blue", ImageFormat::Png, 2).unwrap();
    let deep = work.path().join("deep.png");
    DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(12, 8, |x, y| {
        image::Rgb([x as u16 * 5000, y as u16 * 8000, 900])
    }))
    .save(&deep)
    .unwrap();
    for (name, tool, args, input) in [
        ("rgb.heic", "heif-enc", &["-q", "50"][..], &png),
        ("rgb10.heic", "heif-enc", &["-b", "10"][..], &deep),
        ("rgb.avif", "heif-enc", &["-A", "-q", "50"][..], &png),
    ] {
        let out = dir.join(name);
        let status = std::process::Command::new(tool).args(args).arg(input).arg("-o").arg(&out).status();
        assert!(status.is_ok_and(|s| s.success()), "{tool} failed (apt install libheif-examples)");
    }
    let status = std::process::Command::new("cjxl").arg(&png).arg(dir.join("rgb.jxl")).args(["-d", "2"]).status();
    assert!(status.is_ok_and(|s| s.success()), "cjxl failed (apt install libjxl-tools)");
    // Hostile seeds: a PNG header claiming 60000x60000, and text.
    put("huge-header.png", testkit::png_header_claiming(60000, 60000));
    put("text.txt", b"not an image at all\n".to_vec());
}
