//! Backend choice through the real binary: `auto` steps down with a reason, a
//! named backend is that one or a clear failure, and results agree.

use crate::common::*;
use image::ImageFormat;

fn classify(s: &Setup, img: &std::path::Path, extra: &[&str]) -> std::process::Output {
    s.cmd(&["classify", "--json", "--model"]).arg(&s.model).arg(img).args(extra).output().unwrap()
}

#[test]
fn auto_falls_back_to_tract_with_a_reason_when_onnx_runtime_is_missing() {
    let s = Setup::new();
    let img = s.write_image("r.png", "red", ImageFormat::Png, 1);
    let out = classify(&s, &img, &["--ort-lib", "/nonexistent/libonnxruntime.so.1.31.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backend ort-cpu not used") && err.contains("/nonexistent/libonnxruntime.so.1.31.1"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "tract");
    assert_eq!(v["label"], "red");

    let out = classify(&s, &img, &["--backend", "ort-cpu", "--ort-lib", "/nonexistent/libonnxruntime.so.1.31.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ort-cpu backend unavailable"));
}

#[test]
fn auto_on_a_machine_without_a_gpu_does_not_warn_about_cuda() {
    let gpu =
        std::path::Path::new("/proc/driver/nvidia/gpus").is_dir() || std::path::Path::new("/dev/nvidia0").exists();
    let s = Setup::new();
    let img = s.write_image("r.png", "red", ImageFormat::Png, 1);
    let out = classify(&s, &img, &["--backend", "auto"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    if !gpu {
        // The expected case is said at info, which `classify` does not show by default.
        assert!(!err.to_lowercase().contains("cuda"), "{err}");
        let out = classify(&s, &img, &["--backend", "auto", "-v"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no NVIDIA GPU") && !err.contains("WARN"), "{err}");
    }
}

#[test]
fn cuda_on_a_machine_without_it_fails_clearly() {
    let s = Setup::new();
    let img = s.write_image("r.png", "red", ImageFormat::Png, 1);
    let out = classify(&s, &img, &["--backend", "cuda"]);
    if out.status.success() {
        // A machine with a working CUDA provider: then it must really be CUDA.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["backend"], "cuda");
        return;
    }
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda backend unavailable"), "{err}");
}

#[test]
fn backends_agree_through_the_cli() {
    let s = Setup::new();
    let dir = s.tmp.path().join("imgs");
    std::fs::create_dir(&dir).unwrap();
    for (i, l) in ["red", "green", "blue", "green"].iter().enumerate() {
        instrument_model::testkit::write_color_image(&dir.join(format!("{i}.jpg")), l, ImageFormat::Jpeg, i as u32)
            .unwrap();
    }
    let run = |backend: &str| -> Vec<serde_json::Value> {
        let out =
            s.cmd(&["classify", "--json", "--backend", backend, "--model"]).arg(&s.model).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (t, o) = (run("tract"), run("ort-cpu"));
    assert_eq!(t.len(), 4);
    for (a, b) in t.iter().zip(&o) {
        assert_eq!(a["label"], b["label"]);
        assert_eq!(b["backend"], "ort-cpu");
        let (ca, cb) = (a["confidence"].as_f64().unwrap(), b["confidence"].as_f64().unwrap());
        assert!((ca - cb).abs() < 1e-4, "{ca} vs {cb}");
    }
}
