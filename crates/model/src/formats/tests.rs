//! The RAW layouts end to end through `preprocess::decode_rgb`, on files the
//! tests write (`testkit::raw_files`). HEIC, AVIF and JPEG XL need real
//! encoders and are tested from the daemon crate (`tests/formats.rs`).

use super::*;
use crate::preprocess::decode_rgb;
use crate::testkit::encode;
use crate::testkit::raw_files::{RawLayout, jpeg_with_exif_orientation, raw_file};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// 64x32, red on the left and blue on the right: a turn or a mirror shows.
fn two_halves() -> RgbImage {
    RgbImage::from_fn(64, 32, |x, _| if x < 32 { Rgb([220, 20, 20]) } else { Rgb([20, 20, 220]) })
}

fn close(a: &RgbImage, b: &RgbImage) -> bool {
    a.dimensions() == b.dimensions()
        && a.pixels().zip(b.pixels()).all(|(p, q)| (0..3).all(|c| p[c].abs_diff(q[c]) <= 2))
}

fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode_rgb(bytes, 0, &DecodeLimits::default())
}

#[test]
fn every_raw_layout_yields_its_preview_and_is_named() {
    let preview = encode(&two_halves(), ImageFormat::Jpeg);
    let want = decode(&preview).unwrap();
    for layout in RawLayout::ALL {
        let file = raw_file(layout, &preview, 1);
        let container = sniff(&file).unwrap_or_else(|| panic!("{layout:?} not recognised"));
        assert_eq!(container.name(), layout.extension().to_uppercase(), "{layout:?}");
        let got = decode(&file).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        assert!(close(&got, &want), "{layout:?}: the preview was not the image decoded");
    }
}

#[test]
fn the_container_orientation_turns_a_preview_that_has_none() {
    let preview = encode(&two_halves(), ImageFormat::Jpeg);
    let upright = decode(&preview).unwrap();
    let turned = DynamicImage::ImageRgb8(upright.clone()).rotate90().into_rgb8();
    for layout in [RawLayout::Dng, RawLayout::Nef, RawLayout::Arw, RawLayout::Cr2, RawLayout::Orf] {
        // 6: the camera was turned a quarter clockwise; show it rotated 90.
        let got = decode(&raw_file(layout, &preview, 6)).unwrap();
        assert!(close(&got, &turned), "{layout:?}: got {:?}", got.dimensions());
    }
}

#[test]
fn a_preview_with_its_own_orientation_is_turned_once() {
    let preview = jpeg_with_exif_orientation(&encode(&two_halves(), ImageFormat::Jpeg), 3);
    let upright = decode(&encode(&two_halves(), ImageFormat::Jpeg)).unwrap();
    let half_turn = DynamicImage::ImageRgb8(upright).rotate180().into_rgb8();
    for layout in RawLayout::ALL {
        // The container says 6, the preview says 3: the preview's own wins.
        let got = decode(&raw_file(layout, &preview, 6)).unwrap();
        assert!(close(&got, &half_turn), "{layout:?}: got {:?}", got.dimensions());
    }
}

#[test]
fn cut_and_damaged_raw_files_are_error_rows_not_panics() {
    let preview = encode(&two_halves(), ImageFormat::Jpeg);
    for layout in RawLayout::ALL {
        let file = raw_file(layout, &preview, 1);
        for cut in [file.len() / 4, file.len() / 2, file.len() * 3 / 4, file.len() - 1] {
            let e = decode(&file[..cut]).expect_err("a cut RAW file decoded");
            assert_eq!(e.kind(), crate::preprocess::DecodeFailure::Truncated, "{layout:?} cut at {cut}: {e}");
        }
        let mut damaged = file.clone();
        for b in damaged.iter_mut().skip(16).step_by(7) {
            *b ^= 0x55;
        }
        let _ = decode(&damaged);
    }
}

#[test]
fn a_raw_file_whose_preview_is_cut_is_truncated() {
    let preview = encode(&two_halves(), ImageFormat::Jpeg);
    let file = raw_file(RawLayout::Raf, &preview, 1);
    // The RAF header points at the preview from byte 160.
    let cut = &file[..160 + preview.len() / 2];
    let e = decode(cut).unwrap_err();
    assert_eq!(e.kind(), crate::preprocess::DecodeFailure::Truncated, "{e}");
    assert!(e.to_string().contains("RAF") && e.to_string().contains("before its preview"), "{e}");
}

#[test]
fn a_raw_file_without_a_preview_says_why() {
    let file = raw_file(RawLayout::Orf, b"not a jpeg at all", 1);
    let e = decode(&file).unwrap_err();
    assert_eq!(e.kind(), crate::preprocess::DecodeFailure::Unsupported, "{e}");
    assert!(e.to_string().contains("ORF") && e.to_string().contains("no embedded JPEG preview"), "{e}");
}

#[test]
fn jpeg_xl_signatures_and_box_brands_are_sniffed() {
    assert_eq!(sniff(&[0xFF, 0x0A, 0, 0]), Some(Container::JpegXl));
    assert_eq!(sniff(b"\0\0\0\x0cJXL \r\n\x87\n\0\0"), Some(Container::JpegXl));
    let ftyp = |brands: &[u8]| [((brands.len() + 8) as u32).to_be_bytes().as_slice(), b"ftyp", brands].concat();
    assert_eq!(sniff(&ftyp(b"heic\0\0\0\0mif1heic")), Some(Container::Heic));
    assert_eq!(sniff(&ftyp(b"mif1\0\0\0\0mif1avif")), Some(Container::Avif));
    assert_eq!(sniff(&ftyp(b"crx \0\0\0\x01crx isom")), Some(Container::Raw(RawKind::Cr3)));
    // An MP4 video is a box file too, and none of ours.
    assert_eq!(sniff(&ftyp(b"isom\0\0\0\0isomavc1")), None);
}

#[test]
fn every_raw_layout_read_here_is_in_the_extension_list() {
    for layout in RawLayout::ALL {
        assert!(PHOTO_EXTENSIONS.contains(&layout.extension()), "{layout:?}");
    }
}
