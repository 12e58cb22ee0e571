//! ONNX Runtime backend (CPU and CUDA), through `ort` with `load-dynamic`.
//!
//! The ONNX Runtime shared library is not linked: it is opened at run time from
//! the first of
//! 1. `--ort-lib PATH` ([`EngineOptions::ort_lib`]);
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. the project's own Python environment, which `scripts/setup-python.sh`
//!    creates: `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*`,
//!    looked for in the current directory, in every ancestor of the running
//!    executable (so `target/release/instrument-detector` finds the repository's
//!    `.venv`), and in the source tree this binary was built from.
//!
//! The wheel ships only the versioned file (`libonnxruntime.so.1.31.1`), so the
//! search matches that and prefers the highest version found.
//!
//! Loading the library and creating the ONNX Runtime environment is global to
//! the process and can happen once: the outcome (the environment, or the reason
//! it failed) is kept, and every later engine reuses it or reports the same reason.

use super::{Backend, Classifier, EngineError, EngineOptions};
use crate::model::LoadedModel;
use ndarray::{Array2, ArrayView4};
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ort::value::{TensorElementType, TensorRef, ValueType};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming the ONNX Runtime library (the same one `ort` itself reads).
pub(crate) const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Where the library lies inside a project root, as a shell glob (for messages).
const VENV_GLOB: &str = ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*";

/// Batch sizes per device: a GPU amortises its launch and transfer costs over
/// many images. On a CPU, batches past 8 buy nothing and cost memory
/// (activations outgrow the caches): BENCHMARKS.md, "Stages", has the
/// per-batch-size rates and peak RSS this choice rests on.
const CUDA_BATCH: usize = 64;
const CPU_BATCH: usize = 8;

/// How the library was found (for messages and the start-up line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    /// `--ort-lib`.
    Flag,
    /// `ORT_DYLIB_PATH`.
    EnvVar,
    /// The project's `.venv`, found by searching.
    Venv,
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibrarySource::Flag => "--ort-lib",
            LibrarySource::EnvVar => ORT_DYLIB_ENV,
            LibrarySource::Venv => "the project's .venv",
        })
    }
}

/// The directories searched for `.venv` when neither `--ort-lib` nor
/// `ORT_DYLIB_PATH` is given: the current directory, every ancestor of the
/// executable, and the source tree the crate was built from. Duplicates removed,
/// order kept.
pub(crate) fn default_search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        let exe = exe.canonicalize().unwrap_or(exe);
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.push(source_root());
    let mut seen = std::collections::HashSet::new();
    roots.retain(|r| seen.insert(r.clone()));
    roots
}

/// The repository this crate was built from (`crates/model` is two levels
/// below it), where `scripts/setup-python.sh` puts the `.venv`.
fn source_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).unwrap_or(manifest).to_path_buf()
}

/// Finds the ONNX Runtime library: `explicit` (`--ort-lib`), then `env_value`
/// (`ORT_DYLIB_PATH`), then a `.venv` under one of `roots`. A path that is given
/// but does not exist is an error of its own (naming a file means that file),
/// not a reason to keep searching.
pub(crate) fn find_library(
    explicit: Option<&Path>,
    env_value: Option<OsString>,
    roots: &[PathBuf],
) -> Result<(PathBuf, LibrarySource), String> {
    const FIX: &str = "run scripts/setup-python.sh to install ONNX Runtime into the project's .venv, \
                       or pass --ort-lib PATH (or set ORT_DYLIB_PATH) to a libonnxruntime.so";
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok((path.to_path_buf(), LibrarySource::Flag))
        } else {
            Err(format!("ONNX Runtime library not found: --ort-lib {} is not a file; {FIX}", path.display()))
        };
    }
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if path.is_file() {
            Ok((path, LibrarySource::EnvVar))
        } else {
            Err(format!("ONNX Runtime library not found: {ORT_DYLIB_ENV}={} is not a file; {FIX}", path.display()))
        };
    }
    for root in roots {
        if let Some(path) = find_in_venv(root) {
            return Ok((path, LibrarySource::Venv));
        }
    }
    let looked: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(format!(
        "ONNX Runtime library not found: no --ort-lib given, {ORT_DYLIB_ENV} is not set, and no {VENV_GLOB} under any of [{}]; {FIX}",
        looked.join(", ")
    ))
}

