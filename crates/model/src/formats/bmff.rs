//! ISO base media file format (ISO/IEC 14496-12) boxes: the container of
//! HEIF, AVIF, Canon's CR3 and boxed JPEG XL. Only what sniffing and the
//! truncation check need: the `ftyp` brands and the top-level box sizes.

/// One box header: where its payload starts and ends (`end` may lie past
/// the end of the data when the file is cut).
struct BoxHeader {
    kind: [u8; 4],
    payload: usize,
    end: u64,
}

/// Box types found at the top level of HEIF, AVIF, CR3 and JPEG XL files.
const TOP_LEVEL_BOXES: [&[u8; 4]; 19] = [
    b"ftyp", b"meta", b"mdat", b"moov", b"free", b"skip", b"uuid", b"idat", b"wide", b"moof", b"mfra", b"JXL ",
    b"jxlc", b"jxlp", b"jxll", b"jxli", b"jbrd", b"Exif", b"xml ",
];

fn header(bytes: &[u8], pos: usize) -> Option<BoxHeader> {
    let field = bytes.get(pos..pos + 8)?;
    let size32 = u32::from_be_bytes([field[0], field[1], field[2], field[3]]) as u64;
    let kind = [field[4], field[5], field[6], field[7]];
    let (size, payload) = match size32 {
        // A 64-bit size follows the type.
        1 => {
            let large = bytes.get(pos + 8..pos + 16)?;
            (u64::from_be_bytes(large.try_into().ok()?), pos + 16)
        }
        // The box runs to the end of the file.
        0 => (bytes.len().saturating_sub(pos) as u64, pos + 8),
        n => (n, pos + 8),
    };
    if size < (payload - pos) as u64 {
        return None;
    }
    Some(BoxHeader { kind, payload, end: pos as u64 + size })
}

/// The major and compatible brands of a leading `ftyp` box.
pub(crate) fn brands(bytes: &[u8]) -> Option<Vec<[u8; 4]>> {
    let ftyp = header(bytes, 0)?;
    if &ftyp.kind != b"ftyp" {
        return None;
    }
    let end = (ftyp.end.min(bytes.len() as u64)) as usize;
    let payload = bytes.get(ftyp.payload..end)?;
    // major brand, minor version, then compatible brands.
    let mut out = vec![payload.get(0..4)?.try_into().ok()?];
    out.extend(payload.get(8..).unwrap_or(&[]).chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]));
    Some(out)
}

/// Why a box file ends before its boxes do, or `None` when every top-level
/// box is whole (or the data is not a box file at all). Like the JPEG and
/// PNG checks, it reads structure only: a cut download of a HEIC is
/// `truncated`, not `corrupt`.
pub(crate) fn truncation(bytes: &[u8]) -> Option<String> {
    let mut pos = 0usize;
    let mut boxes = 0;
    while pos < bytes.len() {
        let large = bytes.get(pos..pos + 4) == Some(&[0, 0, 0, 1]);
        if bytes.len() - pos < if large { 16 } else { 8 } {
            return (boxes > 0).then(|| format!("the file ends inside a box header, at byte {}", bytes.len()));
        }
        // A header that is whole but says nonsense is not a cut file: only
        // a box type these files use at the top level counts.
        let b = header(bytes, pos)?;
        if !TOP_LEVEL_BOXES.contains(&&b.kind) {
            return None;
        }
        if b.end > bytes.len() as u64 {
            let kind = String::from_utf8_lossy(&b.kind).into_owned();
            return Some(format!("the '{kind}' box runs to byte {} but the file ends at byte {}", b.end, bytes.len()));
        }
        boxes += 1;
        pos = b.end as usize;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn brands_are_the_major_then_the_compatible_ones() {
        let file = [boxed(b"ftyp", b"heic\0\0\0\0mif1heic"), boxed(b"meta", &[0; 20])].concat();
        assert_eq!(brands(&file).unwrap(), vec![*b"heic", *b"mif1", *b"heic"]);
        assert!(brands(b"\x89PNG\r\n\x1a\n").is_none());
    }

    #[test]
    fn a_cut_box_is_truncation_and_whole_boxes_are_not() {
        let file = [boxed(b"ftyp", b"avif\0\0\0\0avif"), boxed(b"mdat", &[7; 100])].concat();
        let garbled = [boxed(b"ftyp", b"avif\0\0\0\0avif"), boxed(b"7>;.", &[7; 100])].concat();
        assert_eq!(truncation(&garbled[..60]), None, "a box of no known type is damage, not a cut");
        assert_eq!(truncation(&file), None);
        for cut in [30, 60, file.len() - 1] {
            assert!(truncation(&file[..cut]).is_some(), "cut at {cut}");
        }
        // A box whose declared size is smaller than its own header is
        // malformed, which is the decoder's to call corrupt.
        let bad = [boxed(b"ftyp", b"avif\0\0\0\0"), vec![0, 0, 0, 4, b'x', b'x', b'x', b'x']].concat();
        assert_eq!(truncation(&bad), None);
    }
}
