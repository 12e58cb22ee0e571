//! Camera RAW files written by tests: each layout puts a JPEG preview where
//! that camera maker does, next to a stand-in for sensor data (noise with a
//! stray `FF D8 FF` in it, and for CR2 a lossless-JPEG frame header, as the
//! real raw data has), and an 8x8 RGB thumbnail where cameras keep one.
//! No real decoder reads the sensor part; it only has to be there, and be
//! mistaken for nothing.

/// Where a camera keeps its preview, one variant per layout we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawLayout {
    /// Adobe DNG: the preview is a JPEG-compressed strip in a sub-IFD.
    Dng,
    /// Nikon NEF: a sub-IFD's `JPEGInterchangeFormat` pointer.
    Nef,
    /// Sony ARW: IFD0's `JPEGInterchangeFormat` pointer.
    Arw,
    /// Canon CR2: IFD0's JPEG strip, a thumbnail in IFD1, lossless raw in IFD3.
    Cr2,
    /// Olympus ORF: the preview sits in the maker note, pointed at by nothing we read.
    Orf,
    /// Fujifilm RAF: the header gives the JPEG's offset and length.
    Raf,
    /// Canon CR3: a box file; the preview is in `mdat`.
    Cr3,
}

impl RawLayout {
    pub const ALL: [RawLayout; 7] = [
        RawLayout::Dng,
        RawLayout::Nef,
        RawLayout::Arw,
        RawLayout::Cr2,
        RawLayout::Orf,
        RawLayout::Raf,
        RawLayout::Cr3,
    ];

    pub fn extension(self) -> &'static str {
        match self {
            RawLayout::Dng => "dng",
            RawLayout::Nef => "nef",
            RawLayout::Arw => "arw",
            RawLayout::Cr2 => "cr2",
            RawLayout::Orf => "orf",
            RawLayout::Raf => "raf",
            RawLayout::Cr3 => "cr3",
        }
    }
}

/// `jpeg` with an EXIF APP1 segment declaring `orientation`, as cameras
/// write their previews and photos.
pub fn jpeg_with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut w = TiffWriter::new(b"II*\0");
    let first = w.ifd(vec![(0x0112, Value::Short(vec![orientation]))], 0);
    let exif = [b"Exif\0\0".as_slice(), &w.finish(first)].concat();
    let len = (exif.len() + 2) as u16;
    [&jpeg[..2], &[0xFF, 0xE1], &len.to_be_bytes(), &exif, &jpeg[2..]].concat()
}

/// A RAW file of `layout` carrying `preview` (a JPEG), with TIFF orientation
/// `orientation` (1 = upright) where the layout has an IFD0.
pub fn raw_file(layout: RawLayout, preview: &[u8], orientation: u16) -> Vec<u8> {
    match layout {
        RawLayout::Raf => raf(preview),
        RawLayout::Cr3 => cr3(preview),
        tiff_based => tiff_raw(tiff_based, preview, orientation),
    }
}

/// Bytes that stand for sensor data: noise, with a false JPEG start inside.
fn sensor_data(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678u32;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    if len > 16 {
        out[len / 2..len / 2 + 4].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    }
    out
}

/// A lossless JPEG (SOF3) header, as CR2 and DNG store sensor data: a valid
/// JPEG start that must never be taken for a preview.
fn lossless_jpeg(len: usize) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xC3, 0, 11, 14, 0x0F, 0xA0, 0x17, 0x70, 1, 1, 0x11, 0];
    out.extend(sensor_data(len));
    out
}

enum Value {
    Short(Vec<u16>),
    Long(Vec<u32>),
    Ascii(&'static str),
}

/// A little-endian TIFF written leaves first, so every pointer is known
/// when the IFD holding it is written.
struct TiffWriter {
    out: Vec<u8>,
}

impl TiffWriter {
    fn new(magic: &[u8; 4]) -> Self {
        let mut out = magic.to_vec();
        out.extend_from_slice(&[0; 4]); // first IFD, patched by `finish`
        TiffWriter { out }
    }

    fn blob(&mut self, bytes: &[u8]) -> u32 {
        if !self.out.len().is_multiple_of(2) {
            self.out.push(0);
        }
        let at = self.out.len() as u32;
        self.out.extend_from_slice(bytes);
        at
    }