/// `root/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>`,
/// the highest version if there are several.
fn find_in_venv(root: &Path) -> Option<PathBuf> {
    let lib = root.join(".venv").join("lib");
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for python in std::fs::read_dir(&lib).ok()?.flatten() {
        if !python.file_name().to_string_lossy().starts_with("python3") {
            continue;
        }
        let capi = python.path().join("site-packages").join("onnxruntime").join("capi");
        let Ok(entries) = std::fs::read_dir(&capi) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("libonnxruntime.so.") else { continue };
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            let Some(parts) = parts else { continue };
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            if best.as_ref().is_none_or(|(v, _)| parts > *v) {
                best = Some((parts, path));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// The process-wide ONNX Runtime environment, or why there is none.
struct Runtime {
    env: Environment,
    library: PathBuf,
    source: LibrarySource,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Loads the library and creates the environment on first use; later calls get
/// the same outcome, whatever options they pass (ONNX Runtime can be loaded once
/// per process).
fn runtime(options: &EngineOptions) -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            let (library, source) = find_library(
                options.ort_lib.as_deref(),
                std::env::var_os(ORT_DYLIB_ENV),
                &default_search_roots(),
            )?;
            let builder = ort::init_from(&library).map_err(|e| {
                format!(
                    "cannot load the ONNX Runtime library {} (from {source}): {e}; it must be ONNX Runtime 1.{}.x or newer \
                     for this platform (scripts/setup-python.sh installs a suitable one into .venv)",
                    library.display(),
                    ort::MINOR_VERSION
                )
            })?;
            let env = builder.with_name("instrument-detector").with_telemetry(false).build().map_err(|e| {
                format!("ONNX Runtime loaded from {} but its environment could not be created: {e}", library.display())
            })?;
            tracing::debug!("ONNX Runtime loaded from {} ({source})", library.display());
            Ok(Runtime { env, library, source })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The ONNX Runtime library in use, once an ORT engine has been opened
/// successfully (for the start-up line), with how it was found.
pub fn loaded_library() -> Option<(&'static Path, LibrarySource)> {
    match RUNTIME.get() {
        Some(Ok(rt)) => Some((rt.library.as_path(), rt.source)),
        _ => None,
    }
}

/// One model in one or more ONNX Runtime sessions ("lanes").
///
/// On the CPU the default is one single-threaded session per physical core,
/// and a batch is split across them (each lane runs its rows on its own
/// thread). One session with N intra-op threads splits every *operator*
/// across the cores instead, and each operator ends in a barrier: when a
/// decode thread takes a core for a moment, the other core waits at the
/// barrier. Lanes only meet at the end of the batch, so the decoders that
/// share the machine with inference cost what they use and no more. Measured
/// in BENCHMARKS.md ("lanes"). CUDA uses one lane.
pub(crate) struct OrtClassifier {
    backend: Backend,
    lanes: Vec<Lane>,
    input_name: String,
    output_name: String,
}

struct Lane {
    session: Session,
    /// Computes only the output we read, even if the graph has more.
    run_options: RunOptions<HasSelectedOutputs>,
}

/// How many lanes a CPU session gets: the option, else
/// `INSTRUMENT_DETECTOR_ORT_LANES` if set (1 restores one session with
/// `threads` intra-op threads), else one per thread.
fn cpu_lanes(option: Option<usize>, threads: usize) -> usize {
    option
        .or_else(|| std::env::var("INSTRUMENT_DETECTOR_ORT_LANES").ok().and_then(|v| v.trim().parse::<usize>().ok()))
        .unwrap_or(threads)
        .clamp(1, threads.max(1))
}

impl OrtClassifier {
    /// Opens `model` on ONNX Runtime, on the CPU or (with `cuda`) with the CUDA
    /// execution provider on `options.cuda_device`. Any failure to get the
    /// library, the provider or the device is [`EngineError::Unavailable`] with
    /// ONNX Runtime's own words; a model ORT refuses is [`EngineError::Model`].
    pub fn new(model: &LoadedModel, options: &EngineOptions, cuda: bool) -> Result<Self, EngineError> {
        let backend = if cuda { Backend::Cuda } else { Backend::OrtCpu };
        let unavailable = |reason: String| EngineError::Unavailable { backend, reason };
        let model_err = |reason: String| EngineError::Model { backend, reason };

        let rt = runtime(options).map_err(unavailable)?;
        let threads = options.threads.unwrap_or_else(super::physical_cores).max(1);

        let lanes_n = if cuda { 1 } else { cpu_lanes(options.ort_lanes, threads) };
        let intra = if lanes_n > 1 { 1 } else { threads };
        let open_session = || -> Result<Session, EngineError> {
            let builder = Session::builder(&rt.env)
                .map_err(|e| unavailable(format!("cannot create ONNX Runtime session options: {e}")))?;
            // Optimisation and threading settings are best effort: a minimal ORT
            // build may refuse one, and the session still works without it.
            let mut builder: SessionBuilder = builder
                .with_optimization_level(GraphOptimizationLevel::All)
                .unwrap_or_else(|e| {
                    tracing::debug!("ONNX Runtime refused full graph optimisation: {e}");
                    e.recover()
                })
                .with_intra_threads(intra)
                .unwrap_or_else(|e| {
                    tracing::debug!("ONNX Runtime refused {intra} intra-op threads: {e}");
                    e.recover()
                })
                .with_inter_threads(1)
                .unwrap_or_else(|e| e.recover());
            if cuda {
                let provider = ort::ep::CUDA::default().with_device_id(options.cuda_device).build().error_on_failure();
                builder = builder.with_execution_providers([provider]).map_err(|e| {
                    unavailable(format!(
                        "the CUDA execution provider (device {}) could not be registered: {e} \
                         (CUDA needs the onnxruntime-gpu==1.31.1 wheel, CUDA 13 and cuDNN 9: \
                         ORT_PACKAGE=onnxruntime-gpu scripts/setup-python.sh)",
                        options.cuda_device
                    ))
                })?;
            }
            builder.commit_from_memory(&model.bytes).map_err(|e| {
                if cuda {
                    // With CUDA registered, a failure here is nearly always the
                    // device or its libraries (no device, driver, cuDNN); the CPU
                    // attempt that follows in `auto` reports genuine model errors.
                    unavailable(format!(
                        "ONNX Runtime could not create a session with the CUDA execution provider (device {}): {e}",
                        options.cuda_device
                    ))
                } else {
                    model_err(format!("ONNX Runtime refused the model: {e}"))
                }
            })
        };
        let first = open_session()?;
        let (input_name, output_name) = check_io(&first).map_err(model_err)?;
        let mut sessions = vec![first];
        for _ in 1..lanes_n {
            sessions.push(open_session()?);
        }
        let lanes = sessions
            .into_iter()
            .map(|session| {
                let run_options = RunOptions::new()
                    .map_err(|e| unavailable(format!("cannot create ONNX Runtime run options: {e}")))?
                    .with_outputs(OutputSelector::no_default().with(output_name.clone()));
                Ok(Lane { session, run_options })
            })
            .collect::<Result<Vec<Lane>, EngineError>>()?;
        tracing::debug!(
            "{backend}: ONNX Runtime ready (input '{input_name}', output '{output_name}', {lanes_n} session(s) of {intra} intra-op thread(s))"
        );
        Ok(OrtClassifier { backend, lanes, input_name, output_name })
    }
}

/// The input must be one float tensor of rank 4 (NCHW, 3 channels where the
/// graph says); the first output must be a float tensor. Returns their names.
fn check_io(session: &Session) -> Result<(String, String), String> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
        return Err(format!("expected exactly one input, ONNX Runtime sees {}: {names:?}", inputs.len()));
    }
    let input = &inputs[0];
    match input.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => {
            if shape.len() != 4 {
                return Err(format!(
                    "input '{}' must be rank 4 (NCHW), ONNX Runtime sees {}",
                    input.name(),
                    input.dtype()
                ));
            }
            if shape[1] > 0 && shape[1] != 3 {
                return Err(format!(
                    "input '{}' must have 3 channels in axis 1, ONNX Runtime sees {}",
                    input.name(),
                    input.dtype()
                ));
            }
        }
        other => return Err(format!("input '{}' must be a float32 tensor, ONNX Runtime sees {other}", input.name())),
    }
    let output = session.outputs().first().ok_or_else(|| "the model has no output".to_string())?;
    match output.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, .. } => {}
        other => return Err(format!("output '{}' must be a float32 tensor, ONNX Runtime sees {other}", output.name())),
    }
    Ok((input.name().to_string(), output.name().to_string()))
}

