//! The photo formats beyond what the `image` crate reads: HEIC and AVIF
//! (libheif, loaded at run time), JPEG XL (`jxl-oxide`) and camera RAW (its
//! embedded JPEG preview).
//!
//! `preprocess::decode_rgb` asks [`sniff`] first, so a RAW file with a TIFF
//! header is read as RAW (its preview) and not as the tiny thumbnail a TIFF
//! decoder would find in IFD0. Every decoder here checks the declared size
//! against the same [`DecodeLimits`] before it allocates pixels, and turns
//! every failure into the crate's closed set of reasons ([`ImageError`]).

pub(crate) mod bmff;
pub mod heif;
mod jxl;
pub mod raw;
mod tiff;

use crate::preprocess::{DecodeLimits, ImageError};
use image::RgbImage;
pub use raw::RawKind;

/// Extensions (lower case) of every format the decoders read, this module's
/// and the `image` crate's, for tools that choose photos by name (training's
/// dataset folders). The daemon sniffs each file's content and needs no list.
pub const PHOTO_EXTENSIONS: [&str; 21] = [
    "jpg", "jpeg", "jfif", "png", "webp", "bmp", "gif", "tif", "tiff", // the image crate
    "heic", "heif", "hif", "avif", "jxl", // libheif, jxl-oxide
    "dng", "nef", "arw", "cr2", "cr3", "orf", "raf", // RAW, through the embedded preview
];

/// A format read by this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// HEIF with HEVC inside: what iPhones save (`.heic`).
    Heic,
    Avif,
    JpegXl,
    Raw(RawKind),
}

impl Container {
    /// The name in messages and error rows.
    pub fn name(self) -> &'static str {
        match self {
            Container::Heic => "HEIC",
            Container::Avif => "AVIF",
            Container::JpegXl => "JPEG XL",
            Container::Raw(kind) => kind.name(),
        }
    }
}

/// HEIF brands of still images and sequences made with HEVC.
const HEIC_BRANDS: [&[u8; 4]; 8] = [b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"];
/// The JPEG XL container's first box (ISO/IEC 18181-2).
pub(crate) const JXL_CONTAINER: &[u8] = b"\0\0\0\x0cJXL \r\n\x87\n";

/// Which of these formats `bytes` is, from its content alone.
pub fn sniff(bytes: &[u8]) -> Option<Container> {
    if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(JXL_CONTAINER) {
        return Some(Container::JpegXl);
    }
    if let Some(brands) = bmff::brands(bytes) {
        // AVIF files list `mif1` too, so AV1 is looked for first; a plain
        // `mif1` file (HEIF with an unnamed codec) goes to libheif as HEIC.
        if brands.iter().any(|b| b == b"avif" || b == b"avis") {
            return Some(Container::Avif);
        }
        if brands.iter().any(|b| HEIC_BRANDS.contains(&b) || b == b"mif1" || b == b"msf1") {
            return Some(Container::Heic);
        }
        if brands.iter().any(|b| b == b"crx ") {
            return Some(Container::Raw(RawKind::Cr3));
        }
        return None;
    }
    raw::sniff(bytes).map(Container::Raw)
}

/// Decodes `bytes`, already sniffed as `container`, to 8-bit sRGB-ish RGB,
/// oriented. `min_side` is passed on to the JPEG path of RAW previews.
pub(crate) fn decode(
    container: Container,
    bytes: &[u8],
    min_side: u32,
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageError> {
    match container {
        Container::Heic | Container::Avif => {
            // A cut download is `truncated` whatever libheif would say.
            if let Some(detail) = bmff::truncation(bytes) {
                return Err(ImageError::Truncated { format: container.name().into(), detail });
            }
            heif::decode(bytes, container.name(), limits)
        }
        Container::JpegXl => jxl::decode(bytes, limits),
        Container::Raw(kind) => raw::decode(kind, bytes, min_side, limits),
    }
}

/// Refuses a decode whose pixel buffer would pass the allocation limit,
/// before it is made.
pub(crate) fn check_alloc(w: u32, h: u32, bytes_per_pixel: u64, limits: &DecodeLimits) -> Result<(), ImageError> {
    let need = w as u64 * h as u64 * bytes_per_pixel;
    if need > limits.max_alloc {
        return Err(ImageError::TooLarge {
            width: w,
            height: h,
            limit: format!("{} bytes of memory", limits.max_alloc),
        });
    }
    Ok(())
}

/// One line per native decoder: what it reads and whether it can, for the
/// daemon's start-up log (a missing library is said once, there).
pub fn native_decoders() -> Vec<(&'static str, Result<String, String>)> {
    vec![("HEIC and AVIF", heif::availability().map(|v| format!("libheif {v}")))]
}

#[cfg(test)]
mod tests;
