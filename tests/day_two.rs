//! Living with the daemon: reclassify after a model change, config files,
//! metrics and status, the sorted view.

use crate::common::*;
use image::ImageFormat;
use std::io::{Read, Write};

const DONE: &str = "SELECT count(*) FROM files WHERE status IN ('ok', 'error')";

#[test]
fn reclassify_redoes_only_stale_results() {
    let s = Setup::new();
    s.write_image("a.png", "red", ImageFormat::Png, 1);
    s.write_image("b.png", "blue", ImageFormat::Png, 2);
    std::fs::copy(s.dir.join("b.png"), s.dir.join("b-copy.png")).unwrap();
    let mut d = s.start(&[]);
    wait_for(30, "3 rows", || s.count(DONE) == 3);
    assert!(d.stop().success());

    // A different model file (another input size): results by the old one are stale.
    let new_model = s.tmp.path().join("color16.onnx");
    std::fs::write(&new_model, instrument_model::testkit::color_model(16)).unwrap();
    let run = |extra: &[&str]| {
        let out = s
            .cmd(&["reclassify", "--backend", "tract", "--db"])
            .arg(&s.db)
            .arg("--model")
            .arg(&new_model)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let msg = run(&["--stale", "--label", "blue"]);
    assert!(msg.contains("reclassified 1 contents"), "{msg}");
    let rows = s.query(&[]);
    let sha_of =
        |name: &str| rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(name)).unwrap()["model_sha256"].clone();
    assert_eq!(sha_of("/b.png"), sha_of("b-copy.png"), "both paths of one content move together");
    assert_ne!(sha_of("/a.png"), sha_of("/b.png"));
    let msg = run(&["--stale"]);
    assert!(msg.contains("reclassified 1 contents"), "only a.png was left: {msg}");
    assert!(run(&["--stale"]).contains("nothing to reclassify"));
    assert_eq!(s.count("SELECT count(DISTINCT model_sha256) FROM results"), 1);
}

#[test]
fn config_file_sets_flags_and_typed_flags_win() {
    let s = Setup::new();
    s.write_image("a.png", "green", ImageFormat::Png, 1);
    let mut d = s.start(&[]);
    wait_for(30, "1 row", || s.count(DONE) == 1);
    assert!(d.stop().success());
    let cfg = s.tmp.path().join("id.toml");
    std::fs::write(
        &cfg,
        format!("[query]\ndb = {:?}\nformat = \"json\"\nlabel = \"red\"\n", s.db.display().to_string()),
    )
    .unwrap();
    let out = s.cmd(&["query", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len(), 0);
    let out = s.cmd(&["query", "--config"]).arg(&cfg).args(["--label", "green"]).output().unwrap();
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len(), 1);
    std::fs::write(&cfg, "not = [valid").unwrap();
    let out = s.cmd(&["query", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));
}

#[test]
fn a_config_files_folder_survives_typed_flags_with_values() {
    // `watch --config FILE --db x.db` once took "x.db" for a typed folder and
    // dropped the file's `dir`, watching ./watch instead.
    let s = Setup::new();
    // Not ./watch (which is where the daemon would look if it dropped the file's folder).
    let photos = s.tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    instrument_model::testkit::write_color_image(&photos.join("a.png"), "red", ImageFormat::Png, 1).unwrap();
    let cfg = s.tmp.path().join("id.toml");
    std::fs::write(&cfg, format!("dir = {:?}\nsettle_ms = 300\n", photos.display().to_string())).unwrap();
    let log = std::fs::File::create(s.tmp.path().join("config-daemon.log")).unwrap();
    let mut child = s
        .cmd(&["watch", "--config"])
        .arg(&cfg)
        .arg("--db")
        .arg(&s.db)
        .arg("--model")
        .arg(&s.model)
        .args(["--backend", "tract"])
        .current_dir(s.tmp.path())
        .stderr(log)
        .spawn()
        .unwrap();
    let seen = std::time::Instant::now();
    while s.count(DONE) < 1 && seen.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let log = std::fs::read_to_string(s.tmp.path().join("config-daemon.log")).unwrap_or_default();
    assert_eq!(s.count(DONE), 1, "the config's folder was not watched:\n{log}");
}