impl Classifier for OrtClassifier {
    fn split(self: Box<Self>) -> Vec<Box<dyn Classifier>> {
        let OrtClassifier { backend, lanes, input_name, output_name } = *self;
        lanes
            .into_iter()
            .map(|lane| {
                Box::new(OrtClassifier {
                    backend,
                    lanes: vec![lane],
                    input_name: input_name.clone(),
                    output_name: output_name.clone(),
                }) as Box<dyn Classifier>
            })
            .collect()
    }

    fn backend(&self) -> Backend {
        self.backend
    }

    fn preferred_batch(&self) -> usize {
        match self.backend {
            Backend::Cuda => CUDA_BATCH,
            _ => CPU_BATCH,
        }
    }

    fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        let backend = self.backend;
        let rows = batch.shape()[0];
        let lanes = self.lanes.len().min(rows).max(1);
        if lanes == 1 {
            return run_lane(&mut self.lanes[0], backend, &self.input_name, &self.output_name, batch);
        }
        // Contiguous row ranges, one per lane; the first runs on this thread.
        let per = rows.div_ceil(lanes);
        let (input_name, output_name) = (self.input_name.as_str(), self.output_name.as_str());
        let results: Vec<Result<Array2<f32>, EngineError>> = std::thread::scope(|scope| {
            let mut parts = self.lanes.iter_mut().take(lanes).enumerate().map(|(i, lane)| {
                let (start, end) = ((i * per).min(rows), ((i + 1) * per).min(rows));
                (lane, batch.slice(ndarray::s![start..end, .., .., ..]))
            });
            let (lane0, view0) = parts.next().expect("at least one lane");
            let handles: Vec<_> = parts
                .filter(|(_, v)| v.shape()[0] > 0)
                .map(|(lane, view)| scope.spawn(move || run_lane(lane, backend, input_name, output_name, view)))
                .collect();
            let mut out = vec![run_lane(lane0, backend, input_name, output_name, view0)];
            for h in handles {
                out.push(h.join().unwrap_or_else(|_| {
                    Err(EngineError::Inference { backend, reason: "an inference thread panicked".into() })
                }));
            }
            out
        });
        let parts = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| EngineError::Inference { backend, reason: format!("joining the lanes' outputs: {e}") })
    }
}

