//! Small JPEG renditions of photos, for the report and the web page.
//!
//! Made with the same decoder as classification (every format, the same
//! limits, orientation applied), so a photo that classified also shows, and
//! a broken one fails with the same typed error instead of breaking a page.

use crate::preprocess::{DecodeLimits, ImageError, decode_rgb, resize_rgb};
use std::path::Path;

/// Longer edge of the thumbnails in the report and the grid of the page.
pub const THUMB: u32 = 192;

/// Longer edge of the larger view the page shows of one photo.
pub const PREVIEW: u32 = 1024;

/// Why a rendition was not made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    #[error("cannot read the photo: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Decode(#[from] ImageError),
    #[error("cannot write the thumbnail: {0}")]
    Encode(#[from] image::ImageError),
    #[error("cannot put the thumbnail in place: {0}")]
    Rename(#[source] std::io::Error),
}

/// The file name of a content's thumbnail: the first 16 hex digits of its hash.
pub fn file_name(content_hash: &str) -> String {
    format!("{}.jpg", &content_hash[..16.min(content_hash.len())])
}

/// The photo at `src` as JPEG bytes, its longer edge at most `side` pixels.
pub fn render(src: &Path, side: u32) -> Result<Vec<u8>, ThumbError> {
    let bytes = std::fs::read(src).map_err(ThumbError::Read)?;
    let img = decode_rgb(&bytes, side, &DecodeLimits::default())?;
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = (side as f64 / w.max(h)).min(1.0);
    let (tw, th) = (((w * scale).round() as u32).max(1), ((h * scale).round() as u32).max(1));
    let small = resize_rgb(&img, tw, th, None);
    let mut out = std::io::Cursor::new(Vec::new());
    small.write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

/// Writes the thumbnail of `src` to `dst`, whole or not at all (a reader
/// never sees half a file: it is written beside and renamed into place).
pub fn make(src: &Path, dst: &Path) -> Result<(), ThumbError> {
    let jpeg = render(src, THUMB)?;
    let tmp = dst.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, jpeg).map_err(ThumbError::Rename)?;
    std::fs::rename(&tmp, dst).map_err(ThumbError::Rename)
}
