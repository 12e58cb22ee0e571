//! Phone and camera formats through the running daemon: HEIC and AVIF
//! written by libheif's own encoder (`heif-enc`, Debian `libheif-examples`),
//! JPEG XL by `cjxl` (`libjxl-tools`), and camera RAW files with an embedded
//! JPEG preview written by `testkit::raw_files`. Each must classify like its
//! PNG twin; cut and damaged copies become error rows; without libheif the
//! daemon says so once and refuses HEIC by name.
//!
//! `scripts/test.sh` installs the encoders. Without them these tests say so
//! loudly, and fail under CI (`skip_or_fail_in_ci`).

use crate::common::{Setup, skip_or_fail_in_ci, wait_for};
use image::ImageFormat;
use instrument_model::testkit::{self, raw_files};
use std::path::{Path, PathBuf};
use std::process::Command;

const DONE: &str = "SELECT count(*) FROM files WHERE status IN ('ok', 'error')";

/// Whether every tool is on the PATH; if not, says which is missing.
fn have_encoders() -> bool {
    for tool in ["heif-enc", "cjxl"] {
        if Command::new(tool).arg("--help").output().is_err() {
            skip_or_fail_in_ci(&format!(
                "`{tool}` is not installed (apt install libheif-examples libjxl-tools; scripts/test.sh does)"
            ));
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("starting an encoder");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The encoded copies of one colour image, made outside the watched folder:
/// `name.heic`, `name.avif`, `name.jxl` and one RAW file per layout.
fn encode_all(work: &Path, label: &str, seed: u32) -> Vec<PathBuf> {
    let png = work.join(format!("{label}.png"));
    testkit::write_color_image(&png, label, ImageFormat::Png, seed).unwrap();
    let heic = work.join(format!("{label}.heic"));
    let avif = work.join(format!("{label}.avif"));
    let jxl = work.join(format!("{label}.jxl"));
    run(Command::new("heif-enc").args(["-q", "90"]).arg(&png).arg("-o").arg(&heic));
    run(Command::new("heif-enc").args(["-A", "-q", "90"]).arg(&png).arg("-o").arg(&avif));
    run(Command::new("cjxl").arg(&png).arg(&jxl).args(["-d", "1"]));
    let preview = testkit::encode(&testkit::color_image(label, 64, 48, seed), ImageFormat::Jpeg);
    let mut out = vec![heic, avif, jxl];
    for layout in raw_files::RawLayout::ALL {
        let path = work.join(format!("{label}.{}", layout.extension()));
        std::fs::write(&path, raw_files::raw_file(layout, &preview, 1)).unwrap();
        out.push(path);
    }
    out
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_phone_and_camera_format_classifies_like_its_png_twin() {
    if !have_encoders() {
        return;
    }
    let s = Setup::new();
    let work = s.tmp.path().join("encoded");
    std::fs::create_dir(&work).unwrap();
    let mut expected = Vec::new();
    for (seed, label) in ["red", "green", "blue"].into_iter().enumerate() {
        for file in encode_all(&work, label, seed as u32) {
            // Names that hide the format: the content decides, not the extension.
            let name = format!("{}-{}.jpg", label, file.extension().unwrap().to_string_lossy());
            std::fs::copy(&file, s.dir.join(&name)).unwrap();
            expected.push((name, label));
        }
    }
    let mut d = s.start(&[]);
    wait_for(60, "a row for every file", || s.count(DONE) == expected.len() as i64);
    let rows = s.query(&[]);
    for (name, label) in &expected {
        let r = rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(name.as_str())).unwrap();
        assert_eq!(r["status"], "ok", "{name}: {r}");
        assert_eq!(r["label"], *label, "{name}: {r}");
    }
    let log = d.log();
    assert!(log.contains("HEIC and AVIF: read with libheif"), "no start-up line about libheif:\n{log}");
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn cut_and_damaged_files_of_every_new_format_are_error_rows() {
    if !have_encoders() {
        return;
    }
    let s = Setup::new();
    let work = s.tmp.path().join("encoded");
    std::fs::create_dir(&work).unwrap();
    let mut names = Vec::new();
    for file in encode_all(&work, "red", 7) {
        let bytes = std::fs::read(&file).unwrap();
        let ext = file.extension().unwrap().to_string_lossy().into_owned();
        let cut = format!("cut.{ext}");
        std::fs::write(s.dir.join(&cut), &bytes[..bytes.len() / 2]).unwrap();
        // Damage after the headers: every 5th byte of the second half flipped.
        let mut damaged = bytes.clone();
        let half = damaged.len() / 2;
        for b in damaged[half..].iter_mut().step_by(5) {
            *b ^= 0xA5;
        }
        let bad = format!("damaged.{ext}");
        std::fs::write(s.dir.join(&bad), &damaged).unwrap();
        names.push((cut, ext.clone(), true));
        names.push((bad, ext, false));
    }
    s.write_image("fine.png", "green", ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    wait_for(90, "a row for every file", || s.count(DONE) == names.len() as i64 + 1);
    let rows = s.query(&[]);
    let row = |name: &str| rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(name)).unwrap().clone();
    for (name, ext, is_cut) in &names {
        let r = row(name);
        if !is_cut && r["status"] == "ok" {
            // A flipped byte in a lossy stream can still decode to a picture
            // (entropy-coded data has no checksum); that is not a failure,
            // but it must not be a crash or a missing row.
            continue;
        }
        assert_eq!(r["status"], "error", "{name}: {r}");
        let kind = r["error_kind"].as_str().unwrap();
        if *is_cut {
            assert_eq!(kind, "truncated", "{name} ({ext}): {r}");
        } else {
            assert!(["corrupt", "truncated", "unsupported"].contains(&kind), "{name}: {r}");
        }
    }
    assert_eq!(row("fine.png")["label"], "green");
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn without_libheif_heic_is_refused_by_name_and_everything_else_goes_on() {
    if !have_encoders() {
        return;
    }
    let s = Setup::new();
    let work = s.tmp.path().join("encoded");
    std::fs::create_dir(&work).unwrap();
    let files = encode_all(&work, "blue", 3);
    for f in &files {
        std::fs::copy(f, s.dir.join(name_of(f))).unwrap();
    }
    let mut d = s.start_with_env(&[], &[("INSTRUMENT_DETECTOR_LIBHEIF", "/nonexistent/libheif.so.1")]);
    wait_for(60, "a row for every file", || s.count(DONE) == files.len() as i64);
    let log = d.log();
    assert_eq!(log.matches("HEIC and AVIF are turned off").count(), 1, "said once at start-up:\n{log}");
    for r in s.query(&[]) {
        let path = r["path"].as_str().unwrap();
        if path.ends_with(".heic") || path.ends_with(".avif") {
            assert_eq!(r["status"], "error", "{r}");
            assert_eq!(r["error_kind"], "unsupported", "{r}");
            let why = r["error"].as_str().unwrap();
            assert!(why.contains("libheif") && (why.contains("HEIC") || why.contains("AVIF")), "{r}");
        } else {
            assert_eq!(r["label"], "blue", "{r}");
        }
    }
    assert!(d.stop().success(), "{}", d.log());
}