/// Runs one batch (or one lane's rows of it) through one session.
fn run_lane(
    lane: &mut Lane,
    backend: Backend,
    input_name: &str,
    output_name: &str,
    batch: ArrayView4<'_, f32>,
) -> Result<Array2<f32>, EngineError> {
    let err = |reason: String| EngineError::Inference { backend, reason };
    let rows = batch.shape()[0];
    // A standard-layout view is handed to ONNX Runtime as it is (no copy);
    // anything else is made contiguous once.
    let contiguous = batch.as_standard_layout();
    let input =
        TensorRef::from_array_view(contiguous.view()).map_err(|e| err(format!("cannot wrap the batch: {e}")))?;
    let outputs = lane
        .session
        .run_with_options(ort::inputs![input_name => input], &lane.run_options)
        .map_err(|e| err(e.to_string()))?;
    let value =
        outputs.get(output_name).ok_or_else(|| err(format!("ONNX Runtime returned no '{output_name}' output")))?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| err(format!("output '{output_name}': {e}")))?;
    let dims: Vec<i64> = shape.iter().copied().collect();
    if dims.first().copied() != Some(rows as i64) {
        return Err(err(format!("a batch of {rows} produced output shape {dims:?}")));
    }
    let cols = data.len().checked_div(rows).unwrap_or_else(|| dims.iter().skip(1).product::<i64>().max(0) as usize);
    Array2::from_shape_vec((rows, cols), data.to_vec()).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_venv(root: &Path, python: &str, versions: &[&str]) -> PathBuf {
        let capi = root.join(".venv/lib").join(python).join("site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        for v in versions {
            std::fs::write(capi.join(format!("libonnxruntime.so.{v}")), b"not really a library").unwrap();
        }
        capi
    }

    #[test]
    fn explicit_path_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let capi = fake_venv(dir.path(), "python3.11", &["1.31.1"]);
        let lib = capi.join("libonnxruntime.so.1.31.1");
        let roots = [dir.path().to_path_buf()];
        // --ort-lib beats ORT_DYLIB_PATH and the venv.
        let (found, source) = find_library(Some(&lib), Some("/elsewhere/lib.so".into()), &roots).unwrap();
        assert_eq!((found, source), (lib.clone(), LibrarySource::Flag));
        // A named file that is missing is an error, not a reason to search on.
        let missing = dir.path().join("nope/libonnxruntime.so.1.31.1");
        let err = find_library(Some(&missing), None, &roots).unwrap_err();
        assert!(err.contains("--ort-lib") && err.contains("nope/libonnxruntime.so.1.31.1"), "{err}");
        assert!(err.contains("scripts/setup-python.sh"), "{err}");
    }

    #[test]
    fn env_var_comes_second() {
        let dir = tempfile::tempdir().unwrap();
        let capi = fake_venv(dir.path(), "python3.12", &["1.31.1"]);
        let lib = capi.join("libonnxruntime.so.1.31.1");
        let roots = [PathBuf::from("/nonexistent-root")];
        let (found, source) = find_library(None, Some(lib.clone().into_os_string()), &roots).unwrap();
        assert_eq!((found, source), (lib, LibrarySource::EnvVar));
        let err = find_library(None, Some("/no/such/libonnxruntime.so".into()), &roots).unwrap_err();
        assert!(err.contains("ORT_DYLIB_PATH=/no/such/libonnxruntime.so"), "{err}");
        // An empty variable counts as unset.
        let err = find_library(None, Some("".into()), &roots).unwrap_err();
        assert!(err.contains("ORT_DYLIB_PATH is not set"), "{err}");
    }

    #[test]
    fn venv_search_takes_the_first_root_and_the_highest_version() {
        let empty = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let capi = fake_venv(dir.path(), "python3.11", &["1.30.0", "1.31.1", "1.9.9"]);
        // Files that merely look similar are ignored.
        std::fs::write(capi.join("libonnxruntime.so.1.99.0.dbg"), b"").unwrap();
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        let roots = [empty.path().to_path_buf(), dir.path().to_path_buf()];
        let (found, source) = find_library(None, None, &roots).unwrap();
        assert_eq!(found, capi.join("libonnxruntime.so.1.31.1"));
        assert_eq!(source, LibrarySource::Venv);
    }

    #[test]
    fn nothing_found_says_where_it_looked_and_how_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().to_path_buf()];
        let err = find_library(None, None, &roots).unwrap_err();
        assert!(err.starts_with("ONNX Runtime library not found"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains(VENV_GLOB), "{err}");
        assert!(
            err.contains("scripts/setup-python.sh") && err.contains("--ort-lib") && err.contains("ORT_DYLIB_PATH"),
            "{err}"
        );
    }

    #[test]
    fn default_roots_include_cwd_and_the_source_tree() {
        let roots = default_search_roots();
        assert_eq!(roots.first(), std::env::current_dir().ok().as_ref());
        assert!(roots.contains(&source_root()));
        assert!(source_root().join("Cargo.toml").is_file() && source_root().join("crates/model").is_dir());
    }
}
