//! The `none` label end to end, with a tiny open-world model whose answers are
//! known in advance (`testkit::open_world_color_model`): the daemon, `query`,
//! `stats`, `classify` and `evaluate` with a `none` folder.

use crate::common::{Setup, wait_for};
use image::ImageFormat;
use instrument_model::testkit;
use std::path::Path;

const BLACK: [u8; 3] = [5, 5, 5];
const WHITE: [u8; 3] = [250, 250, 250];

fn open_world_setup() -> Setup {
    let s = Setup::new();
    std::fs::write(&s.model, testkit::open_world_color_model(32)).unwrap();
    s
}

fn write_flat(path: &Path, rgb: [u8; 3], seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = testkit::flat_image(rgb, 40, 30, seed);
    std::fs::write(path, testkit::encode(&img, ImageFormat::Png)).unwrap();
}

#[test]
fn the_daemon_stores_none_for_a_photo_without_an_instrument_and_queries_find_it() {
    let s = open_world_setup();
    s.write_image("red.png", "red", ImageFormat::Png, 1);
    write_flat(&s.dir.join("dark.png"), BLACK, 2);
    write_flat(&s.dir.join("bright.png"), WHITE, 3);
    let mut d = s.start(&[]);
    wait_for(60, "three rows", || s.count("SELECT count(*) FROM results WHERE status = 'ok'") == 3);

    let none = s.query(&["--label", "none"]);
    assert_eq!(none.len(), 1, "{none:?}\n{}", d.log());
    assert!(none[0]["path"].as_str().unwrap().ends_with("dark.png"), "{none:?}");
    assert!(none[0]["confidence"].as_f64().unwrap() > 0.9, "{none:?}");
    // The instruments' top-5 is still there, after the verdict.
    let top5 = none[0]["top5"].as_array().expect("top5 array");
    assert_eq!(top5[0]["label"], "none");
    assert_eq!(top5.len(), 4, "none, then every one of the 3 labels: {top5:?}");

    // The classifier is sure of red. In the bright one ImageNet sees an
    // instrument, its red twin as much as a green one, so the expert tips
    // the unsure classifier to red.
    let rows = s.query(&[]);
    let label_of =
        |name: &str| rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(name)).unwrap()["label"].clone();
    assert_eq!(label_of("red.png"), "red");
    assert_eq!(label_of("bright.png"), "red", "{rows:?}");

    // `--min-confidence` applies to `none` like to any label.
    assert_eq!(s.query(&["--label", "none", "--min-confidence", "0.5"]).len(), 1);

    let stats = s.cmd(&["stats", "--json", "--db"]).arg(&s.db).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let labels = stats["labels"].as_array().unwrap();
    assert!(labels.iter().any(|l| l["label"] == "none" && l["count"] == 1), "{stats}");
    d.stop();
}

#[test]
fn classify_says_none_and_lists_the_instruments_after_it() {
    let s = open_world_setup();
    let dark = s.tmp.path().join("dark.png");
    write_flat(&dark, BLACK, 7);
    let out =
        s.cmd(&["classify", "--backend", "tract", "--json", "--model"]).arg(&s.model).arg(&dark).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.find("\"none\"").expect("none in the output");
    assert!(text[first..].contains("\"red\""), "{text}");
}

#[test]
fn evaluate_scores_a_none_folder_like_any_class() {
    let s = open_world_setup();
    let data = s.tmp.path().join("eval");
    for (i, label) in testkit::COLOR_LABELS.iter().enumerate() {
        let p = data.join(label).join("a.png");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        testkit::write_color_image(&p, label, ImageFormat::Png, i as u32).unwrap();
    }
    write_flat(&data.join("none/dark1.png"), BLACK, 11);
    write_flat(&data.join("none/dark2.png"), BLACK, 12);
    // A bright photo filed under none is one the model gets wrong: it sees an instrument.
    write_flat(&data.join("none/bright.png"), WHITE, 13);
    let out =
        s.cmd(&["evaluate", "--json", "--backend", "tract", "--model"]).arg(&s.model).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 6, "{v}");
    assert_eq!(v["correct"], 5, "{v}");
    assert_eq!(v["per_class"]["none"]["images"], 3, "{v}");
    assert_eq!(v["per_class"]["none"]["correct"], 2, "{v}");
    assert_eq!(v["instrument_photos_called_none"], 0, "{v}");
    assert_eq!(v["instrument_photos"], 3, "{v}");

    // A model without the rule never says none, and evaluate says so honestly.
    std::fs::write(&s.model, testkit::color_model(32)).unwrap();
    let out =
        s.cmd(&["evaluate", "--json", "--backend", "tract", "--model"]).arg(&s.model).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["per_class"]["none"]["correct"], 0, "{v}");
}

#[test]
fn a_model_whose_output_lacks_the_declared_imagenet_head_is_refused() {
    let s = Setup::new();
    // Metadata declares 4 ImageNet columns, but the graph returns only the 3 labels.
    let mut proto = instrument_model::onnx::decode(&testkit::color_model(32)).unwrap();
    let entry =
        [(instrument_model::open_world::KEY.to_string(), testkit::open_world_color_description().to_metadata())];
    instrument_model::onnx::set_metadata(&mut proto, &entry.into_iter().collect());
    std::fs::write(&s.model, instrument_model::onnx::encode(&proto)).unwrap();
    let img = s.tmp.path().join("red.png");
    testkit::write_color_image(&img, "red", ImageFormat::Png, 1).unwrap();
    let out = s.cmd(&["classify", "--backend", "tract", "--model"]).arg(&s.model).arg(&img).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ImageNet"), "the error should say what is missing: {err}");
}