fn http_get(port: u16, path: &str) -> String {
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut body = String::new();
    sock.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn metrics_status_and_organize() {
    let s = Setup::new();
    s.write_image("a.png", "red", ImageFormat::Png, 1);
    std::fs::write(s.dir.join("bad.jpg"), b"").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sorted = s.tmp.path().join("sorted");
    let addr = format!("127.0.0.1:{port}");
    let mut d = s.start(&["--metrics", &addr, "--organize", sorted.to_str().unwrap()]);
    wait_for(30, "2 rows", || s.count(DONE) == 2);
    wait_for(10, "healthz", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(http_get(port, "/healthz").ends_with("ok\n"));
    let m = http_get(port, "/metrics");
    assert!(m.contains("instrument_detector_contents_classified_total 1"), "{m}");
    assert!(m.contains("instrument_detector_files_failed_total{kind=\"empty\"} 1"), "{m}");
    assert!(m.contains("instrument_detector_info{backend=\"tract\""), "{m}");
    assert!(m.contains("instrument_detector_inference_seconds_count 1"), "{m}");

    wait_for(10, "status file", || {
        let out = s.cmd(&["status", "--json", "--db"]).arg(&s.db).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["running"] == true && v["status"]["files_failed"] == 1
    });
    // The sorted view holds a link to the photo, and the original is untouched.
    let linked = sorted.join("red").join("a.png");
    assert!(linked.exists());
    assert!(s.dir.join("a.png").exists());
    assert!(d.stop().success());
    let out = s.cmd(&["status", "--db"]).arg(&s.db).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a stopped daemon is reported as not running");
}

#[test]
fn a_new_model_file_is_picked_up_and_a_broken_one_refused() {
    model_swap(&[], 1);
}

/// On ORT with two threads the engine splits into two lanes, each with its own
/// batcher: every batcher must get its own piece of the new model.
#[test]
fn a_model_swap_reaches_every_batcher_on_ort_lanes() {
    model_swap(&["--backend", "ort-cpu", "--threads", "2", "--batch-size", "4"], 2);
}

fn model_swap(extra: &[&str], batchers: usize) {
    let s = Setup::new();
    s.write_image("before.png", "red", ImageFormat::Png, 1);
    let mut d = s.start(extra);
    wait_for(30, "first row", || s.count(DONE) == 1);
    let old_sha = s.query(&[])[0]["model_sha256"].clone();

    // Replace the model file in place (atomically, as a trainer would).
    let tmp = s.tmp.path().join("new.onnx");
    std::fs::write(&tmp, instrument_model::testkit::color_model(16)).unwrap();
    std::fs::rename(&tmp, &s.model).unwrap();
    wait_for(30, "the switch", || d.log().matches("switched to the new model").count() == batchers);
    // Enough files that both batchers take some.
    let colours = ["blue", "green", "red"];
    for i in 0..12u32 {
        s.write_image(&format!("after-{i}.png"), colours[i as usize % 3], ImageFormat::Png, 10 + i);
    }
    wait_for(30, "the rows after the switch", || s.count(DONE) == 13);
    let rows = s.query(&[]);
    for i in 0..12usize {
        let after = rows.iter().find(|r| r["path"].as_str().unwrap().ends_with(&format!("after-{i}.png"))).unwrap();
        assert_ne!(after["model_sha256"], old_sha, "after-{i}.png used the old model");
        assert_eq!(after["label"], colours[i % 3], "after-{i}.png");
    }

    // A broken model is refused; the daemon keeps working with the last good one.
    std::fs::write(s.tmp.path().join("bad.onnx"), b"garbage").unwrap();
    std::fs::rename(s.tmp.path().join("bad.onnx"), &s.model).unwrap();
    wait_for(30, "the refusal", || d.log().contains("new model refused"));
    s.write_image("later.png", "green", ImageFormat::Png, 3);
    wait_for(30, "the last row", || s.count(DONE) == 14);
    assert_eq!(s.count("SELECT count(*) FROM predictions"), 14, "nothing duplicated");
    assert!(d.stop().success());
}
