//! Camera RAW files, read through the JPEG preview the camera embeds.
//!
//! Why the preview and not a demosaic of the sensor data: every camera
//! stores a JPEG of the whole frame as it would have saved it (full size on
//! most bodies since about 2010, at least 1,600 px on the rest), developed
//! with the camera's own colour and tone. The model wants 224-260 px. So the
//! preview is faster by two orders of magnitude than developing the raw data,
//! looks like the photographer's picture rather than our guess at it, and
//! goes through the one JPEG path every other photo takes (limits, DCT
//! scaling, truncation check). A file without any usable preview is an
//! `unsupported` row that says so.
//!
//! Where the preview is:
//! - TIFF-based files (DNG, CR2, NEF, ARW, PEF, ORF, RW2): the IFDs point at
//!   it, as a `JPEGInterchangeFormat` offset and length or as a single
//!   JPEG-compressed strip; IFDs holding sensor data are skipped.
//! - RAF: the header names the JPEG's offset and length.
//! - Anything else, or when the pointers give nothing (CR3, whose preview
//!   sits in a track of its box file; ORF, whose big preview hides in the
//!   maker note): every `FF D8 FF` in the file whose header walks as a
//!   baseline or progressive JPEG is a candidate.
//!
//! The largest candidate by pixel count wins. The container's orientation
//! (TIFF tag 274 in IFD0) is applied unless the preview carries its own.

use super::tiff::{self, Tiff};
use crate::preprocess::{DecodeLimits, ImageError, decode_rgb};
use image::{DynamicImage, RgbImage, metadata::Orientation};

/// The RAW formats told apart, for names in messages and `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    Dng,
    Cr2,
    Cr3,
    Nef,
    Arw,
    Pef,
    Orf,
    Rw2,
    Raf,
    /// A TIFF holding sensor data from another maker.
    Other,
}

impl RawKind {
    pub fn name(self) -> &'static str {
        match self {
            RawKind::Dng => "DNG",
            RawKind::Cr2 => "CR2",
            RawKind::Cr3 => "CR3",
            RawKind::Nef => "NEF",
            RawKind::Arw => "ARW",
            RawKind::Pef => "PEF",
            RawKind::Orf => "ORF",
            RawKind::Rw2 => "RW2",
            RawKind::Raf => "RAF",
            RawKind::Other => "camera RAW",
        }
    }
}

const RAF_MAGIC: &[u8] = b"FUJIFILMCCD-RAW ";
/// Candidates looked at by the byte scan, at most: raw sensor data can
/// contain `FF D8 FF` by chance, and each false start costs a header walk.
const MAX_SCANNED: usize = 10_000;

/// Which RAW file this is, judged from the first bytes (and, for a plain
/// TIFF header, its IFDs). `None` for an ordinary TIFF picture.
pub(crate) fn sniff(bytes: &[u8]) -> Option<RawKind> {
    if bytes.starts_with(RAF_MAGIC) {
        return Some(RawKind::Raf);
    }
    match bytes.get(0..4)? {
        b"IIRO" | b"IIRS" | b"MMOR" => return Some(RawKind::Orf),
        b"IIU\0" => return Some(RawKind::Rw2),
        b"II*\0" | b"MM\0*" => {}
        _ => return None,
    }
    if bytes.get(8..10) == Some(b"CR") {
        return Some(RawKind::Cr2);
    }
    let t = Tiff::parse(bytes)?;
    let ifd0 = t.ifd0()?;
    if ifd0.get(tiff::DNG_VERSION).is_some() {
        return Some(RawKind::Dng);
    }
    let holds_sensor_data = t.all_ifds().iter().any(|ifd| is_sensor_data(&t, ifd));
    if !holds_sensor_data {
        return None;
    }
    let make = ifd0.get(tiff::MAKE).and_then(|e| t.text(e)).unwrap_or_default().to_ascii_uppercase();
    Some(if make.starts_with("NIKON") {
        RawKind::Nef
    } else if make.starts_with("SONY") {
        RawKind::Arw
    } else if make.starts_with("PENTAX") || make.starts_with("RICOH") {
        RawKind::Pef
    } else {
        RawKind::Other
    })
}

fn is_sensor_data(t: &Tiff, ifd: &tiff::Ifd) -> bool {
    let photometric = ifd.get(tiff::PHOTOMETRIC).and_then(|e| t.values(e).first().copied());
    matches!(photometric, Some(tiff::PHOTOMETRIC_CFA | tiff::PHOTOMETRIC_LINEAR_RAW))
}

/// A JPEG inside the file: where, and the size its header declares.
#[derive(Debug, Clone, Copy)]
struct Preview {
    start: usize,
    end: usize,
    pixels: u64,
}

