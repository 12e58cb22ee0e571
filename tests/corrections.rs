//! `instrument-detector correct`: a person's label wins over the model's in
//! every command, for every copy of the photo, and survives reclassification
//! by another model and a restart of the daemon.

use crate::common::*;
use image::ImageFormat;

const DONE: &str = "SELECT count(*) FROM files WHERE status IN ('ok', 'error')";

fn output(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let out = s.cmd(args).arg("--db").arg(&s.db).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_correction_wins_everywhere_and_survives_reclassification_and_restarts() {
    let s = Setup::new();
    s.write_image("a.png", "red", ImageFormat::Png, 1);
    std::fs::copy(s.dir.join("a.png"), s.dir.join("a-copy.png")).unwrap();
    s.write_image("b.png", "blue", ImageFormat::Png, 2);
    std::fs::write(s.dir.join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
    let mut d = s.start(&[]);
    wait_for(30, "4 rows", || s.count(DONE) == 4);

    // While the daemon runs: the photo is really green.
    let a = s.dir.join("a.png").display().to_string();
    let (ok, stdout, stderr) = output(&s, &["correct", &a, "green"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("red -> green"), "{stdout}");
    // Refused, with the reason, and nothing recorded.
    let (ok, _, stderr) = output(&s, &["correct", &a, "purple"]);
    assert!(!ok && stderr.contains("'purple' is not a label") && stderr.contains("red, green, blue"), "{stderr}");
    let broken = s.dir.join("broken.jpg").display().to_string();
    let (ok, _, stderr) = output(&s, &["correct", &broken, "red"]);
    assert!(!ok && stderr.contains("has no result to correct"), "{stderr}");
    assert_eq!(s.count("SELECT count(*) FROM corrections"), 1);

    let labels = |s: &Setup| -> Vec<(String, String, bool)> {
        let rows = s.query(&["--status", "ok"]);
        let name = |r: &serde_json::Value| r["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        rows.iter().map(|r| (name(r), r["label"].as_str().unwrap().to_string(), r["corrected"] == true)).collect()
    };
    let corrected = || {
        vec![
            ("a-copy.png".to_string(), "green".to_string(), true),
            ("a.png".to_string(), "green".to_string(), true),
            ("b.png".to_string(), "blue".to_string(), false),
        ]
    };
    assert_eq!(labels(&s), corrected(), "every copy of the content takes the correction");
    assert!(d.stop().success());

    // Another model redoes everything; the correction still wins.
    let other = s.tmp.path().join("color16.onnx");
    std::fs::write(&other, instrument_model::testkit::color_model(16)).unwrap();
    let out =
        s.cmd(&["reclassify", "--backend", "tract", "--db"]).arg(&s.db).arg("--model").arg(&other).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.count("SELECT count(DISTINCT model_sha256) FROM predictions"), 2);
    assert_eq!(labels(&s), corrected());
    // And after a restart that rescans everything.
    let mut d = s.start(&[]);
    wait_for(30, "the scan", || d.log().contains("scan finished"));
    assert!(d.stop().success());
    assert_eq!(labels(&s), corrected());

    let (_, stats, _) = output(&s, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["corrections"], 1);
    assert_eq!(stats["labels"][0], serde_json::json!({"label": "green", "count": 2}));
    let (_, table, _) = output(&s, &["query"]);
    assert!(table.lines().any(|l| l.starts_with("green") && l.contains("fixed") && l.ends_with("/a.png")), "{table}");
    let (_, list, _) = output(&s, &["correct", "--list"]);
    assert!(list.contains("green") && list.contains("(model: red"), "{list}");

    // Exported for training: one file per corrected content, named by it.
    let exported = s.tmp.path().join("exported");
    let (ok, stdout, stderr) = output(&s, &["correct", "--export", exported.to_str().unwrap()]);
    assert!(ok && stdout.starts_with("1 corrected photos") && stdout.contains("(1 new)"), "{stdout}{stderr}");
    let green: Vec<_> = std::fs::read_dir(exported.join("green")).unwrap().collect();
    assert_eq!(green.len(), 1);
    let (_, again, _) = output(&s, &["correct", "--export", exported.to_str().unwrap()]);
    assert!(again.contains("(0 new)"), "{again}");

    // Withdrawn through the copy: both show the model's answer again.
    let copy = s.dir.join("a-copy.png").display().to_string();
    let (ok, _, stderr) = output(&s, &["correct", &copy, "--withdraw"]);
    assert!(ok, "{stderr}");
    assert!(labels(&s).iter().all(|(_, label, corrected)| !corrected && label != "green"), "{:?}", labels(&s));
    assert_eq!(s.count("SELECT count(*) FROM corrections"), 0);
}
