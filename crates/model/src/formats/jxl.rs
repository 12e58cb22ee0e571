//! JPEG XL through `jxl-oxide` (pure Rust, so nothing to install).
//!
//! The codestream's own orientation is applied by the renderer; an EXIF
//! orientation inside a JPEG XL file is ignored, as the format's spec says
//! (the codestream header is the authority), so an image is never turned twice.

use super::check_alloc;
use crate::preprocess::{DecodeLimits, ImageError, check_dims, to_rgb8};
use image::{DynamicImage, ImageDecoder, Limits};
use jxl_oxide::integration::JxlDecoder;
use std::io::Cursor;

const FORMAT: &str = "JPEG XL";

pub(crate) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<image::RgbImage, ImageError> {
    let mut decoder = JxlDecoder::new(Cursor::new(bytes)).map_err(|e| error(bytes, e))?;
    let (w, h) = decoder.dimensions();
    check_dims(w, h, limits)?;
    let bytes_per_pixel = decoder.color_type().bytes_per_pixel() as u64;
    check_alloc(w, h, bytes_per_pixel, limits)?;
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_alloc);
    decoder.set_limits(image_limits).map_err(|e| error(bytes, e))?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| error(bytes, e))?;
    Ok(to_rgb8(img))
}

fn error(bytes: &[u8], e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(l) => ImageError::TooLarge { width: 0, height: 0, limit: l.to_string() },
        other if ends_early(&other) => ImageError::Truncated { format: FORMAT.into(), detail: other.to_string() },
        other => {
            // jxl-oxide reports a stream cut inside a frame as a plain
            // decoding error; a file shorter than its own header says is the
            // one case to tell apart, and the box walk does that.
            let boxed = bytes.starts_with(super::JXL_CONTAINER);
            match super::bmff::truncation(bytes).filter(|_| boxed) {
                Some(detail) => ImageError::Truncated { format: FORMAT.into(), detail },
                None => ImageError::Corrupt { format: FORMAT.into(), detail: other.to_string() },
            }
        }
    }
}

/// Whether the decoder ran out of data: an `UnexpectedEof` or jxl-oxide's
/// incomplete frame anywhere in the error's chain of sources.
fn ends_early(e: &image::ImageError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            return true;
        }
        if let Some(render) = s.downcast_ref::<jxl_render::Error>()
            && (render.unexpected_eof() || matches!(render, jxl_render::Error::IncompleteFrame))
        {
            return true;
        }
        source = s.source();
    }
    false
}