    fn ifd(&mut self, mut entries: Vec<(u16, Value)>, next: u32) -> u32 {
        entries.sort_by_key(|(tag, _)| *tag);
        let encoded: Vec<(u16, u16, u32, Vec<u8>)> = entries
            .into_iter()
            .map(|(tag, v)| match v {
                Value::Short(s) => (tag, 3, s.len() as u32, s.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Value::Long(l) => (tag, 4, l.len() as u32, l.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Value::Ascii(a) => (tag, 2, a.len() as u32 + 1, [a.as_bytes(), &[0]].concat()),
            })
            .collect();
        let fields: Vec<[u8; 4]> = encoded
            .iter()
            .map(|(_, _, _, bytes)| {
                if bytes.len() <= 4 {
                    let mut f = [0; 4];
                    f[..bytes.len()].copy_from_slice(bytes);
                    f
                } else {
                    self.blob(bytes).to_le_bytes()
                }
            })
            .collect();
        let at = self.blob(&(encoded.len() as u16).to_le_bytes());
        for ((tag, kind, count, _), field) in encoded.iter().zip(fields) {
            self.out.extend_from_slice(&tag.to_le_bytes());
            self.out.extend_from_slice(&kind.to_le_bytes());
            self.out.extend_from_slice(&count.to_le_bytes());
            self.out.extend_from_slice(&field);
        }
        self.out.extend_from_slice(&next.to_le_bytes());
        at
    }

    fn finish(mut self, first_ifd: u32) -> Vec<u8> {
        self.out[4..8].copy_from_slice(&first_ifd.to_le_bytes());
        self.out
    }
}

/// An 8x8 uncompressed RGB thumbnail IFD's entries (grey, so it would
/// classify as nothing in particular if it were ever used).
fn thumbnail(w: &mut TiffWriter) -> Vec<(u16, Value)> {
    let at = w.blob(&[128; 8 * 8 * 3]);
    vec![
        (0x00FE, Value::Long(vec![1])),
        (0x0100, Value::Long(vec![8])),
        (0x0101, Value::Long(vec![8])),
        (0x0102, Value::Short(vec![8, 8, 8])),
        (0x0103, Value::Short(vec![1])),
        (0x0106, Value::Short(vec![2])),
        (0x0111, Value::Long(vec![at])),
        (0x0115, Value::Short(vec![3])),
        (0x0117, Value::Long(vec![8 * 8 * 3])),
    ]
}

/// A sensor-data IFD: CFA photometric, uncompressed noise.
fn sensor_ifd(w: &mut TiffWriter, data: &[u8]) -> u32 {
    let at = w.blob(data);
    w.ifd(
        vec![
            (0x00FE, Value::Long(vec![0])),
            (0x0100, Value::Long(vec![64])),
            (0x0101, Value::Long(vec![32])),
            (0x0103, Value::Short(vec![1])),
            (0x0106, Value::Short(vec![32803])),
            (0x0111, Value::Long(vec![at])),
            (0x0117, Value::Long(vec![data.len() as u32])),
        ],
        0,
    )
}

fn jpeg_pointer(at: u32, len: usize) -> [(u16, Value); 2] {
    [(0x0201, Value::Long(vec![at])), (0x0202, Value::Long(vec![len as u32]))]
}

fn jpeg_strip(at: u32, len: usize, compression: u16) -> [(u16, Value); 4] {
    [
        (0x0103, Value::Short(vec![compression])),
        (0x0106, Value::Short(vec![6])),
        (0x0111, Value::Long(vec![at])),
        (0x0117, Value::Long(vec![len as u32])),
    ]
}

fn tiff_raw(layout: RawLayout, preview: &[u8], orientation: u16) -> Vec<u8> {
    let magic = if layout == RawLayout::Orf { b"IIRO" } else { b"II*\0" };
    let mut w = TiffWriter::new(magic);
    if layout == RawLayout::Cr2 {
        // Canon's signature and a pointer to the raw IFD, after the header.
        w.out.extend_from_slice(b"CR\x02\0\0\0\0\0");
    }
    let make = match layout {
        RawLayout::Dng => "Example DNG",
        RawLayout::Nef => "NIKON CORPORATION",
        RawLayout::Arw => "SONY",
        RawLayout::Cr2 => "Canon",
        _ => "OLYMPUS CORPORATION",
    };
    let mut ifd0 = vec![(0x010F, Value::Ascii(make)), (0x0112, Value::Short(vec![orientation]))];
    match layout {
        RawLayout::Dng => {
            let raw = sensor_ifd(&mut w, &sensor_data(4096));
            let at = w.blob(preview);
            let mut entries = vec![(0x00FE, Value::Long(vec![1]))];
            entries.extend(jpeg_strip(at, preview.len(), 7));
            let big = w.ifd(entries, 0);
            ifd0.extend(thumbnail(&mut w));
            ifd0.push((0xC612, Value::Short(vec![1, 4, 0, 0])));
            ifd0.push((0x014A, Value::Long(vec![raw, big])));
        }
        RawLayout::Nef => {
            let raw = sensor_ifd(&mut w, &sensor_data(4096));
            let at = w.blob(preview);
            let mut entries = vec![(0x00FE, Value::Long(vec![1]))];
            entries.extend(jpeg_pointer(at, preview.len()));
            let big = w.ifd(entries, 0);
            ifd0.extend(thumbnail(&mut w));
            ifd0.push((0x014A, Value::Long(vec![big, raw])));
        }
        RawLayout::Arw => {
            let raw = sensor_ifd(&mut w, &sensor_data(4096));
            let at = w.blob(preview);
            ifd0.extend(jpeg_pointer(at, preview.len()));
            ifd0.push((0x014A, Value::Long(vec![raw])));
        }
        RawLayout::Cr2 => {
            let raw_data = lossless_jpeg(4096);
            let raw_at = w.blob(&raw_data);
            let raw_entries = vec![
                (0x0103, Value::Short(vec![6])),
                (0x0111, Value::Long(vec![raw_at])),
                (0x0117, Value::Long(vec![raw_data.len() as u32])),
            ];
            let ifd3 = w.ifd(raw_entries, 0);
            let thumb_entries = thumbnail(&mut w);
            let ifd2 = w.ifd(thumb_entries, ifd3);
            let thumb = small_jpeg();
            let thumb_at = w.blob(&thumb);
            let ifd1 = w.ifd(jpeg_pointer(thumb_at, thumb.len()).into_iter().collect(), ifd2);
            let at = w.blob(preview);
            ifd0.extend(jpeg_strip(at, preview.len(), 6));
            let first = w.ifd(ifd0, ifd1);
            w.out[12..16].copy_from_slice(&ifd3.to_le_bytes());
            return w.finish(first);
        }
        _ => {
            // ORF: sensor data in IFD0; the preview inside a maker-note blob
            // that only Olympus's own tags point into.
            let raw_data = sensor_data(4096);
            let raw_at = w.blob(&raw_data);
            w.blob(&[b"OLYMPUS\0II\x03\0".as_slice(), &[0; 32], preview, &[0; 16]].concat());
            ifd0.extend([
                (0x0103, Value::Short(vec![1])),
                (0x0106, Value::Short(vec![32803])),
                (0x0111, Value::Long(vec![raw_at])),
                (0x0117, Value::Long(vec![raw_data.len() as u32])),
            ]);
        }
    }
    let first = w.ifd(ifd0, 0);
    w.finish(first)
}

/// A 16x12 JPEG, the size of the thumbnails cameras keep beside the preview.
fn small_jpeg() -> Vec<u8> {
    super::encode(&image::RgbImage::from_pixel(16, 12, image::Rgb([128, 128, 128])), image::ImageFormat::Jpeg)
}

fn raf(preview: &[u8]) -> Vec<u8> {
    // The header's (offset, length) pairs: the JPEG at 84, the sensor data at 100.
    let mut out = b"FUJIFILMCCD-RAW 0201FF383501".to_vec();
    out.resize(84, 0);
    let at = 160u32;
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(&(preview.len() as u32).to_be_bytes());
    let sensor = sensor_data(4096);
    let sensor_at = at as usize + preview.len();
    out.resize(100, 0);
    out.extend_from_slice(&(sensor_at as u32).to_be_bytes());
    out.extend_from_slice(&(sensor.len() as u32).to_be_bytes());
    out.resize(at as usize, 0);
    out.extend_from_slice(preview);
    out.extend(sensor);
    out
}

fn bmff_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    [((payload.len() + 8) as u32).to_be_bytes().as_slice(), kind, payload].concat()
}

fn cr3(preview: &[u8]) -> Vec<u8> {
    let ftyp = bmff_box(b"ftyp", b"crx \0\0\0\x01crx isom");
    // Canon keeps a thumbnail in a uuid box of moov, the preview in mdat.
    let uuid = bmff_box(b"uuid", &[[0x85u8; 16].as_slice(), &bmff_box(b"THMB", &small_jpeg())].concat());
    let moov = bmff_box(b"moov", &uuid);
    let mdat = bmff_box(b"mdat", &[preview, &sensor_data(4096)].concat());
    [ftyp, moov, mdat].concat()
}
