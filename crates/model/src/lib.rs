//! instrument-model: the model contract of instrument-detector.
//!
//! Everything a photo goes through between its bytes and a ranked list of
//! labels, and nothing else (no SQLite, no daemon, no training):
//! - [`preprocess`]: bytes to a normalised tensor (the one preprocessing path);
//! - [`formats`]: HEIC, AVIF, JPEG XL and camera RAW, which preprocess hands on;
//! - [`model`]: the self-describing ONNX model file and its metadata;
//! - [`open_world`]: the appended ImageNet head and the `none` verdict;
//! - [`engine`]: ONNX Runtime (CUDA, CPU) and tract behind one trait;
//! - [`predict`]: raw outputs to the verdict and the top k;
//! - [`calibration`]: expected calibration error;
//! - [`onnx`]: a small ONNX graph writer (tests, training export, quantisation);
//! - [`quantize`]: static INT8 quantisation in QDQ form;
//! - [`retrain`]: a new head fitted on a person's corrections, in seconds.
//!
//! Feature `onnx` (default) gates everything that reads, writes or runs ONNX;
//! feature `testkit` adds tiny generated models and images for tests.

pub mod calibration;
#[cfg(feature = "onnx")]
pub mod engine;
pub mod formats;
#[cfg(feature = "onnx")]
pub mod model;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "onnx")]
pub mod open_world;
#[cfg(feature = "onnx")]
pub mod predict;
pub mod preprocess;
#[cfg(feature = "onnx")]
pub mod quantize;
#[cfg(feature = "onnx")]
pub mod retrain;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
