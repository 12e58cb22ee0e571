//! From bytes to a normalised NCHW tensor: sniff, decode, orient, resize, normalise.
//!
//! This is the one preprocessing path of the project. The daemon, `classify`,
//! `evaluate`, the benchmarks and the `training` binary all call it, so a model
//! sees at serving time exactly the pixels it was trained on.
//!
//! Why it looks the way it does:
//! - The format is sniffed from the content; the extension is ignored (a PNG
//!   called `.jpg` is a PNG).
//! - Large JPEGs are decoded with DCT scaling (1/2, 1/4 or 1/8 size) straight to
//!   a size still at least as large as the model input: a 12 MP photo costs a
//!   fraction of a full decode, and quality is unchanged because the result is
//!   shrunk to 224 px anyway.
//! - Every decode runs under limits (pixels, allocation), so a header claiming
//!   60000x60000 pixels is refused before any memory is taken.
//! - EXIF orientation is applied; grayscale, CMYK, 16-bit and alpha images all
//!   end up as 8-bit RGB (alpha composited onto white).

use crate::formats;
use fast_image_resize::{self as fr, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage, metadata::Orientation};
use std::io::Cursor;

/// How a photo is brought to the square model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// The whole photo, squeezed to a square (what the training data is).
    Stretch,
    /// The largest centred square, then resized.
    CenterCrop,
}

/// What a model wants as input: read from its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessSpec {
    pub size: u32,
    /// Per-channel mean on the 0..1 scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the 0..1 scale.
    pub std: [f32; 3],
    pub resize: ResizeMode,
}

impl PreprocessSpec {
    /// Number of f32 values of one image in the tensor.
    pub fn tensor_len(&self) -> usize {
        3 * (self.size as usize) * (self.size as usize)
    }
}

/// Bounds on what one image may cost.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Files larger than this are refused without being read whole.
    pub max_file_bytes: u64,
    /// Width x height as declared by the header.
    pub max_pixels: u64,
    /// Largest side in pixels.
    pub max_side: u32,
    /// Bytes the decoder may allocate for one image.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_file_bytes: 256 * 1024 * 1024,
            max_pixels: 150_000_000,
            max_side: 40_000,
            max_alloc: 1024 * 1024 * 1024,
        }
    }
}

/// The closed set of reasons an image is refused: the `error_kind` stored in
/// the database, counted by `stats` and matched on by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecodeFailure {
    /// No bytes at all.
    Empty,
    /// No supported image signature.
    NotImage,
    /// A format (or a feature of one) the decoders do not handle.
    Unsupported,
    /// Over the pixel, side or file size limits.
    TooLarge,
    /// The image data ends before the image does (a cut download, a copy
    /// still being written).
    Truncated,
    /// Damaged or invalid data.
    Corrupt,
}

impl DecodeFailure {
    /// The stable name stored in the `error_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeFailure::Empty => "empty",
            DecodeFailure::NotImage => "not_image",
            DecodeFailure::Unsupported => "unsupported",
            DecodeFailure::TooLarge => "too_large",
            DecodeFailure::Truncated => "truncated",
            DecodeFailure::Corrupt => "corrupt",
        }
    }

    /// Whether a file that is still being written could fail this way: it may
    /// be empty, hold less than a full signature, end early, or end inside a
    /// header. A caller that sees a young file fail so may look again later.
    pub fn may_be_partial_write(self) -> bool {
        matches!(
            self,
            DecodeFailure::Empty | DecodeFailure::NotImage | DecodeFailure::Truncated | DecodeFailure::Corrupt
        )
    }
}

impl std::fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DecodeFailure> for String {
    fn from(kind: DecodeFailure) -> String {
        kind.as_str().to_string()
    }
}

