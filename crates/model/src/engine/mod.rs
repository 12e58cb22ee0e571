//! Inference engines behind one trait.
//!
//! A [`Classifier`] takes an NCHW float batch and returns one row of raw model
//! output per image. Backends: ONNX Runtime with CUDA, ONNX Runtime on the CPU,
//! and `tract` (pure Rust) as the last resort. [`open`] picks one per
//! [`BackendChoice`]: `auto` walks down the list and says why at each step; a
//! named backend is that backend or an error, never a quiet substitute.
//!
//! Every engine is checked when it is opened, not at the first photo: one dry
//! run on two zero images must return one row per image, as wide as the model
//! declares; and on every batch after that (see `Checked`).

pub mod ort_backend;
pub(crate) mod tract_backend;
pub mod triton;

use crate::model::LoadedModel;
use ndarray::{Array2, ArrayView4};
use std::fmt;
use std::path::PathBuf;

/// The backend actually running a model; stored with every prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Cuda,
    OrtCpu,
    Tract,
    /// A Triton Inference Server, over the network.
    Triton,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cuda => "cuda",
            Backend::OrtCpu => "ort-cpu",
            Backend::Tract => "tract",
            Backend::Triton => "triton",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// CUDA if it works, else ONNX Runtime on the CPU, else tract; each step down is logged.
    Auto,
    /// ONNX Runtime with the CUDA execution provider, or an error.
    Cuda,
    /// ONNX Runtime on the CPU, or an error.
    OrtCpu,
    /// tract, the pure-Rust engine (slower, always available).
    Tract,
    /// A Triton Inference Server (`--triton-url`, `--triton-model`), or an
    /// error; never chosen by `auto`.
    Triton,
}

/// Settings shared by the backends.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Intra-op threads; `None` means the number of physical cores.
    pub threads: Option<usize>,
    /// Explicit path to `libonnxruntime.so` (`--ort-lib`).
    pub ort_lib: Option<PathBuf>,
    /// CUDA device ordinal.
    pub cuda_device: i32,
    /// ONNX Runtime CPU sessions a batch is split across (see
    /// `ort_backend::OrtClassifier`); `None`: `INSTRUMENT_DETECTOR_ORT_LANES`
    /// if set, else one per thread. 1 is one session with `threads` threads.
    pub ort_lanes: Option<usize>,
    /// The server for `--backend triton`.
    pub triton: Option<triton::TritonTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable { backend: Backend, reason: String },
    #[error("{backend} cannot run this model: {reason}")]
    Model { backend: Backend, reason: String },
    #[error("{backend} inference failed: {reason}")]
    Inference { backend: Backend, reason: String },
    /// A server that did not answer: the batch is not at fault, and may be
    /// sent again once it is back.
    #[error("{backend} server unreachable: {reason}")]
    Unreachable { backend: Backend, reason: String },
}

/// One loaded model on one backend.
pub trait Classifier: Send {
    fn backend(&self) -> Backend;

    /// A good batch size for this backend (a GPU wants more than a CPU).
    fn preferred_batch(&self) -> usize;

    /// Runs a batch `[n, 3, size, size]` and returns `[n, labels]` raw outputs.
    fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError>;

    /// Splits into classifiers that run independently, each on its own thread
    /// (ONNX Runtime's CPU lanes: one per core); a backend that is one piece
    /// returns itself. The daemon gives each piece its own batcher, so no
    /// core waits for another at the end of a batch.
    fn split(self: Box<Self>) -> Vec<Box<dyn Classifier>>;
}

/// Physical cores, which is what inference threads should match (SMT siblings
/// share the vector units a convolution saturates).
pub(crate) fn physical_cores() -> usize {
    // Count distinct (package, core) pairs from sysfs; fall back to logical CPUs.
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut seen = std::collections::HashSet::new();
    for cpu in 0..logical {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let pkg = std::fs::read_to_string(format!("{base}/physical_package_id"));
        let core = std::fs::read_to_string(format!("{base}/core_id"));
        match (pkg, core) {
            (Ok(p), Ok(c)) => {
                seen.insert((p.trim().to_string(), c.trim().to_string()));
            }
            _ => return logical,
        }
    }
    seen.len().clamp(1, logical)
}

/// Whether the machine has an NVIDIA GPU the driver knows of (its device
/// nodes or the driver's proc entry), whether or not CUDA works on it.
fn gpu_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/gpus").is_dir() || std::path::Path::new("/dev/nvidia0").exists()
}

/// A short note of why `auto` stepped down from a backend.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub from: Backend,
    pub reason: String,
}

