//! Just enough TIFF to find what a camera RAW file carries: its image file
//! directories (IFDs), walked through the chain and the sub-IFD and EXIF
//! pointers, with every offset checked against the data. Nothing is
//! decoded here; `raw.rs` decides what the entries mean.

use std::collections::HashSet;

pub(crate) const STRIP_OFFSETS: u16 = 0x0111;
pub(crate) const STRIP_BYTE_COUNTS: u16 = 0x0117;
pub(crate) const COMPRESSION: u16 = 0x0103;
pub(crate) const PHOTOMETRIC: u16 = 0x0106;
pub(crate) const MAKE: u16 = 0x010F;
pub(crate) const ORIENTATION: u16 = 0x0112;
pub(crate) const SUB_IFDS: u16 = 0x014A;
pub(crate) const JPEG_OFFSET: u16 = 0x0201;
pub(crate) const JPEG_LENGTH: u16 = 0x0202;
pub(crate) const EXIF_IFD: u16 = 0x8769;
pub(crate) const DNG_VERSION: u16 = 0xC612;

/// Photometric interpretations that mean sensor data, not a picture.
pub(crate) const PHOTOMETRIC_CFA: u32 = 32803;
pub(crate) const PHOTOMETRIC_LINEAR_RAW: u32 = 34892;

/// More IFDs than any camera writes; a file with more is looping or hostile.
const MAX_IFDS: usize = 64;
/// More entries than any real IFD holds.
const MAX_ENTRIES: usize = 4096;
/// Values read from one entry, at most (strip tables of previews are short).
const MAX_VALUES: usize = 4096;

/// A TIFF-structured file: the byte order and the first IFD's offset.
/// Camera makers vary the magic number (Olympus `RO`/`RS`, Panasonic `U`)
/// but keep the layout.
#[derive(Clone, Copy)]
pub(crate) struct Tiff<'a> {
    data: &'a [u8],
    big_endian: bool,
    first_ifd: usize,
}

/// One directory entry, its value still undecoded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) tag: u16,
    kind: u16,
    count: u32,
    /// Where the entry's 4-byte value/offset field is.
    field: usize,
}

/// One IFD's entries.
pub(crate) struct Ifd {
    pub(crate) entries: Vec<Entry>,
}

impl<'a> Tiff<'a> {
    /// The header, for any of the magic numbers TIFF-based RAW files use.
    pub(crate) fn parse(data: &'a [u8]) -> Option<Tiff<'a>> {
        let big_endian = match data.get(0..2)? {
            b"II" => false,
            b"MM" => true,
            _ => return None,
        };
        let mut t = Tiff { data, big_endian, first_ifd: 0 };
        match t.u16_at(2)? {
            42 | 0x4F52 | 0x5352 | 0x0055 => {}
            _ => return None,
        }
        t.first_ifd = t.u32_at(4)? as usize;
        Some(t)
    }

    pub(crate) fn data(&self) -> &'a [u8] {
        self.data
    }

