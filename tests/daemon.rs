//! The daemon end to end: the real binary, a temp folder, generated images.

use crate::common::*;
use image::ImageFormat;
use std::io::Write;
use std::time::Duration;

const DONE: &str = "SELECT count(*) FROM files WHERE status IN ('ok', 'error')";

#[test]
fn every_kind_of_drop_ends_with_exactly_one_row() {
    let s = Setup::new();
    // Present before start: found by the start-up scan.
    s.write_image("before.png", "red", ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    wait_for(30, "the start-up scan", || s.count(DONE) == 1);

    // Copied in at once, in nested folders, in several formats, one misnamed.
    s.write_image("a.jpg", "blue", ImageFormat::Jpeg, 2);
    s.write_image("deep/er/b.webp", "green", ImageFormat::WebP, 3);
    s.write_image("deep/c.bmp", "red", ImageFormat::Bmp, 4);
    s.write_image("png-named.jpg", "green", ImageFormat::Png, 5);
    // The same bytes under two names: classified once, both paths recorded.
    let dup = s.write_image("one.png", "blue", ImageFormat::Png, 6);
    std::fs::copy(&dup, s.dir.join("deep/two.png")).unwrap();
    // Bad files.
    std::fs::write(s.dir.join("empty.jpg"), b"").unwrap();
    std::fs::write(s.dir.join("notes.jpg"), b"shopping list: strings, rosin\n").unwrap();
    std::fs::write(s.dir.join("noise.png"), (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>()).unwrap();
    let good =
        instrument_model::testkit::encode(&instrument_model::testkit::color_image("red", 64, 64, 9), ImageFormat::Jpeg);
    std::fs::write(s.dir.join("truncated.jpg"), &good[..good.len() / 2]).unwrap();
    // Ignored names.
    std::fs::write(s.dir.join(".hidden.jpg"), &good).unwrap();
    std::fs::write(s.dir.join("download.jpg.part"), &good).unwrap();

    // Written slowly in chunks: one row, after it is complete, never an error.
    let slow = s.dir.join("slow.jpg");
    let mut f = std::fs::File::create(&slow).unwrap();
    for chunk in good.chunks(good.len() / 5 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(f);

    // 1 + 5 good + 1 duplicate + 4 bad + slow = 12 paths.
    wait_for(60, "12 rows", || s.count(DONE) == 12);
    std::thread::sleep(Duration::from_millis(1500)); // nothing more may appear
    let rows = s.query(&[]);
    assert_eq!(rows.len(), 12, "{rows:#?}\n{}", d.log());
    let find = |name: &str| {
        rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(name)).unwrap_or_else(|| panic!("no row for {name}"))
    };
    for (name, label) in [
        ("before.png", "red"),
        ("/a.jpg", "blue"),
        ("b.webp", "green"),
        ("c.bmp", "red"),
        ("png-named.jpg", "green"),
        ("one.png", "blue"),
        ("two.png", "blue"),
        ("slow.jpg", "red"),
    ] {
        let r = find(name);
        assert_eq!(r["status"], "ok", "{name}: {r}");
        assert_eq!(r["label"], label, "{name}");
        assert_eq!(r["backend"], "tract");
        assert_eq!(r["top5"].as_array().unwrap().len(), 3);
    }
    for (name, kind) in
        [("empty.jpg", "empty"), ("notes.jpg", "not_image"), ("noise.png", "not_image"), ("truncated.jpg", "truncated")]
    {
        let r = find(name);
        assert_eq!(r["status"], "error", "{name}: {r}");
        assert_eq!(r["error_kind"], kind, "{name}: {r}");
        assert!(!r["error"].as_str().unwrap().is_empty());
    }
    // The duplicate was classified once.
    assert_eq!(s.count("SELECT count(*) FROM predictions"), 7, "{}", d.log());
    assert_eq!(find("one.png")["content_hash"], find("two.png")["content_hash"]);
    // The slow file never had an error row (its row is ok and there is one).
    assert_eq!(s.count("SELECT count(*) FROM files WHERE path LIKE '%slow.jpg'"), 1);

    // A graceful stop exits 0.
    let status = d.stop();
    assert!(status.success(), "exit {status:?}\n{}", d.log());
    let log = d.log();
    assert!(log.contains("instrument-detector watching") && log.contains("backend=tract"), "{log}");
}

#[test]
fn restart_after_sigkill_redoes_nothing_and_loses_nothing() {
    let s = Setup::new();
    for i in 0..6 {
        s.write_image(&format!("p{i}.png"), ["red", "green", "blue"][i % 3], ImageFormat::Png, i as u32);
    }
    let mut d = s.start(&[]);
    wait_for(30, "6 rows", || s.count(DONE) == 6);
    let before: Vec<String> = s.query(&[]).iter().map(|r| r["classified_at"].to_string()).collect();
    d.kill9();

    // While it is down: new files, an overwrite with new content, a deletion.
    for i in 6..9 {
        s.write_image(&format!("late/p{i}.png"), "green", ImageFormat::Png, i);
    }
    std::thread::sleep(Duration::from_millis(20));
    s.write_image("p0.png", "blue", ImageFormat::Png, 100); // was red
    std::fs::remove_file(s.dir.join("p5.png")).unwrap();

    let mut d = s.start(&[]);
    wait_for(30, "new files and the overwrite", || {
        s.count(DONE) == 8
            && s.count("SELECT count(*) FROM results WHERE path LIKE '%/p0.png' AND label = 'blue'") == 1
            && s.count("SELECT count(*) FROM files WHERE status = 'deleted'") == 1
    });
    let rows = s.query(&[]);
    assert_eq!(rows.len(), 8);
    // Untouched files kept their original result: nothing was redone.
    let after: Vec<String> = rows
        .iter()
        .filter(|r| {
            let p = r["path"].as_str().unwrap();
            ["p1.png", "p2.png", "p3.png", "p4.png"].iter().any(|n| p.ends_with(n))
        })
        .map(|r| r["classified_at"].to_string())
        .collect();
    assert_eq!(after.len(), 4);
    for a in &after {
        assert!(before.contains(a), "a result was redone: {a} not in {before:?}");
    }
    // 6 originals + 3 late + 1 new content for p0 = 10 predictions, never more.
    assert_eq!(s.count("SELECT count(*) FROM predictions"), 10);
    assert!(d.stop().success());
}

#[test]
fn a_second_daemon_on_the_same_database_is_refused() {
    let s = Setup::new();
    let mut first = s.start(&[]);
    wait_for(30, "the first daemon to start", || first.log().contains("watching"));
    let out = s
        .cmd(&["watch"])
        .arg(&s.dir)
        .arg("--db")
        .arg(&s.db)
        .arg("--model")
        .arg(&s.model)
        .args(["--backend", "tract"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already using"), "{err}");
    assert!(first.stop().success());
}

#[test]
fn renames_keep_results_and_deletions_are_recorded() {
    let s = Setup::new();
    let p = s.write_image("x.png", "green", ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    wait_for(30, "first row", || s.count(DONE) == 1);
    std::fs::create_dir(s.dir.join("sorted")).unwrap();
    std::fs::rename(&p, s.dir.join("sorted/y.png")).unwrap();
    wait_for(30, "the move", || {
        s.count("SELECT count(*) FROM results WHERE path LIKE '%/sorted/y.png' AND label = 'green'") == 1
            && s.count("SELECT count(*) FROM files WHERE status = 'deleted'") == 1
    });
    assert_eq!(s.count("SELECT count(*) FROM predictions"), 1, "a move must not reclassify");
    assert!(d.stop().success());
}

#[test]
fn bad_model_and_bad_folder_fail_clearly_at_start() {
    let s = Setup::new();
    let bad = s.tmp.path().join("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let out = s.cmd(&["watch"]).arg(&s.dir).arg("--db").arg(&s.db).arg("--model").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.onnx") && err.contains("not an ONNX model"), "{err}");

    let missing = s.tmp.path().join("missing.onnx");
    let out = s.cmd(&["watch"]).arg(&s.dir).arg("--model").arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.onnx"));

    let out = s.cmd(&["watch", "/nonexistent/folder"]).arg("--model").arg(&s.model).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/folder"));
}

#[test]
fn query_filters_and_formats() {
    let s = Setup::new();
    s.write_image("r1.png", "red", ImageFormat::Png, 1);
    s.write_image("sub/r2.png", "red", ImageFormat::Png, 2);
    s.write_image("g.png", "green", ImageFormat::Png, 3);
    std::fs::write(s.dir.join("=cmd.jpg"), b"text").unwrap();
    let mut d = s.start(&[]);
    wait_for(30, "4 rows", || s.count(DONE) == 4);
    assert!(d.stop().success());

    assert_eq!(s.query(&["--label", "red"]).len(), 2);
    assert_eq!(s.query(&["--label", "red", "--path", "sub/*"]).len(), 1);
    assert_eq!(s.query(&["--status", "error"]).len(), 1);
    assert_eq!(s.query(&["--since", "1h"]).len(), 4);
    assert_eq!(s.query(&["--since", "2999-01-01"]).len(), 0);
    assert_eq!(s.query(&["--limit", "2"]).len(), 2);
    // Every result is confident, so a threshold of 1.0 makes them unknown.
    let unknown = s.query(&["--min-confidence", "1.0", "--label", "unknown"]);
    assert_eq!(unknown.len(), 3);
    assert!(unknown.iter().all(|r| r["label"] == "unknown" && r["top5"].as_array().unwrap().len() == 3));

    let out = s.cmd(&["query", "--format", "csv", "--db"]).arg(&s.db).output().unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("path,status,label,confidence"), "{csv}");
    assert_eq!(csv.lines().count(), 5);

    let out = s.cmd(&["stats", "--json", "--db"]).arg(&s.db).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["ok"], 3);
    assert_eq!(stats["errors"], 1);
    assert_eq!(stats["backends"][0]["backend"], "tract");

    let out = s.cmd(&["query", "--since", "yesterday-ish", "--db"]).arg(&s.db).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

#[test]
fn classify_and_evaluate_use_the_same_pipeline() {
    let s = Setup::new();
    let data = s.tmp.path().join("labelled");
    for (i, label) in ["red", "green", "blue"].iter().enumerate() {
        std::fs::create_dir_all(data.join(label)).unwrap();
        for j in 0..3u32 {
            instrument_model::testkit::write_color_image(
                &data.join(label).join(format!("{j}.jpg")),
                label,
                ImageFormat::Jpeg,
                i as u32 * 10 + j,
            )
            .unwrap();
        }
    }
    let out = s
        .cmd(&["classify", "--json", "--backend", "tract", "--model"])
        .arg(&s.model)
        .arg(data.join("green"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["label"] == "green"));

    let out =
        s.cmd(&["evaluate", "--json", "--backend", "tract", "--model"]).arg(&s.model).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 9);
    assert_eq!(report["accuracy"], 1.0);
    assert_eq!(report["per_class"]["blue"]["accuracy"], 1.0);
}
