//! `retrain`: the library's model learns from its corrections. The daemon
//! (started without --model, so on the library's own model) swaps to the new
//! model by itself, `reclassify --stale` redoes the library with it, and a
//! model that loses valid photos is refused and never put in use.
//!
//! The model is the retrainable colour model, which calls blue pictures
//! green: the corrections teach it blue.

use crate::common::*;
use image::ImageFormat;
use instrument_model::testkit;
use std::path::{Path, PathBuf};

const DONE: &str = "SELECT count(*) FROM files WHERE status IN ('ok', 'error')";

/// The dataset: train has no blue at all; valid has two of each colour.
pub(crate) fn dataset(root: &Path) -> PathBuf {
    let data = root.join("dataset");
    for (split, photos, seed) in
        [("train", &[("red", 4), ("green", 4)][..], 1), ("valid", &[("red", 2), ("green", 2), ("blue", 2)], 50)]
    {
        for (label, n) in photos {
            let dir = data.join(split).join(label);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..*n {
                testkit::write_color_image(&dir.join(format!("{i}.png")), label, ImageFormat::Png, seed + i).unwrap();
            }
        }
    }
    data
}

/// The library's models folder, with the retrainable model as the one in use.
pub(crate) fn library_model(s: &Setup) -> PathBuf {
    let current = s.tmp.path().join("results.db.models").join("current.onnx");
    std::fs::create_dir_all(current.parent().unwrap()).unwrap();
    std::fs::write(&current, testkit::retrainable_color_model(32)).unwrap();
    current
}

fn run(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let out = s.cmd(args).arg("--db").arg(&s.db).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn label_of(s: &Setup, name: &str) -> String {
    let rows = s.query(&[]);
    let row = rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(&format!("/{name}"))).expect(name);
    row["label"].as_str().unwrap().to_string()
}

fn sha_of(path: &Path) -> String {
    instrument_model::model::LoadedModel::load(path).unwrap().sha256
}

