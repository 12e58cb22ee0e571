//! The engine chain when ONNX Runtime cannot be had: `auto` lands on tract and
//! says why; naming an ORT backend is an error that says how to fix it.
//!
//! ONNX Runtime is loaded once per process, so each scenario runs in a child
//! process: this test binary started again with one test selected and the
//! scenario in an environment variable.

use instrument_model::engine::{self, Backend, BackendChoice, EngineError, EngineOptions};
use instrument_model::model::LoadedModel;
use instrument_model::testkit;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCENARIO: &str = "INSTRUMENT_DETECTOR_ORT_SCENARIO";
const LIB: &str = "INSTRUMENT_DETECTOR_ORT_SCENARIO_LIB";

/// Runs `scenario_child` in a fresh process and requires it to pass.
fn run_child(scenario: &str, lib: &Path, extra_env: &[(&str, &str)]) {
    // libtest names a test by its path without the crate: `ort_fallback::…`
    // where `module_path!()` says `tests::ort_fallback`.
    let module = module_path!().split_once("::").map_or(module_path!(), |(_crate, rest)| rest);
    let child_test = format!("{module}::scenario_child");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([child_test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario)
        .env(LIB, lib)
        .env_remove("ORT_DYLIB_PATH");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("--- child '{scenario}' ---\n{text}");
    assert!(out.status.success(), "scenario '{scenario}' failed");
    assert!(text.contains("1 passed"), "the child did not run the scenario");
}

#[test]
fn missing_library_named_by_ort_lib() {
    run_child("ort-lib-missing", Path::new("/nonexistent/onnxruntime/libonnxruntime.so.1.31.1"), &[]);
}

#[test]
fn unloadable_library_named_by_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&lib, b"this is not an ELF shared object").unwrap();
    run_child("env-unloadable", &lib, &[("ORT_DYLIB_PATH", lib.to_str().unwrap())]);
}

/// The child side; does nothing unless started by [`run_child`].
#[test]
fn scenario_child() {
    let Ok(scenario) = std::env::var(SCENARIO) else { return };
    let lib = PathBuf::from(std::env::var_os(LIB).unwrap());
    let options = match scenario.as_str() {
        "ort-lib-missing" => EngineOptions { ort_lib: Some(lib.clone()), ..Default::default() },
        "env-unloadable" => EngineOptions::default(),
        other => panic!("unknown scenario {other}"),
    };
    let model = LoadedModel::from_bytes(Path::new("color.onnx"), testkit::color_model(16)).unwrap();

    // Named ORT backends: an error, never a substitute.
    for (choice, backend) in [(BackendChoice::OrtCpu, Backend::OrtCpu), (BackendChoice::Cuda, Backend::Cuda)] {
        let err = match engine::open(&model, choice, &options) {
            Ok((engine, _)) => panic!("{choice:?} opened {} without a usable ONNX Runtime", engine.backend()),
            Err(e) => e,
        };
        let msg = err.to_string();
        println!("{choice:?}: {msg}");
        assert!(matches!(err, EngineError::Unavailable { backend: b, .. } if b == backend), "{msg}");
        assert!(msg.contains(&lib.display().to_string()), "the message names the library: {msg}");
        match scenario.as_str() {
            "ort-lib-missing" => {
                assert!(msg.contains("ONNX Runtime library not found: --ort-lib"), "{msg}");
                assert!(msg.contains("scripts/setup-python.sh"), "{msg}");
            }
            _ => {
                assert!(msg.contains("cannot load the ONNX Runtime library"), "{msg}");
                assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
            }
        }
    }

    // auto: down to tract, with one reason per step.
    let (mut engine, fallbacks) = match engine::open(&model, BackendChoice::Auto, &options) {
        Ok(x) => x,
        Err(e) => panic!("auto failed: {e}"),
    };
    assert_eq!(engine.backend(), Backend::Tract);
    let from: Vec<Backend> = fallbacks.iter().map(|f| f.from).collect();
    assert_eq!(from, [Backend::Cuda, Backend::OrtCpu]);
    for f in &fallbacks {
        println!("auto stepped down from {}: {}", f.from, f.reason);
        assert!(f.reason.contains(&lib.display().to_string()), "{}", f.reason);
    }
    let out = engine.run(ndarray::Array4::<f32>::zeros((2, 3, 16, 16)).view()).unwrap();
    assert_eq!(out.shape(), [2, 3]);
    assert!(engine::ort_backend::loaded_library().is_none());
}
