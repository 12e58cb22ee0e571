//! Inference per batch per backend (ONNX Runtime CPU, tract) on a real model.
//!
//!     BENCH_MODEL=models/instrument-lite2.onnx cargo bench --bench inference
//!
//! `BENCH_MODEL` defaults to the shipped model; `BENCH_BACKENDS` (comma list of
//! `ort-cpu`, `tract`, `cuda`) defaults to `ort-cpu,tract`; `BENCH_BATCHES`
//! defaults to `1,8,16`. A backend that cannot open is skipped with its reason.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use instrument_model::engine::{self, BackendChoice, EngineOptions};
use instrument_model::model::LoadedModel;
use std::path::PathBuf;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let path = std::env::var_os("BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/instrument-lite2.onnx"));
    let model = match LoadedModel::load(&path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("inference bench skipped: {e} (set BENCH_MODEL)");
            return;
        }
    };
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "ort-cpu,tract".into());
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| "1,8,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let size = model.spec.preprocess.size as usize;
    let mut g = c.benchmark_group(format!("inference/{}", model.name()));
    g.sample_size(10).measurement_time(Duration::from_secs(6)).warm_up_time(Duration::from_secs(1));
    for name in backends.split(',') {
        let choice = match name.trim() {
            "ort-cpu" => BackendChoice::OrtCpu,
            "tract" => BackendChoice::Tract,
            "cuda" => BackendChoice::Cuda,
            other => {
                eprintln!("unknown backend {other}");
                continue;
            }
        };
        let mut clf = match engine::open(&model, choice, &EngineOptions::default()) {
            Ok((clf, _)) => clf,
            Err(e) => {
                eprintln!("backend {name} skipped: {e}");
                continue;
            }
        };
        for &n in &batches {
            // Values in the model's normalised range, not zeros (zeros can take fast paths).
            let input = ndarray::Array4::<f32>::from_shape_fn((n, 3, size, size), |(i, c, y, x)| {
                (((i * 7 + c * 13 + y * 3 + x * 5) % 255) as f32 / 127.5) - 1.0
            });
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{}/batch{n}", name.trim()), |b| {
                b.iter(|| clf.run(input.view()).expect("inference runs"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