/// Why an image could not be turned into a tensor. Each has a stable
/// [`kind()`](ImageError::kind) stored in the database, and a message meant
/// for a person.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("{format} images are not supported")]
    Unsupported { format: String },
    #[error("image is {width}x{height} pixels, over the limit of {limit}")]
    TooLarge { width: u32, height: u32, limit: String },
    /// Over a limit that a decoder library enforced itself, before telling
    /// us the size (so there is no size to print).
    #[error("image is too large to decode ({limit})")]
    OverDecoderLimit { limit: String },
    #[error("file is {bytes} bytes, over the limit of {limit} bytes")]
    FileTooLarge { bytes: u64, limit: u64 },
    #[error("truncated {format}: {detail}")]
    Truncated { format: String, detail: String },
    #[error("corrupt {format}: {detail}")]
    Corrupt { format: String, detail: String },
}

impl ImageError {
    /// The kind, for statistics and queries (`error_kind` column).
    pub fn kind(&self) -> DecodeFailure {
        match self {
            ImageError::Empty => DecodeFailure::Empty,
            ImageError::NotAnImage(_) => DecodeFailure::NotImage,
            ImageError::Unsupported { .. } => DecodeFailure::Unsupported,
            ImageError::TooLarge { .. } | ImageError::OverDecoderLimit { .. } | ImageError::FileTooLarge { .. } => {
                DecodeFailure::TooLarge
            }
            ImageError::Truncated { .. } => DecodeFailure::Truncated,
            ImageError::Corrupt { .. } => DecodeFailure::Corrupt,
        }
    }
}

/// The image format, judged from the first bytes only.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    let format = image::guess_format(bytes).ok()?;
    match format {
        ImageFormat::Jpeg
        | ImageFormat::Png
        | ImageFormat::WebP
        | ImageFormat::Bmp
        | ImageFormat::Gif
        | ImageFormat::Tiff => Some(format),
        _ => None,
    }
}

fn describe_non_image(bytes: &[u8]) -> String {
    if let Ok(format) = image::guess_format(bytes) {
        return format!("{format:?} is not a supported photo format");
    }
    let head = &bytes[..bytes.len().min(512)];
    let printable = head.iter().filter(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()).count();
    if printable * 10 >= head.len() * 9 {
        "the content looks like text".to_string()
    } else {
        "unrecognised content (no JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC, AVIF, JPEG XL or camera RAW signature)"
            .to_string()
    }
}

/// Decodes any supported image to 8-bit RGB with EXIF orientation applied.
///
/// `min_side` is the smallest size the caller will shrink to: JPEGs much larger
/// than that are decoded at a reduced scale that still covers it. Pass 0 for a
/// full-resolution decode.
pub fn decode_rgb(bytes: &[u8], min_side: u32, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(ImageError::FileTooLarge { bytes: bytes.len() as u64, limit: limits.max_file_bytes });
    }
    if let Some(container) = formats::sniff(bytes) {
        return formats::decode(container, bytes, min_side, limits);
    }
    let format = sniff(bytes).ok_or_else(|| ImageError::NotAnImage(describe_non_image(bytes)))?;
    if format == ImageFormat::Jpeg
        && min_side > 0
        && let Some(img) = decode_jpeg_scaled(bytes, min_side, limits)?
    {
        return Ok(img);
    }
    decode_generic(bytes, format, limits)
}

/// [`ImageError::Truncated`] when a JPEG or PNG ends before its image does.
/// Checked once the header has passed the size limits (a decompression bomb
/// is `too_large` first, however short), and when a header cannot be read.
fn cut(bytes: &[u8], format: ImageFormat) -> Option<ImageError> {
    truncation(bytes, format).map(|detail| ImageError::Truncated { format: format_name(format), detail })
}

/// Why a JPEG or PNG ends before its image does, judged from its structure
/// alone (no decoding), or `None` when it is whole or of another format.
///
/// Both decoders tolerate a cut file: the JPEG decoders fill the missing
/// blocks with grey and return a picture, so the first 3 KB of a 15 KB photo
/// would be classified. The rules:
/// - JPEG: walk the marker segments from SOI to the first SOS (every segment
///   before it carries its length, so an EXIF thumbnail's own EOI inside APP1
///   is stepped over); then the file must hold an EOI (`FF D9`) after that
///   SOS. Entropy-coded data stuffs every `FF` byte as `FF 00`, so `FF D9` there
///   is the real end of the image; bytes after it (trailing garbage some
///   cameras and editors append) are allowed.
/// - PNG: walk the chunks (length, type, data, CRC) from the signature; the
///   file must reach an `IEND` chunk.
///
/// A file that ends inside its headers is truncated too. A structure that is
/// wrong rather than short (a segment that does not start with `FF`) is left
/// to the decoder, which calls it corrupt.
fn truncation(bytes: &[u8], format: ImageFormat) -> Option<String> {
    match format {
        ImageFormat::Jpeg => jpeg_truncation(bytes),
        ImageFormat::Png => png_truncation(bytes),
        _ => None,
    }
}

