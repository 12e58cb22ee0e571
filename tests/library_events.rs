//! What happens to a library that already holds results: deletions, folders
//! moved away or within, names that are not UTF-8, files changed behind the
//! daemon's back, and copies of contents it already knows.

use crate::common::{Setup, wait_for};
use image::ImageFormat;
use instrument_model::testkit;
use std::os::unix::ffi::OsStrExt;

const OK: &str = "SELECT count(*) FROM files WHERE status = 'ok'";

/// "scan finished" lines for a walk of `root` (the watched folder, or one below it).
fn full_walks(log: &str, root: &std::path::Path) -> usize {
    let marker = format!("folder={} ", root.display());
    log.lines().filter(|l| l.contains("scan finished") && l.contains(&marker)).count()
}

#[test]
fn deletions_and_folder_moves_are_recorded_without_walking_the_library() {
    let s = Setup::new();
    let colours = ["red", "green", "blue"];
    for i in 0..12u32 {
        s.write_image(&format!("album/{i}.png"), colours[i as usize % 3], ImageFormat::Png, i);
    }
    s.write_image("single.png", "red", ImageFormat::Png, 100);
    s.write_image("other.png", "blue", ImageFormat::Png, 101);
    // No periodic reconcile during the test: only events can record the changes.
    let mut d = s.spawn(None, &s.dir, &s.db, &["--settle-ms", "300", "--reconcile-secs", "3600"]);
    wait_for(60, "14 rows", || s.count(OK) == 14);
    wait_for(10, "the start-up scan's log line", || full_walks(&d.log(), &s.dir) == 1);
    let predictions = s.count("SELECT count(*) FROM predictions");

    // A file deleted.
    std::fs::remove_file(s.dir.join("single.png")).unwrap();
    wait_for(10, "the deletion", || s.count("SELECT count(*) FROM files WHERE status = 'deleted'") == 1);

    // A folder moved within the library: its files keep their results under
    // the new name, and none is classified again.
    std::fs::rename(s.dir.join("album"), s.dir.join("album-2026")).unwrap();
    let moved =
        format!("SELECT count(*) FROM files WHERE status = 'ok' AND path LIKE '{}/album-2026/%'", s.dir.display());
    wait_for(30, "the moved folder's rows", || s.count(&moved) == 12);
    wait_for(10, "the old names deleted", || s.count("SELECT count(*) FROM files WHERE status = 'deleted'") == 13);

    // A folder moved out of the library: all its rows go in one update.
    let outside = s.tmp.path().join("elsewhere");
    std::fs::rename(s.dir.join("album-2026"), &outside).unwrap();
    wait_for(10, "the folder moved away", || s.count(OK) == 1);

    let log = d.log();
    assert_eq!(full_walks(&log, &s.dir), 1, "a deletion or a move walked the whole library:\n{log}");
    assert_eq!(s.count("SELECT count(*) FROM predictions"), predictions, "a moved photo was classified again");
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn folders_made_or_renamed_after_start_are_watched_without_a_rescan() {
    let s = Setup::new();
    let mut d = s.spawn(None, &s.dir, &s.db, &["--settle-ms", "300", "--reconcile-secs", "3600"]);
    wait_for(30, "the start-up scan", || full_walks(&d.log(), &s.dir) == 1);

    // A tree made at once: the folder's own scan watches every level of it.
    let made = s.dir.join("new");
    std::fs::create_dir_all(made.join("a/b")).unwrap();
    wait_for(10, "the new folder's scan", || full_walks(&d.log(), &made) >= 1);
    s.write_image("new/a/b/later.png", "red", ImageFormat::Png, 1);
    wait_for(10, "a photo written into the new tree afterwards", || s.count(OK) == 1);

    // The tree renamed: its watches follow it to the new name.
    let renamed = s.dir.join("renamed");
    std::fs::rename(&made, &renamed).unwrap();
    wait_for(10, "the renamed folder's scan", || full_walks(&d.log(), &renamed) >= 1);
    s.write_image("renamed/a/b/after.png", "blue", ImageFormat::Png, 2);
    let under_new_name =
        format!("SELECT count(*) FROM files WHERE status = 'ok' AND path LIKE '{}/a/b/%'", renamed.display());
    wait_for(10, "both photos under the new name", || s.count(&under_new_name) == 2);

    let log = d.log();
    assert_eq!(full_walks(&log, &s.dir), 1, "only events and folder scans found them:\n{log}");
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn names_that_are_not_utf8_work_in_organize_report_and_reclassify() {
    let s = Setup::new();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9 \\x41.png");
    let src = s.write_image("plain.png", "green", ImageFormat::Png, 1);
    std::fs::rename(&src, s.dir.join(name)).unwrap();
    s.write_image("utf8 é.png", "red", ImageFormat::Png, 2);
    let sorted = s.tmp.path().join("sorted");
    let mut d = s.start(&["--organize", sorted.to_str().unwrap()]);
    wait_for(30, "2 rows", || s.count(OK) == 2);
    wait_for(10, "the sorted view", || sorted.join("green").join(name).exists());
    assert!(sorted.join("red").join("utf8 é.png").exists());
    assert!(d.stop().success(), "{}", d.log());

    let report = s.tmp.path().join("report");
    let out = s.cmd(&["report", "--db"]).arg(&s.db).arg("--out").arg(&report).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("2 new thumbnails"), "{err}");

    let out =
        s.cmd(&["reclassify", "--backend", "tract", "--db"]).arg(&s.db).arg("--model").arg(&s.model).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("reclassified 2 contents") && err.contains("(0 skipped)"), "{err}");
}