/// Decodes the best embedded preview, oriented, through the JPEG path.
pub(crate) fn decode(
    kind: RawKind,
    bytes: &[u8],
    min_side: u32,
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageError> {
    let tiff = Tiff::parse(bytes);
    // Walked once, for both the cut check and the preview pointers.
    let ifds = tiff.map(|t| t.all_ifds()).unwrap_or_default();
    // First, as it is cheap and spares a cut file the byte scan.
    if let Some(detail) = cut_short(kind, bytes, tiff.as_ref(), &ifds) {
        return Err(ImageError::Truncated { format: kind.name().into(), detail });
    }
    let mut candidates = match (kind, tiff) {
        (RawKind::Raf, _) => raf_preview(bytes).into_iter().collect(),
        (_, Some(t)) => tiff_previews(&t, &ifds),
        (_, None) => Vec::new(),
    };
    if candidates.is_empty() {
        candidates = scanned_previews(bytes);
    }
    let Some(best) = candidates.into_iter().max_by_key(|p| (p.pixels, p.end - p.start)) else {
        return Err(ImageError::Unsupported {
            format: format!("{} (no embedded JPEG preview; sensor data is not developed)", kind.name()),
        });
    };
    let jpeg = &bytes[best.start..best.end];
    let own_orientation = jpeg_exif_orientation(jpeg).is_some();
    let img = decode_rgb(jpeg, min_side, limits).map_err(|e| in_raw(kind, e))?;
    let container = tiff.and_then(|t| orientation(&t));
    match container {
        Some(o) if !own_orientation => {
            let mut img = DynamicImage::ImageRgb8(img);
            img.apply_orientation(o);
            Ok(img.into_rgb8())
        }
        _ => Ok(img),
    }
}

/// Why a RAW file is cut, if it is: its structure points past the end of
/// the data. Checked whether or not a preview survives, since a file that
/// ends early is still being copied or was damaged in transit, and the
/// settle rule and the user should both hear so.
fn cut_short(kind: RawKind, bytes: &[u8], tiff: Option<&Tiff>, ifds: &[tiff::Ifd]) -> Option<String> {
    let len = bytes.len() as u64;
    let ends = |what: &str| format!("the file ends at byte {len}, before its {what}");
    match kind {
        RawKind::Cr3 => super::bmff::truncation(bytes),
        RawKind::Raf => {
            // (offset, length) pairs of the header: the JPEG, the CFA header, the CFA data.
            let pairs = [(84, "preview"), (92, "sensor header"), (100, "sensor data")];
            pairs.into_iter().find_map(|(at, what)| match (raf_field(bytes, at), raf_field(bytes, at + 4)) {
                (Some(start), Some(n)) if start as u64 + n as u64 <= len => None,
                _ => Some(ends(what)),
            })
        }
        _ => {
            let t = tiff?;
            if t.ends_before_ifd0() {
                return Some(ends("first directory"));
            }
            ifds.iter().find_map(|ifd| {
                let values = |tag| ifd.get(tag).map(|e| t.values(e)).unwrap_or_default();
                let spans = values(tiff::STRIP_OFFSETS).into_iter().zip(values(tiff::STRIP_BYTE_COUNTS));
                let jpeg = values(tiff::JPEG_OFFSET).into_iter().zip(values(tiff::JPEG_LENGTH));
                spans.chain(jpeg).any(|(start, n)| start as u64 + n as u64 > len).then(|| ends("image data"))
            })
        }
    }
}

/// A preview's failure, named as the RAW file's.
fn in_raw(kind: RawKind, e: ImageError) -> ImageError {
    let name = |f: String| format!("{} preview ({f})", kind.name());
    match e {
        ImageError::Truncated { format, detail } => ImageError::Truncated { format: name(format), detail },
        ImageError::Corrupt { format, detail } => ImageError::Corrupt { format: name(format), detail },
        other => other,
    }
}

fn orientation(t: &Tiff) -> Option<Orientation> {
    let ifd0 = t.ifd0()?;
    let value = *t.values(ifd0.get(tiff::ORIENTATION)?).first()?;
    Orientation::from_exif(u8::try_from(value).ok()?)
}

/// A big-endian u32 of the RAF header (its offsets and lengths).
fn raf_field(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn raf_preview(bytes: &[u8]) -> Option<Preview> {
    let (start, len) = (raf_field(bytes, 84)? as usize, raf_field(bytes, 88)? as usize);
    preview_at(bytes, start, start.checked_add(len)?)
}

fn tiff_previews(t: &Tiff, ifds: &[tiff::Ifd]) -> Vec<Preview> {
    let data = t.data();
    let mut out = Vec::new();
    for ifd in ifds {
        if is_sensor_data(t, ifd) {
            continue;
        }
        let first = |tag| ifd.get(tag).and_then(|e| t.values(e).first().copied()).map(|v| v as usize);
        if let (Some(start), Some(len)) = (first(tiff::JPEG_OFFSET), first(tiff::JPEG_LENGTH)) {
            out.extend(start.checked_add(len).and_then(|end| preview_at(data, start, end)));
        }
        let compression = first(tiff::COMPRESSION);
        let strips = ifd.get(tiff::STRIP_OFFSETS).map(|e| t.values(e)).unwrap_or_default();
        let counts = ifd.get(tiff::STRIP_BYTE_COUNTS).map(|e| t.values(e)).unwrap_or_default();
        // 6: old-style JPEG, 7: JPEG. One strip is one whole JPEG stream.
        if matches!(compression, Some(6 | 7)) && strips.len() == 1 && counts.len() == 1 {
            let (start, len) = (strips[0] as usize, counts[0] as usize);
            out.extend(start.checked_add(len).and_then(|end| preview_at(data, start, end)));
        }
    }
    out
}

/// Every `FF D8 FF` whose header walks as a picture JPEG, to the file's end
/// (the JPEG path stops at the preview's own end-of-image marker).
fn scanned_previews(bytes: &[u8]) -> Vec<Preview> {
    let mut out = Vec::new();
    let mut looked = 0;
    let mut i = 0;
    while i + 3 <= bytes.len() && looked < MAX_SCANNED {
        if bytes[i] == 0xFF && bytes[i + 1] == 0xD8 && bytes[i + 2] == 0xFF {
            looked += 1;
            if let Some(p) = preview_at(bytes, i, bytes.len()) {
                out.push(p);
            }
        }
        i += 1;
    }
    out
}

/// A preview at `start..end` if the bytes there begin a JPEG of a picture:
/// baseline or progressive, one or three components. Lossless JPEG (SOF3)
/// is how CR2 and DNG store sensor data, and is refused here.
fn preview_at(bytes: &[u8], start: usize, end: usize) -> Option<Preview> {
    let jpeg = bytes.get(start..end.min(bytes.len()))?;
    let (w, h, components) = picture_sof(jpeg)?;
    (w > 0 && h > 0 && matches!(components, 1 | 3)).then(|| Preview {
        start,
        end: end.min(bytes.len()),
        pixels: w as u64 * h as u64,
    })
}

/// Walks the marker segments from SOI to the first frame header and returns
/// its width, height and component count, if it is SOF0, SOF1 or SOF2.
fn picture_sof(jpeg: &[u8]) -> Option<(u16, u16, u8)> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut pos = 2;
    for _ in 0..64 {
        while jpeg.get(pos) == Some(&0xFF) && jpeg.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if *jpeg.get(pos)? != 0xFF {
            return None;
        }
        let marker = *jpeg.get(pos + 1)?;
        let len = u16::from_be_bytes([*jpeg.get(pos + 2)?, *jpeg.get(pos + 3)?]) as usize;
        match marker {
            0xC0..=0xC2 => {
                let sof = jpeg.get(pos + 4..pos + 10)?;
                let h = u16::from_be_bytes([sof[1], sof[2]]);
                let w = u16::from_be_bytes([sof[3], sof[4]]);
                return Some((w, h, sof[5]));
            }
            // Any other frame type, a scan before a frame, or the end.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDA | 0xD9 => return None,
            _ if len < 2 => return None,
            _ => pos += 2 + len,
        }
    }
    None
}

/// The EXIF orientation a JPEG declares in its APP1 segment, if any.
fn jpeg_exif_orientation(jpeg: &[u8]) -> Option<Orientation> {
    let mut pos = 2;
    for _ in 0..64 {
        if *jpeg.get(pos)? != 0xFF {
            return None;
        }
        let marker = *jpeg.get(pos + 1)?;
        let len = u16::from_be_bytes([*jpeg.get(pos + 2)?, *jpeg.get(pos + 3)?]) as usize;
        if marker == 0xDA || len < 2 {
            return None;
        }
        let segment = jpeg.get(pos + 4..pos + 2 + len)?;
        if marker == 0xE1
            && let Some(exif) = segment.strip_prefix(b"Exif\0\0")
        {
            let t = Tiff::parse(exif)?;
            let value = *t.values(t.ifd0()?.get(tiff::ORIENTATION)?).first()?;
            return Orientation::from_exif(u8::try_from(value).ok()?);
        }
        pos += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_of(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb([200, 20, 20])));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn the_scan_takes_the_largest_picture_and_skips_lossless_and_noise() {
        let small = jpeg_of(16, 12);
        let large = jpeg_of(64, 48);
        // A lossless (SOF3) frame header, as CR2 and DNG store sensor data.
        let lossless = [0xFF, 0xD8, 0xFF, 0xC3, 0, 11, 8, 0, 200, 1, 44, 3, 1, 0x11, 0];
        let file = [b"junk\xFF\xD8\xFF\x00".to_vec(), small, lossless.to_vec(), large.clone(), vec![0; 9]].concat();
        let found = scanned_previews(&file);
        let best = found.iter().max_by_key(|p| p.pixels).unwrap();
        assert_eq!(best.pixels, 64 * 48);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn a_plain_tiff_picture_is_not_raw() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Tiff).unwrap();
        assert_eq!(sniff(out.get_ref()), None);
    }
}