fn jpeg_truncation(bytes: &[u8]) -> Option<String> {
    let ends_in_headers = || Some(format!("the file ends inside the headers, at byte {}", bytes.len()));
    // SOI is bytes 0..2 (the sniffer checked it).
    let mut pos = 2;
    let mut scans = 0;
    loop {
        if pos + 2 > bytes.len() {
            return if scans == 0 { ends_in_headers() } else { Some(no_eoi(bytes.len())) };
        }
        if bytes[pos] != 0xFF {
            return None; // not a marker: corrupt, the decoder's call
        }
        let marker = bytes[pos + 1];
        match marker {
            // Fill bytes before a marker.
            0xFF => pos += 1,
            // Markers without a length (TEM, RSTn, a stray SOI).
            0x01 | 0xD0..=0xD8 => pos += 2,
            0xD9 if scans == 0 => return Some("the image ends before its first scan".into()),
            0xD9 => return None,
            _ => {
                if pos + 4 > bytes.len() {
                    return ends_in_headers();
                }
                let len = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
                if len < 2 {
                    return None;
                }
                pos += 2 + len;
                if pos > bytes.len() {
                    return Some(format!("a header segment runs past the end of the file ({} bytes)", bytes.len()));
                }
                if marker == 0xDA {
                    // Start of scan: entropy-coded data follows, in which an
                    // `FF` is stuffed as `FF 00` or starts a restart marker;
                    // any other `FF xx` is the next marker (another scan's
                    // tables, or EOI).
                    scans += 1;
                    pos = next_marker(bytes, pos).unwrap_or(bytes.len());
                }
            }
        }
    }
}

/// The offset of the first marker at or after `from` in entropy-coded data;
/// `None` when the data runs to the end of the file without one.
fn next_marker(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < bytes.len() {
        if bytes[i] == 0xFF {
            match bytes[i + 1] {
                0x00 | 0xD0..=0xD7 => i += 2,
                0xFF => i += 1,
                _ => return Some(i),
            }
        } else {
            i += 1;
        }
    }
    None
}

fn no_eoi(len: usize) -> String {
    format!("the image data ends at byte {len} without an end-of-image marker")
}

fn png_truncation(bytes: &[u8]) -> Option<String> {
    let mut pos = 8; // the signature (the sniffer checked it)
    loop {
        if pos + 8 > bytes.len() {
            return Some(format!("the file ends at byte {} before the IEND chunk", bytes.len()));
        }
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let end = pos.saturating_add(12).saturating_add(len);
        if end > bytes.len() {
            let name = String::from_utf8_lossy(kind);
            return Some(format!("the {name} chunk runs past the end of the file ({} bytes)", bytes.len()));
        }
        if kind == b"IEND" {
            return None;
        }
        pos = end;
    }
}

/// Whether a decoder's I/O error means the data ran out.
fn is_eof(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof
}

fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

pub(crate) fn check_dims(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt { format: "image".into(), detail: format!("zero size {width}x{height}") });
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(ImageError::TooLarge { width, height, limit: format!("{} px per side", limits.max_side) });
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(ImageError::TooLarge { width, height, limit: format!("{} pixels", limits.max_pixels) });
    }
    Ok(())
}