/// Opens a model on the chosen backend. For `auto`, the steps taken down the
/// chain are returned (and logged once at warn) so callers can report them.
pub fn open(
    model: &LoadedModel,
    choice: BackendChoice,
    options: &EngineOptions,
) -> Result<(Box<dyn Classifier>, Vec<Fallback>), EngineError> {
    let order: &[Backend] = match choice {
        BackendChoice::Auto => &[Backend::Cuda, Backend::OrtCpu, Backend::Tract],
        BackendChoice::Cuda => &[Backend::Cuda],
        BackendChoice::OrtCpu => &[Backend::OrtCpu],
        BackendChoice::Tract => &[Backend::Tract],
        BackendChoice::Triton => &[Backend::Triton],
    };
    let mut fallbacks = Vec::new();
    let mut last_err = None;
    for &backend in order {
        let attempt = open_one(model, backend, options).and_then(|engine| {
            let mut checked = Checked::new(engine, model);
            checked.dry_run(model.spec.preprocess.size as usize)?;
            Ok(checked)
        });
        match attempt {
            Ok(checked) => return Ok((Box::new(checked), fallbacks)),
            Err(e) => {
                if choice == BackendChoice::Auto && backend != Backend::Tract {
                    // No GPU at all is the expected case on most machines: say
                    // it once, quietly. A GPU that is there but unusable is news.
                    if backend == Backend::Cuda && !gpu_present() {
                        tracing::info!("no NVIDIA GPU on this machine, so no CUDA: using the CPU");
                    } else {
                        tracing::warn!("backend {backend} not used, trying the next one: {e}");
                    }
                    fallbacks.push(Fallback { from: backend, reason: e.to_string() });
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("at least one backend was tried"))
}

/// Every opened engine, checked on every batch: one row per image, as wide as
/// the model declares. A model that collapses the batch axis (or a backend
/// that returns the wrong shape) is an inference error for that batch, so its
/// files get error rows; without the check the callers' row indexing would
/// panic and take a pipeline stage down with it.
struct Checked {
    inner: Box<dyn Classifier>,
    width: usize,
    /// What a row holds, for the message.
    row: &'static str,
}

impl Checked {
    fn new(inner: Box<dyn Classifier>, model: &LoadedModel) -> Checked {
        let row = if model.spec.open_world.is_some() {
            "one score per label, then the ImageNet logits"
        } else {
            "one score per label"
        };
        Checked { inner, width: model.spec.output_width(), row }
    }

    /// Why `out` is not the answer to a batch of `rows` images, if it is not.
    fn shape_problem(&self, rows: usize, out: &Array2<f32>) -> Option<String> {
        (out.shape() != [rows, self.width]).then(|| {
            format!(
                "a batch of {rows} produced output shape {:?}, expected [{rows}, {}] (one row per image, {})",
                out.shape(),
                self.width,
                self.row
            )
        })
    }

    /// One run at start-up on zero images, so a model whose output does not
    /// fit its labels is refused with a clear reason before the first photo.
    /// The batch is 2, not 1: a graph that collapses the batch axis passes a
    /// batch of 1.
    fn dry_run(&mut self, size: usize) -> Result<(), EngineError> {
        let zeros = ndarray::Array4::<f32>::zeros((2, 3, size, size));
        let out = self.inner.run(zeros.view())?;
        match self.shape_problem(2, &out) {
            Some(reason) => Err(EngineError::Model { backend: self.inner.backend(), reason }),
            None => Ok(()),
        }
    }
}

impl Classifier for Checked {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn preferred_batch(&self) -> usize {
        self.inner.preferred_batch()
    }

    fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        let rows = batch.shape()[0];
        let out = self.inner.run(batch)?;
        match self.shape_problem(rows, &out) {
            Some(reason) => Err(EngineError::Inference { backend: self.inner.backend(), reason }),
            None => Ok(out),
        }
    }

    fn split(self: Box<Self>) -> Vec<Box<dyn Classifier>> {
        let (width, row) = (self.width, self.row);
        self.inner
            .split()
            .into_iter()
            .map(|inner| Box::new(Checked { inner, width, row }) as Box<dyn Classifier>)
            .collect()
    }
}

fn open_one(
    model: &LoadedModel,
    backend: Backend,
    options: &EngineOptions,
) -> Result<Box<dyn Classifier>, EngineError> {
    match backend {
        Backend::Tract => Ok(Box::new(tract_backend::TractClassifier::new(model, options)?)),
        Backend::OrtCpu => Ok(Box::new(ort_backend::OrtClassifier::new(model, options, false)?)),
        Backend::Cuda => Ok(Box::new(ort_backend::OrtClassifier::new(model, options, true)?)),
        Backend::Triton => match &options.triton {
            Some(target) => Ok(Box::new(triton::TritonClassifier::new(model, target)?)),
            None => Err(EngineError::Unavailable {
                backend: Backend::Triton,
                reason: "--backend triton needs --triton-url (the server's HTTP address, e.g. http://127.0.0.1:8000)"
                    .into(),
            }),
        },
    }
}