#[test]
fn reclassify_leaves_a_file_that_changed_since_it_was_recorded_to_the_daemon() {
    let s = Setup::new();
    let photo = s.write_image("photo.png", "red", ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    wait_for(30, "1 row", || s.count(OK) == 1);
    assert!(d.stop().success(), "{}", d.log());

    // While no daemon watches, the file gets other content: the row still
    // names the red content, and the bytes on disk are blue.
    testkit::write_color_image(&photo, "blue", ImageFormat::Png, 2).unwrap();
    let out =
        s.cmd(&["reclassify", "--backend", "tract", "--db"]).arg(&s.db).arg("--model").arg(&s.model).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("reclassified 0 contents") && err.contains("1 of the skipped changed"), "{err}");
    // A blue result filed under the red content would relabel it.
    let rows = s.query(&[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["label"], "red", "reclassify wrote the new bytes' label under the old content: {rows:?}");

    // The daemon, next time, sees the change and records the new content.
    let mut d = s.start(&[]);
    wait_for(30, "the changed file relabelled", || s.query(&[]).first().is_some_and(|r| r["label"] == "blue"));
    assert!(d.stop().success(), "{}", d.log());
}

#[test]
fn organize_places_a_later_copy_of_a_known_content_under_its_label() {
    let s = Setup::new();
    let sorted = s.tmp.path().join("sorted");
    let mut d = s.start(&["--organize", sorted.to_str().unwrap()]);
    let first = s.write_image("first.png", "green", ImageFormat::Png, 3);
    wait_for(30, "the first copy placed", || sorted.join("green").join("first.png").exists());
    let predictions = s.count("SELECT count(*) FROM predictions");

    // Same bytes under another name: a known content, never classified again,
    // and still placed under the label its content already has.
    std::fs::copy(&first, s.dir.join("second.png")).unwrap();
    wait_for(30, "the second copy placed", || sorted.join("green").join("second.png").exists());
    assert_eq!(s.count("SELECT count(*) FROM predictions"), predictions, "a known content was classified again");
    assert_eq!(s.count(OK), 2);
    assert!(d.stop().success(), "{}", d.log());
}
