//! instrument-detector: watch a folder of photos, say which musical instrument
//! each one shows, and keep the answers in SQLite.
//!
//! The map of the code is in `ARCHITECTURE.md`. In short:
//! - [`preprocess`]: bytes to a normalised tensor (the one preprocessing path);
//! - [`model`]: the self-describing ONNX model file and its metadata;
//! - [`engine`]: ONNX Runtime (CUDA, CPU) and tract behind one trait;
//! - [`onnx`]: a small ONNX graph writer (tests, training export, quantisation).

pub mod batch;
pub mod daemon;
pub mod engine;
pub mod model;
pub mod onnx;
pub mod open_world;
pub mod output;
pub mod predict;
pub mod preprocess;
pub mod quantize;
pub mod report;
pub mod store;
pub mod testkit;