#[test]
fn corrections_retrain_the_model_the_daemon_swaps_to_it_and_reclassify_redoes_the_library() {
    let s = Setup::new();
    let data = dataset(s.tmp.path());
    let current = library_model(&s);
    let base = sha_of(&current);
    for i in 0..4 {
        s.write_image(&format!("blue-{i}.png"), "blue", ImageFormat::Png, 10 + i);
    }
    s.write_image("red.png", "red", ImageFormat::Png, 20);
    let mut d = s.start_on_library_model(&[]);
    wait_for(30, "5 rows", || s.count(DONE) == 5);
    assert_eq!(label_of(&s, "blue-2.png"), "green", "the model's mistake");

    // With nothing corrected there is nothing to learn, and it says so.
    let data_arg = data.display().to_string();
    let (ok, _, stderr) = run(&s, &["retrain", "--data", &data_arg, "--backend", "tract"]);
    assert!(!ok && stderr.contains("no corrections yet"), "{stderr}");

    for i in 0..2 {
        let p = s.dir.join(format!("blue-{i}.png")).display().to_string();
        let (ok, _, stderr) = run(&s, &["correct", &p, "blue"]);
        assert!(ok, "{stderr}");
    }
    // The toy head's weights are ~10, so it takes bigger steps than a real one.
    let (ok, stdout, stderr) =
        run(&s, &["retrain", "--data", &data_arg, "--backend", "tract", "--learning-rate", "0.05", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["corrections"], 2);
    assert_eq!(
        (report["corrections_right_before"].as_u64(), report["corrections_right_after"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!((report["valid_right_before"].as_u64(), report["valid_right_after"].as_u64()), (Some(4), Some(6)));
    assert_eq!(report["parent_sha256"], base.as_str());
    let new = sha_of(&current);
    assert_ne!(new, base, "current.onnx is the new model");
    let kept: Vec<_> = std::fs::read_dir(current.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("retrained-") && n.ends_with(".onnx"))
        .collect();
    assert_eq!(kept.len(), 1, "every retrained model is kept by name: {kept:?}");

    // The daemon swaps by itself: a blue photo dropped now is blue.
    wait_for(30, "the swap", || d.log().contains(&format!("new model {new} validated")));
    wait_for(10, "the switch", || d.log().contains("switched to the new model"));
    s.write_image("blue-new.png", "blue", ImageFormat::Png, 30);
    wait_for(30, "6 rows", || s.count(DONE) == 6);
    assert_eq!(label_of(&s, "blue-new.png"), "blue");

    // The older results are the old model's until reclassified.
    assert_eq!(label_of(&s, "blue-3.png"), "green");
    let (ok, _, stderr) = run(&s, &["reclassify", "--stale", "--backend", "tract"]);
    assert!(ok, "{stderr}");
    assert_eq!(label_of(&s, "blue-3.png"), "blue", "a photo no correction touched");
    assert_eq!(label_of(&s, "red.png"), "red");
    assert_eq!(s.count(&format!("SELECT count(*) FROM results WHERE model_sha256 IS NOT '{new}'")), 0);
    assert!(d.stop().success());
}

#[test]
fn a_retrained_model_that_loses_valid_photos_is_refused_and_not_put_in_use() {
    let s = Setup::new();
    let data = dataset(s.tmp.path());
    let current = library_model(&s);
    let base = sha_of(&current);
    for i in 0..3 {
        s.write_image(&format!("red-{i}.png"), "red", ImageFormat::Png, 10 + i);
    }
    let mut d = s.start_on_library_model(&[]);
    wait_for(30, "3 rows", || s.count(DONE) == 3);
    assert!(d.stop().success());
    // Someone who says every red photo is green, loudly.
    for i in 0..3 {
        let p = s.dir.join(format!("red-{i}.png")).display().to_string();
        assert!(run(&s, &["correct", &p, "green"]).0);
    }
    let data_arg = data.display().to_string();
    let args =
        ["retrain", "--data", &data_arg, "--backend", "tract", "--learning-rate", "0.05", "--correction-weight", "100"];
    let (ok, _, stderr) = run(&s, &args);
    assert!(!ok, "refused is a failure");
    assert!(stderr.contains("refused") && stderr.contains("valid photos right"), "{stderr}");
    assert_eq!(sha_of(&current), base, "the model in use is untouched");
    let refused = std::fs::read_dir(current.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("refused-"))
        .count();
    assert_eq!(refused, 1, "the refused model is kept to look at");
}

#[test]
fn a_model_that_is_not_retrainable_is_refused_with_the_reason() {
    let s = Setup::new();
    let data = dataset(s.tmp.path());
    s.write_image("red.png", "red", ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    wait_for(30, "1 row", || s.count(DONE) == 1);
    assert!(d.stop().success());
    let p = s.dir.join("red.png").display().to_string();
    assert!(run(&s, &["correct", &p, "green"]).0);
    let model = s.model.display().to_string();
    let data_arg = data.display().to_string();
    let (ok, _, stderr) = run(&s, &["retrain", "--data", &data_arg, "--backend", "tract", "--model", &model]);
    assert!(!ok && stderr.contains("cannot be retrained") && stderr.contains("'features'"), "{stderr}");
}

#[test]
fn a_second_retrain_of_the_same_library_waits_its_turn_with_a_clear_refusal() {
    let s = Setup::new();
    let data = dataset(s.tmp.path());
    let current = library_model(&s);
    s.write_image("blue.png", "blue", ImageFormat::Png, 1);
    let mut d = s.start_on_library_model(&[]);
    wait_for(30, "1 row", || s.count(DONE) == 1);
    assert!(d.stop().success());
    let p = s.dir.join("blue.png").display().to_string();
    assert!(run(&s, &["correct", &p, "blue"]).0);
    // Another retrain (the page's, say) holds the library's retrain lock.
    let lock = std::fs::File::create(current.parent().unwrap().join("retrain.lock")).unwrap();
    lock.try_lock().unwrap();
    let data_arg = data.display().to_string();
    let (ok, _, stderr) = run(&s, &["retrain", "--data", &data_arg, "--backend", "tract"]);
    assert!(!ok && stderr.contains("another retrain of this library is running"), "{stderr}");
    drop(lock);
    let (ok, _, stderr) = run(&s, &["retrain", "--data", &data_arg, "--backend", "tract", "--learning-rate", "0.05"]);
    assert!(ok, "once it is free: {stderr}");
}