    pub(crate) fn u16_at(&self, pos: usize) -> Option<u16> {
        let b: [u8; 2] = self.data.get(pos..pos + 2)?.try_into().ok()?;
        Some(if self.big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    }

    pub(crate) fn u32_at(&self, pos: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(pos..pos + 4)?.try_into().ok()?;
        Some(if self.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    fn ifd_at(&self, offset: usize) -> Option<(Ifd, usize)> {
        let n = self.u16_at(offset)? as usize;
        if n == 0 || n > MAX_ENTRIES {
            return None;
        }
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            let pos = offset + 2 + 12 * i;
            entries.push(Entry {
                tag: self.u16_at(pos)?,
                kind: self.u16_at(pos + 2)?,
                count: self.u32_at(pos + 4)?,
                field: pos + 8,
            });
        }
        let next = self.u32_at(offset + 2 + 12 * n).unwrap_or(0) as usize;
        Some((Ifd { entries }, next))
    }

    /// Every IFD reachable from the header: the chain (IFD0, IFD1, ...) and,
    /// from each, its sub-IFDs and EXIF IFD. Each offset is visited once and
    /// at most [`MAX_IFDS`] are read, so a loop or a fan-out cannot hang.
    pub(crate) fn all_ifds(&self) -> Vec<Ifd> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut todo = vec![self.first_ifd];
        while let Some(offset) = todo.pop() {
            if offset == 0 || out.len() >= MAX_IFDS || !seen.insert(offset) {
                continue;
            }
            let Some((ifd, next)) = self.ifd_at(offset) else { continue };
            todo.push(next);
            for tag in [SUB_IFDS, EXIF_IFD] {
                if let Some(e) = ifd.get(tag) {
                    todo.extend(self.values(e).into_iter().map(|v| v as usize));
                }
            }
            out.push(ifd);
        }
        out
    }

    /// Whether the data ends before the first IFD does: a cut file (a RAW
    /// writer may put IFD0 anywhere, often after the preview).
    pub(crate) fn ends_before_ifd0(&self) -> bool {
        let entries = self.u16_at(self.first_ifd).map_or(0, |n| n as usize);
        self.first_ifd + 2 + 12 * entries + 4 > self.data.len()
    }

    /// The first IFD alone (where orientation and the maker live).
    pub(crate) fn ifd0(&self) -> Option<Ifd> {
        self.ifd_at(self.first_ifd).map(|(ifd, _)| ifd)
    }

    /// An entry's values as integers: BYTE, SHORT, LONG or IFD (types 1, 3,
    /// 4, 13); empty for any other type or a value outside the data.
    pub(crate) fn values(&self, e: &Entry) -> Vec<u32> {
        let width = match e.kind {
            1 => 1,
            3 => 2,
            4 | 13 => 4,
            _ => return Vec::new(),
        };
        let count = (e.count as usize).min(MAX_VALUES);
        let start = if width * count <= 4 {
            e.field
        } else {
            match self.u32_at(e.field) {
                Some(o) => o as usize,
                None => return Vec::new(),
            }
        };
        let read = |i: usize| match width {
            1 => self.data.get(start + i).map(|b| *b as u32),
            2 => self.u16_at(start + 2 * i).map(u32::from),
            _ => self.u32_at(start + 4 * i),
        };
        (0..count).map_while(read).collect()
    }

    /// An ASCII entry's text (the camera maker), without its NUL.
    pub(crate) fn text(&self, e: &Entry) -> Option<String> {
        if e.kind != 2 {
            return None;
        }
        let len = (e.count as usize).min(MAX_VALUES);
        let start = if len <= 4 { e.field } else { self.u32_at(e.field)? as usize };
        let raw = self.data.get(start..start.checked_add(len)?)?;
        Some(String::from_utf8_lossy(raw).trim_end_matches('\0').trim().to_string())
    }
}

impl Ifd {
    pub(crate) fn get(&self, tag: u16) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian TIFF: IFD0 with (tag, type, count, value) entries.
    fn tiff(entries: &[(u16, u16, u32, u32)]) -> Vec<u8> {
        let mut out = b"II*\0".to_vec();
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, kind, count, value) in entries {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }

    #[test]
    fn entries_read_inline_values_and_a_loop_ends() {
        // The next-IFD pointer of IFD0 points back at IFD0 itself.
        let mut data = tiff(&[(ORIENTATION, 3, 1, 6), (SUB_IFDS, 4, 1, 8)]);
        let next = data.len() - 4;
        data[next..].copy_from_slice(&8u32.to_le_bytes());
        let t = Tiff::parse(&data).unwrap();
        let ifds = t.all_ifds();
        assert_eq!(ifds.len(), 1, "each IFD is read once");
        assert_eq!(t.values(ifds[0].get(ORIENTATION).unwrap()), vec![6]);
    }

    #[test]
    fn offsets_outside_the_data_read_as_nothing() {
        let data = tiff(&[(STRIP_OFFSETS, 4, 100, 0xFFFF_FF00), (MAKE, 2, 40, 0xFFFF_FF00)]);
        let t = Tiff::parse(&data).unwrap();
        let ifd = t.ifd0().unwrap();
        assert!(t.values(ifd.get(STRIP_OFFSETS).unwrap()).is_empty());
        assert_eq!(t.text(ifd.get(MAKE).unwrap()), None);
        assert!(Tiff::parse(b"II*\0").is_none());
    }
}
