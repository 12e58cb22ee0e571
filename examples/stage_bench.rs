//! One pipeline stage, timed image by image (or batch by batch), in a process
//! of its own so that its peak RSS is the stage's own. Prints one JSON line:
//! images/s, latency percentiles and peak RSS. `scripts/bench.sh` runs it on
//! every image set and backend; criterion (`benches/`) gives the confidence
//! intervals, this gives the distribution and the memory.
//!
//!     stage_bench decode MODEL DIR [--limit N]
//!         read each file into memory, then time bytes -> tensor (decode,
//!         resize, normalise) per image, one thread, with the model's
//!         preprocessing
//!     stage_bench infer MODEL --backend ort-cpu|tract|cuda --batch N [--iters N]
//!         time the engine per batch on fixed input in the normalised range

use instrument_detector::batch::expand_paths;
use instrument_model::engine::{self, BackendChoice, EngineOptions};
use instrument_model::model::LoadedModel;
use instrument_model::preprocess::{DecodeLimits, preprocess_bytes};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "usage: stage_bench decode MODEL DIR [--limit N] | stage_bench infer MODEL --backend B --batch N [--iters N]"
            );
            ExitCode::from(2)
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize, String> {
    match flag(args, name) {
        Some(v) => v.parse().map_err(|_| format!("{name} wants a number, got {v:?}")),
        None => Ok(default),
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let (Some(stage), Some(model)) = (args.first(), args.get(1)) else {
        return Err("a stage and a model are needed".into());
    };
    let model = LoadedModel::load(Path::new(model)).map_err(|e| e.to_string())?;
    match stage.as_str() {
        "decode" => {
            let dir = args.get(2).ok_or("decode needs a folder")?;
            decode(&model, Path::new(dir), number(args, "--limit", 0)?)
        }
        "infer" => {
            let backend = match flag(args, "--backend").as_deref() {
                Some("ort-cpu") | None => BackendChoice::OrtCpu,
                Some("tract") => BackendChoice::Tract,
                Some("cuda") => BackendChoice::Cuda,
                Some(other) => return Err(format!("unknown backend {other:?}")),
            };
            infer(&model, backend, number(args, "--batch", 8)?.max(1), number(args, "--iters", 0)?)
        }
        other => Err(format!("unknown stage {other:?}")),
    }
}

fn decode(model: &LoadedModel, dir: &Path, limit: usize) -> Result<String, String> {
    let mut paths = expand_paths(&[dir.to_path_buf()]).map_err(|e| e.to_string())?;
    if paths.is_empty() {
        return Err(format!("no files under {}", dir.display()));
    }
    if limit > 0 {
        paths.truncate(limit);
    }
    let spec = &model.spec.preprocess;
    let limits = DecodeLimits::default();
    let mut out = vec![0.0f32; spec.tensor_len()];
    let (mut times, mut bytes_total, mut failed) = (Vec::with_capacity(paths.len()), 0u64, 0usize);
    // One untimed image first, so the first timing is not the page-in of the code.
    if let Ok(b) = std::fs::read(&paths[0]) {
        let _ = preprocess_bytes(&b, spec, &limits, &mut out);
    }
    let started = Instant::now();
    for p in &paths {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        bytes_total += bytes.len() as u64;
        let t = Instant::now();
        let ok = preprocess_bytes(&bytes, spec, &limits, &mut out).is_ok();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        failed += usize::from(!ok);
    }
    let wall = started.elapsed().as_secs_f64();
    let busy: f64 = times.iter().sum::<f64>() / 1e3;
    Ok(format!(
        "{{\"stage\": \"decode\", \"folder\": {:?}, \"images\": {}, \"failed\": {failed}, \"mean_file_kb\": {:.0}, \"images_per_s\": {:.1}, {}, \"wall_s_with_reads\": {wall:.3}, \"peak_rss_kb\": {}}}",
        dir.display().to_string(),
        times.len(),
        bytes_total as f64 / 1024.0 / times.len() as f64,
        times.len() as f64 / busy,
        percentiles(&mut times),
        peak_rss_kb()
    ))
}

fn infer(model: &LoadedModel, backend: BackendChoice, batch: usize, iters: usize) -> Result<String, String> {
    let (mut clf, _) = engine::open(model, backend, &EngineOptions::default()).map_err(|e| e.to_string())?;
    let size = model.spec.preprocess.size as usize;
    // Values in the normalised range, not zeros (zeros can take fast paths).
    let input = ndarray::Array4::<f32>::from_shape_fn((batch, 3, size, size), |(i, c, y, x)| {
        (((i * 7 + c * 13 + y * 3 + x * 5) % 255) as f32 / 127.5) - 1.0
    });
    let run = |clf: &mut Box<dyn engine::Classifier>| -> Result<f64, String> {
        let t = Instant::now();
        clf.run(input.view()).map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let first = run(&mut clf)?;
    // Enough batches for about 5 s (at least 5), unless told.
    let iters = if iters > 0 { iters } else { ((5000.0 / first.max(0.1)) as usize).clamp(5, 400) };
    let _ = run(&mut clf)?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        times.push(run(&mut clf)?);
    }
    let busy: f64 = times.iter().sum::<f64>() / 1e3;
    Ok(format!(
        "{{\"stage\": \"infer\", \"backend\": \"{}\", \"batch\": {batch}, \"batches\": {iters}, \"first_batch_ms\": {first:.2}, \"images_per_s\": {:.1}, {}, \"peak_rss_kb\": {}}}",
        clf.backend(),
        (iters * batch) as f64 / busy,
        percentiles(&mut times),
        peak_rss_kb()
    ))
}

/// `"p50_ms": .., "p90_ms": .., "p99_ms": .., "max_ms": ..` (nearest rank).
fn percentiles(times: &mut [f64]) -> String {
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    format!(
        "\"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}",
        at(0.50),
        at(0.90),
        at(0.99),
        times[times.len() - 1]
    )
}

/// Peak resident set of this process (VmHWM), in kB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