fn decode_generic(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let fname = format_name(format);
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => ImageError::OverDecoderLimit { limit: l.to_string() },
        image::ImageError::Unsupported(u) => ImageError::Unsupported { format: format!("{fname} ({u})") },
        other => cut(bytes, format).unwrap_or_else(|| match other {
            image::ImageError::IoError(io) if is_eof(&io) => {
                ImageError::Truncated { format: fname.clone(), detail: io.to_string() }
            }
            other => ImageError::Corrupt { format: fname.clone(), detail: other.to_string() },
        }),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    check_dims(w, h, limits)?;
    if let Some(e) = cut(bytes, format) {
        return Err(e);
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(to_rgb8(img))
}

/// Flattens any colour type to RGB8; transparent pixels become white, as a
/// person looking at the photo would see them.
pub(crate) fn to_rgb8(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return match img {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.to_rgb8(),
        };
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// DCT-scaled JPEG decode. Returns `Ok(None)` when scaling would not help (the
/// photo is already small) or the colour type is one we leave to the generic path.
fn decode_jpeg_scaled(bytes: &[u8], min_side: u32, limits: &DecodeLimits) -> Result<Option<RgbImage>, ImageError> {
    let corrupt = |e: jpeg_decoder::Error| {
        cut(bytes, ImageFormat::Jpeg).unwrap_or_else(|| match e {
            jpeg_decoder::Error::Io(io) if is_eof(&io) => {
                ImageError::Truncated { format: "JPEG".into(), detail: io.to_string() }
            }
            other => ImageError::Corrupt { format: "JPEG".into(), detail: other.to_string() },
        })
    };
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(corrupt)?;
    let Some(info) = decoder.info() else { return Ok(None) };
    let (w, h) = (info.width as u32, info.height as u32);
    check_dims(w, h, limits)?;
    if let Some(e) = cut(bytes, ImageFormat::Jpeg) {
        return Err(e);
    }
    if w.min(h) < 2 * min_side || info.pixel_format != jpeg_decoder::PixelFormat::RGB24 {
        // Nothing to gain (or CMYK/16-bit, which the generic decoder converts properly).
        return Ok(None);
    }
    let req = min_side.min(u16::MAX as u32) as u16;
    let (sw, sh) = decoder.scale(req, req).map_err(corrupt)?;
    decoder.set_max_decoding_buffer_size(limits.max_alloc.min(usize::MAX as u64) as usize);
    let pixels = decoder.decode().map_err(corrupt)?;
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    let Some(rgb) = RgbImage::from_raw(sw as u32, sh as u32, pixels) else {
        return Err(ImageError::Corrupt { format: "JPEG".into(), detail: "decoder returned a short buffer".into() });
    };
    let mut img = DynamicImage::ImageRgb8(rgb);
    img.apply_orientation(orientation);
    Ok(Some(img.into_rgb8()))
}

/// Resizes with an antialiased bilinear filter (the same family as Pillow's
/// `resize(..., BILINEAR)`), SIMD-accelerated by `fast_image_resize`.
/// `crop` is `(left, top, width, height)` in source pixels.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32, crop: Option<(f64, f64, f64, f64)>) -> RgbImage {
    if crop.is_none() && img.width() == width && img.height() == height {
        return img.clone();
    }
    let mut dst = RgbImage::new(width, height);
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(fr::FilterType::Bilinear));
    if let Some((l, t, w, h)) = crop {
        options = options.crop(l, t, w, h);
    }
    // Both images are RGB8 with matching pixel types, so resizing cannot fail.
    Resizer::new().resize(img, &mut dst, &options).expect("RGB8 to RGB8 resize");
    dst
}

/// The square region a spec's resize mode takes from a `w`x`h` image.
pub fn crop_for(mode: ResizeMode, w: u32, h: u32) -> Option<(f64, f64, f64, f64)> {
    match mode {
        ResizeMode::Stretch => None,
        ResizeMode::CenterCrop => {
            let side = w.min(h) as f64;
            Some(((w as f64 - side) / 2.0, (h as f64 - side) / 2.0, side, side))
        }
    }
}

