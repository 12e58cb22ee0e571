//! `--backend triton` against a real Triton Inference Server (2.51, from the
//! PyPI wheel, on the CPU, bound to 127.0.0.1), started and stopped by PID
//! through `scripts/triton-server.sh`: the same answers as ONNX Runtime on
//! the CPU, also when a batch is larger than the server takes; a server that
//! runs another model is refused; a server stopped and
//! started again in the middle of a burst loses no photo and writes no error.
//!
//! The server's venv is made by `scripts/setup-triton.sh` (the README's test
//! command runs it); without it these tests say so and fail under CI.

use crate::common::*;
use image::ImageFormat;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/triton-server.sh");

/// A running server, stopped by its PID when dropped.
struct Server {
    dir: PathBuf,
    url: String,
}

impl Server {
    /// Starts one serving `model`, on `port` if given; `None` (after saying
    /// why, which fails under CI) when the venv is missing.
    fn start(model: &Path, dir: &Path, port: Option<&str>) -> Option<Server> {
        Server::start_with(model, dir, port, &[])
    }

    fn start_with(model: &Path, dir: &Path, port: Option<&str>, env: &[(&str, &str)]) -> Option<Server> {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-triton/bin/python");
        if std::env::var_os("TRITON_VENV").is_none() && !venv.exists() {
            skip_or_fail_in_ci("the Triton tests: no .venv-triton (run scripts/setup-triton.sh)");
            return None;
        }
        let mut cmd = Command::new(SCRIPT);
        cmd.arg("start").arg(model).arg(dir);
        cmd.args(port);
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "the server did not start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Some(Server { dir: dir.to_path_buf(), url })
    }

    fn port(&self) -> String {
        self.url.rsplit(':').next().unwrap().to_string()
    }

    fn stop(&self) {
        let out = Command::new(SCRIPT).arg("stop").arg(&self.dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.dir.join("pid").exists() {
            self.stop();
        }
    }
}

fn classify(s: &Setup, model: &Path, backend: &[&str], paths: &[PathBuf]) -> Vec<serde_json::Value> {
    let out = s
        .cmd(&["classify", "--json", "--top", "3"])
        .arg("--model")
        .arg(model)
        .args(backend)
        .args(paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn triton_answers_as_onnx_runtime_does_and_refuses_a_server_running_another_model() {
    let s = Setup::new();
    let paths: Vec<PathBuf> = (0..12)
        .map(|i| s.write_image(&format!("p{i}.png"), ["red", "green", "blue"][i % 3], ImageFormat::Png, i as u32))
        .collect();
    // A server that takes at most 5 photos a request: the batch of 12 goes in pieces.
    let Some(server) = Server::start_with(&s.model, &s.tmp.path().join("triton"), None, &[("TRITON_MAX_BATCH", "5")])
    else {
        return;
    };
    let remote =
        classify(&s, &s.model, &["--backend", "triton", "--triton-url", &server.url, "--batch-size", "12"], &paths);
    let local = classify(&s, &s.model, &["--backend", "ort-cpu"], &paths);
    assert_eq!(remote.len(), 12);
    for (r, l) in remote.iter().zip(&local) {
        assert_eq!((&r["path"], &r["label"], &r["backend"]), (&l["path"], &l["label"], &"triton".into()));
        for (a, b) in r["topk"].as_array().unwrap().iter().zip(l["topk"].as_array().unwrap()) {
            assert_eq!(a["label"], b["label"]);
            let (a, b) = (a["confidence"].as_f64().unwrap(), b["confidence"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-4, "triton {a} against ort-cpu {b}");
        }
    }

    // Another file under --model: the server's sha256 says it is not this one.
    let other = s.tmp.path().join("other.onnx");
    std::fs::write(&other, instrument_model::testkit::open_world_color_model(32)).unwrap();
    let out = s
        .cmd(&["classify", "--backend", "triton", "--triton-url", &server.url, "--model"])
        .arg(&other)
        .arg(&paths[0])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the server's model 'instrument' is"), "{err}");
    // And no server at all is a clear error, not a hang.
    server.stop();
    let out = s
        .cmd(&["classify", "--backend", "triton", "--triton-url", &server.url, "--model"])
        .arg(&s.model)
        .arg(&paths[0])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not ready") && err.contains("onnection refused"), "{err}");
}

#[test]
fn a_server_stopped_and_started_again_mid_burst_loses_nothing() {
    let s = Setup::new();
    let Some(server) = Server::start(&s.model, &s.tmp.path().join("triton"), None) else { return };
    let mut d = s.start(&["--backend", "triton", "--triton-url", &server.url, "--batch-size", "4"]);
    let label = |i: u32| ["red", "green", "blue"][i as usize % 3];
    for i in 0..40 {
        s.write_image(&format!("a{i}.png"), label(i), ImageFormat::Png, i);
    }
    wait_for(60, "some of the first burst", || s.count("SELECT count(*) FROM files WHERE status = 'ok'") >= 8);
    server.stop();
    for i in 40..80 {
        s.write_image(&format!("b{i}.png"), label(i), ImageFormat::Png, i);
    }
    wait_for(30, "the daemon to notice", || d.log().contains("the inference server is unreachable"));
    let waiting = s.count("SELECT count(*) FROM files WHERE status = 'ok'");
    assert!(waiting < 80, "all 80 done without a server?");
    let again = Server::start(&s.model, &s.tmp.path().join("triton"), Some(&server.port())).unwrap();
    wait_for(90, "all 80 photos", || s.count("SELECT count(*) FROM files WHERE status = 'ok'") == 80);
    assert!(d.log().contains("the inference server answers again"), "{}", d.log());
    assert_eq!(s.count("SELECT count(*) FROM files WHERE status = 'error'"), 0, "an outage is not the photos' fault");
    assert_eq!(
        d.log().matches("the inference server is unreachable").count(),
        d.log().matches("answers again").count()
    );
    let rows = s.query(&[]);
    assert_eq!(rows.len(), 80);
    for r in &rows {
        let name = Path::new(r["path"].as_str().unwrap()).file_stem().unwrap().to_string_lossy().to_string();
        let i: u32 = name[1..].parse().unwrap();
        assert_eq!((r["label"].as_str().unwrap(), r["backend"].as_str().unwrap()), (label(i), "triton"), "{r}");
    }
    assert!(d.stop().success());
    drop(again);
}
