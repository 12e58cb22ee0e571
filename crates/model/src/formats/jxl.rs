//! JPEG XL through `jxl-oxide` (pure Rust, so nothing to install).
//!
//! - A JPEG XL stream can be rendered before it is complete (that is the
//!   format's progressive loading), so half a file would give a blurry but
//!   whole-looking picture. The first frame must be loaded completely;
//!   otherwise the file is `truncated`, like a cut JPEG.
//! - The codestream's own orientation is applied by the renderer; an EXIF
//!   orientation inside a JPEG XL file is ignored, as the format's spec says
//!   (the codestream header is the authority), so an image is never turned twice.
//! - High bit depths, floating-point samples and HDR are rendered by
//!   jxl-oxide in the image's colour space and converted to 8 bits by
//!   clamping (CMYK is converted to sRGB first).

use super::check_alloc;
use crate::preprocess::{DecodeLimits, ImageError, check_dims, to_rgb8};
use image::{DynamicImage, GrayAlphaImage, GrayImage, RgbImage, RgbaImage};
use jxl_oxide::{AllocTracker, EnumColourEncoding, JxlImage, RenderingIntent};
use std::error::Error;
use std::io::Cursor;

const FORMAT: &str = "JPEG XL";

pub(crate) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    let tracker = AllocTracker::with_limit(limits.max_alloc.min(usize::MAX as u64) as usize);
    let mut image =
        JxlImage::builder().alloc_tracker(tracker).read(Cursor::new(bytes)).map_err(|e| error(bytes, e.as_ref()))?;
    let (w, h) = (image.width(), image.height());
    check_dims(w, h, limits)?;
    check_alloc(w, h, 4, limits)?;
    if image.num_loaded_keyframes() == 0 {
        return Err(ImageError::Truncated {
            format: FORMAT.into(),
            detail: format!("the first frame is incomplete at byte {}", bytes.len()),
        });
    }
    if image.pixel_format().has_black() {
        image.request_color_encoding(EnumColourEncoding::srgb(RenderingIntent::Relative));
    }
    let render = image.render_frame(0).map_err(|e| error(bytes, e.as_ref()))?;
    let mut stream = render.stream();
    let (sw, sh, channels) = (stream.width(), stream.height(), stream.channels());
    let mut samples = vec![0u8; sw as usize * sh as usize * channels as usize];
    stream.write_to_buffer(&mut samples);
    let picture = match channels {
        1 => GrayImage::from_raw(sw, sh, samples).map(DynamicImage::ImageLuma8),
        2 => GrayAlphaImage::from_raw(sw, sh, samples).map(DynamicImage::ImageLumaA8),
        3 => RgbImage::from_raw(sw, sh, samples).map(DynamicImage::ImageRgb8),
        4 => RgbaImage::from_raw(sw, sh, samples).map(DynamicImage::ImageRgba8),
        n => return Err(ImageError::Unsupported { format: format!("{FORMAT} with {n} rendered channels") }),
    };
    picture
        .map(to_rgb8)
        .ok_or_else(|| ImageError::Corrupt { format: FORMAT.into(), detail: "short pixel buffer".into() })
}

fn error(bytes: &[u8], e: &(dyn Error + 'static)) -> ImageError {
    if ends_early(e) {
        return ImageError::Truncated { format: FORMAT.into(), detail: e.to_string() };
    }
    // A boxed file shorter than its own boxes say is cut too.
    let boxed = bytes.starts_with(super::JXL_CONTAINER);
    match super::bmff::truncation(bytes).filter(|_| boxed) {
        Some(detail) => ImageError::Truncated { format: FORMAT.into(), detail },
        None => ImageError::Corrupt { format: FORMAT.into(), detail: e.to_string() },
    }
}

/// Whether the decoder ran out of data: an `UnexpectedEof` or jxl-oxide's
/// incomplete frame anywhere in the error's chain of sources.
fn ends_early(e: &(dyn Error + 'static)) -> bool {
    let mut source = Some(e);
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