/// Writes `(pixel/255 - mean) / std` in CHW order into `out`
/// (length `3 * width * height`).
pub fn normalize_into(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "output slice does not match the image size");
    // Precomputing a 256-entry table per channel turns the hot loop into lookups.
    let tables: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]));
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = tables[0][px[0] as usize];
        g[i] = tables[1][px[1] as usize];
        b[i] = tables[2][px[2] as usize];
    }
}

/// Decoded RGB image to model input: resize per the spec, then normalise into `out`.
pub fn tensor_from_rgb(img: &RgbImage, spec: &PreprocessSpec, out: &mut [f32]) {
    let crop = crop_for(spec.resize, img.width(), img.height());
    let resized = resize_rgb(img, spec.size, spec.size, crop);
    normalize_into(&resized, spec.mean, spec.std, out);
}

/// The whole path: bytes to one image's slice of an NCHW batch.
pub fn preprocess_bytes(
    bytes: &[u8],
    spec: &PreprocessSpec,
    limits: &DecodeLimits,
    out: &mut [f32],
) -> Result<(), ImageError> {
    let img = decode_rgb(bytes, spec.size, limits)?;
    tensor_from_rgb(&img, spec, out);
    Ok(())
}

/// One fuzz input through the bytes-to-tensor path, shared by the libFuzzer
/// target (`fuzz/`) and the mutation fuzzer (`tests/reliability_fuzz.rs`). The last byte picks the model input and resize mode, so
/// the stretch and centre-crop paths and the scaled JPEG decode are reached.
/// Panics if a decoded tensor holds a non-finite value.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8], limits: &DecodeLimits) {
    let _ = sniff(data);
    let (mode, size) = match data.last().map(|b| b % 4) {
        Some(0) => (ResizeMode::Stretch, 224),
        Some(1) => (ResizeMode::CenterCrop, 224),
        Some(2) => (ResizeMode::Stretch, 16),
        _ => (ResizeMode::CenterCrop, 3),
    };
    let spec = PreprocessSpec { size, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], resize: mode };
    let mut out = vec![0.0f32; spec.tensor_len()];
    if preprocess_bytes(data, &spec, limits, &mut out).is_ok() {
        assert!(out.iter().all(|v| v.is_finite()), "non-finite value in the tensor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    fn spec(size: u32) -> PreprocessSpec {
        PreprocessSpec { size, mean: [0.5, 0.25, 0.0], std: [0.5, 0.25, 1.0], resize: ResizeMode::Stretch }
    }

    /// The daemon reuses tensor buffers without clearing them: every element
    /// must be written, whatever the resize mode and the image's shape.
    #[test]
    fn every_element_is_written_so_buffers_can_be_reused() {
        let img =
            DynamicImage::ImageRgb8(RgbImage::from_fn(37, 20, |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, 90])));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&img, format);
            for resize in [ResizeMode::Stretch, ResizeMode::CenterCrop] {
                let spec = PreprocessSpec { resize, ..spec(16) };
                let mut clean = vec![0.0f32; spec.tensor_len()];
                let mut dirty = vec![f32::NAN; spec.tensor_len()];
                preprocess_bytes(&bytes, &spec, &DecodeLimits::default(), &mut clean).unwrap();
                preprocess_bytes(&bytes, &spec, &DecodeLimits::default(), &mut dirty).unwrap();
                assert_eq!(clean, dirty, "{format:?} {resize:?}");
            }
        }
    }

    #[test]
    fn sniffing_ignores_names_and_knows_the_formats() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3])));
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Bmp, ImageFormat::Gif, ImageFormat::Tiff] {
            assert_eq!(sniff(&encode(&img, format)), Some(format), "{format:?}");
        }
        let webp = encode(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::WebP);
        assert_eq!(sniff(&webp), Some(ImageFormat::WebP));
        assert_eq!(sniff(b"hello, this is text"), None);
        assert_eq!(sniff(&[]), None);
    }

    #[test]
    fn errors_have_kinds() {
        let limits = DecodeLimits::default();
        assert_eq!(decode_rgb(&[], 224, &limits).unwrap_err().kind(), DecodeFailure::Empty);
        assert_eq!(decode_rgb(b"just some text\n", 224, &limits).unwrap_err().kind(), DecodeFailure::NotImage);
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 9])));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let truncated = &jpeg[..jpeg.len() / 3];
        assert_eq!(decode_rgb(truncated, 224, &limits).unwrap_err().kind(), DecodeFailure::Truncated);
        // Damage rather than shortness: the segment after the first one does not start with FF.
        let mut damaged = jpeg.clone();
        damaged[4 + u16::from_be_bytes([jpeg[4], jpeg[5]]) as usize] = 0x00;
        assert_eq!(decode_rgb(&damaged, 224, &limits).unwrap_err().kind(), DecodeFailure::Corrupt);
    }

    #[test]
    fn failure_kinds_have_distinct_stable_names() {
        use DecodeFailure::*;
        let all = [Empty, NotImage, Unsupported, TooLarge, Truncated, Corrupt];
        let names: Vec<&str> = all.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["empty", "not_image", "unsupported", "too_large", "truncated", "corrupt"]);
        for k in all {
            assert_eq!(k.to_string(), k.as_str());
            assert_eq!(String::from(k), k.as_str());
        }
        assert!(DecodeFailure::Truncated.may_be_partial_write());
        assert!(!DecodeFailure::TooLarge.may_be_partial_write());
    }

    /// A photo with texture, so the encoders write a realistic amount of
    /// entropy-coded data (a flat picture compresses to almost nothing).
    fn textured(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x ^ y) as u8, ((x * y) % 251) as u8])
        }))
    }

    /// Cut points: inside the headers, early, middle and late in the image
    /// data, and one byte short.
    fn cuts(len: usize) -> Vec<usize> {
        vec![12, 20, 100, len / 5, len / 2, len * 9 / 10, len - 2, len - 1]
    }

    fn assert_truncated_everywhere(bytes: &[u8], min_side: u32, what: &str) {
        let limits = DecodeLimits::default();
        decode_rgb(bytes, min_side, &limits).unwrap_or_else(|e| panic!("{what}: the whole file must decode: {e}"));
        for cut in cuts(bytes.len()) {
            let err = decode_rgb(&bytes[..cut], min_side, &limits)
                .map(|img| format!("decoded as {}x{}", img.width(), img.height()))
                .map_err(|e| (e.kind(), e.to_string()));
            assert!(
                matches!(err, Err((DecodeFailure::Truncated, _))),
                "{what} cut at {cut} of {} bytes: {err:?}",
                bytes.len()
            );
        }
    }

    #[test]
    fn truncated_jpegs_are_refused_as_truncated() {
        // Small (the generic decoder) and large (the DCT-scaled decoder).
        let small = encode(&textured(120, 90), ImageFormat::Jpeg);
        assert!(small.len() > 3000, "{} bytes", small.len());
        assert_truncated_everywhere(&small, 224, "small JPEG");
        assert_truncated_everywhere(&small, 0, "small JPEG, full decode");
        let large = encode(&textured(1000, 800), ImageFormat::Jpeg);
        assert_truncated_everywhere(&large, 224, "large JPEG");
    }

    #[test]
    fn a_jpeg_with_trailing_bytes_or_an_exif_thumbnail_is_whole() {
        let limits = DecodeLimits::default();
        let jpeg = encode(&textured(120, 90), ImageFormat::Jpeg);
        // Trailing garbage after EOI, as some cameras and editors write.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"\0\0\0garbage\xFF\xD8");
        assert!(decode_rgb(&trailing, 224, &limits).is_ok());
        // An APP1 segment holding a whole (thumbnail) JPEG, EOI included: the
        // photo cut after it is still truncated, the whole photo decodes.
        let thumb = encode(&textured(8, 8), ImageFormat::Jpeg);
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
        app1.extend_from_slice(&thumb);
        let with_thumb: Vec<u8> = jpeg[..2].iter().chain(&app1).chain(&jpeg[2..]).copied().collect();
        assert!(decode_rgb(&with_thumb, 224, &limits).is_ok());
        let cut = &with_thumb[..app1.len() + jpeg.len() / 2];
        assert_eq!(decode_rgb(cut, 224, &limits).unwrap_err().kind(), DecodeFailure::Truncated);
    }

    #[test]
    fn a_progressive_style_jpeg_needs_its_last_scan() {
        // Two scans: headers, scan 1, a table segment, scan 2, EOI. Cut in
        // the second scan it has the first scan's data and no EOI.
        let jpeg = encode(&textured(64, 64), ImageFormat::Jpeg);
        let eoi = jpeg.len() - 2;
        assert_eq!(&jpeg[eoi..], [0xFF, 0xD9]);
        let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut two_scans = jpeg[..eoi].to_vec();
        two_scans.extend_from_slice(&[0xFF, 0xFE, 0x00, 0x04, 0xFF, 0xD9]); // a COM holding FF D9
        two_scans.extend_from_slice(&jpeg[sos..]);
        assert_eq!(jpeg_truncation(&two_scans), None);
        let cut = &two_scans[..two_scans.len() - 10];
        assert!(jpeg_truncation(cut).is_some());
    }

    #[test]
    fn truncated_pngs_are_refused_as_truncated() {
        let png = encode(&textured(120, 90), ImageFormat::Png);
        assert_truncated_everywhere(&png, 224, "PNG");
    }

    #[test]
    fn a_decoder_limit_says_which_limit_and_no_made_up_size() {
        let err = ImageError::OverDecoderLimit { limit: "libheif's limits: too many tiles".into() };
        assert_eq!(err.kind(), DecodeFailure::TooLarge);
        assert_eq!(err.to_string(), "image is too large to decode (libheif's limits: too many tiles)");
    }

    #[test]
    fn huge_header_is_refused_before_allocation() {
        // A valid PNG header claiming 60000x60000 pixels and no data.
        let png = crate::testkit::png_header_claiming(60000, 60000);
        let err = decode_rgb(&png, 224, &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.kind(), DecodeFailure::TooLarge, "{err}");
    }

    #[test]
    fn normalisation_matches_hand_computed_values() {
        // A uniform colour survives any resize unchanged, so every output value is
        // (v/255 - mean) / std, computed here by hand.
        let img = RgbImage::from_pixel(37, 23, image::Rgb([255, 51, 0]));
        let s = spec(8);
        let mut out = vec![0.0; s.tensor_len()];
        tensor_from_rgb(&img, &s, &mut out);
        let expected = [(1.0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 0.0];
        for c in 0..3 {
            for v in &out[c * 64..(c + 1) * 64] {
                assert!((v - expected[c]).abs() < 1e-6, "channel {c}: {v} vs {}", expected[c]);
            }
        }
    }

    #[test]
    fn layout_is_chw_and_rgb_ordered() {
        // Left half red, right half blue: channel 0 is high on the left only.
        let img = RgbImage::from_fn(4, 2, |x, _| if x < 2 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let mut out = vec![0.0; 3 * 8];
        normalize_into(&img, [0.0; 3], [1.0; 3], &mut out);
        assert_eq!(&out[0..4], &[1.0, 1.0, 0.0, 0.0]); // R, row 0
        assert_eq!(&out[8..16], &[0.0; 8]); // G
        assert_eq!(&out[16..20], &[0.0, 0.0, 1.0, 1.0]); // B, row 0
    }

    #[test]
    fn halving_averages_pixel_pairs() {
        // Antialiased bilinear at exactly 2x down weighs the 4 source pixels under
        // each destination pixel 1/8, 3/8, 3/8, 1/8 along each axis (a tent of
        // radius 2 source pixels). Independent computation for a 1-D ramp.
        let src = RgbImage::from_fn(8, 1, |x, _| image::Rgb([(x * 32) as u8, 0, 0]));
        let dst = resize_rgb(&src, 4, 1, None);
        let row: Vec<f64> = (0..8u32).map(|x| (x * 32) as f64).collect();
        for dx in 0..4usize {
            let centre = 2.0 * dx as f64 + 1.0; // in source pixel centres: between 2dx and 2dx+1
            let mut acc = 0.0;
            let mut wsum = 0.0;
            for (sx, v) in row.iter().enumerate() {
                let d: f64 = ((sx as f64 + 0.5) - centre).abs() / 2.0;
                let w = (1.0f64 - d).max(0.0);
                acc += w * v;
                wsum += w;
            }
            let expected = acc / wsum;
            let got = dst.get_pixel(dx as u32, 0)[0] as f64;
            assert!((got - expected).abs() <= 1.0, "pixel {dx}: got {got}, expected {expected:.2}");
        }
    }

    #[test]
    fn grayscale_alpha_and_16_bit_become_rgb() {
        let limits = DecodeLimits::default();
        let gray = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(5, 5, image::Luma([100])));
        let rgb = decode_rgb(&encode(&gray, ImageFormat::Png), 0, &limits).unwrap();
        assert_eq!(rgb.get_pixel(2, 2).0, [100, 100, 100]);

        let transparent = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(5, 5, image::Rgba([0, 0, 0, 0])));
        let rgb = decode_rgb(&encode(&transparent, ImageFormat::Png), 0, &limits).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255], "transparent pixels composite onto white");

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(5, 5, image::Rgb([65535u16, 0, 32896])));
        let rgb = decode_rgb(&encode(&deep, ImageFormat::Png), 0, &limits).unwrap();
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 0, 128]);
    }

    #[test]
    fn an_animated_gif_is_read_as_its_first_frame() {
        use image::codecs::gif::{GifEncoder, Repeat};
        let frame = |rgb| image::Frame::new(image::RgbaImage::from_pixel(6, 4, image::Rgba(rgb)));
        let mut gif = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut gif);
            enc.set_repeat(Repeat::Infinite).unwrap();
            enc.encode_frames([frame([220, 20, 20, 255]), frame([20, 20, 220, 255])]).unwrap();
        }
        let rgb = decode_rgb(&gif, 0, &DecodeLimits::default()).unwrap();
        let p = rgb.get_pixel(3, 2).0;
        assert!(p[0] > 180 && p[2] < 60, "not the first frame: {p:?}");
    }

    /// The EXIF orientation is applied on both JPEG paths (full and DCT-scaled).
    #[test]
    fn an_exif_orientation_turns_a_jpeg_on_both_paths() {
        let img =
            RgbImage::from_fn(
                640,
                480,
                |x, _| if x < 320 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 20, 220]) },
            );
        let jpeg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let turned = crate::testkit::raw_files::jpeg_with_exif_orientation(&jpeg, 6);
        for min_side in [0, 100] {
            let upright = decode_rgb(&jpeg, min_side, &DecodeLimits::default()).unwrap();
            let rgb = decode_rgb(&turned, min_side, &DecodeLimits::default()).unwrap();
            assert_eq!(rgb.dimensions(), (upright.height(), upright.width()), "min_side {min_side}");
            // A quarter turn clockwise puts the left (red) half on top.
            let top = rgb.get_pixel(rgb.width() / 2, rgb.height() / 4).0;
            let bottom = rgb.get_pixel(rgb.width() / 2, rgb.height() * 3 / 4).0;
            assert!(top[0] > 180 && bottom[2] > 180, "min_side {min_side}: {top:?} {bottom:?}");
        }
    }

    #[test]
    fn scaled_jpeg_decode_covers_the_target_and_keeps_the_picture() {
        // 1600x1200 photo: left half red, right half green.
        let img =
            RgbImage::from_fn(
                1600,
                1200,
                |x, _| if x < 800 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 220, 20]) },
            );
        let jpeg = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        let small = decode_rgb(&jpeg, 224, &DecodeLimits::default()).unwrap();
        assert!(small.width() >= 224 && small.height() >= 224);
        assert!(small.width() < 1600, "expected a DCT-scaled decode, got {}x{}", small.width(), small.height());
        let left = small.get_pixel(small.width() / 4, small.height() / 2);
        let right = small.get_pixel(3 * small.width() / 4, small.height() / 2);
        assert!(left[0] > 180 && left[1] < 60, "{left:?}");
        assert!(right[1] > 180 && right[0] < 60, "{right:?}");
    }
}
