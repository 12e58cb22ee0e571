//! instrument-detector: watch a folder of photos, say which musical instrument
//! each one shows, and keep the answers in SQLite.
//!
//! The map of the code is in `ARCHITECTURE.md`. The model contract
//! (preprocessing, the model file, the engines, top-k, calibration, the ONNX
//! writer and quantisation) is the `instrument-model` crate (`crates/model`),
//! re-exported here under its old paths. This crate adds:
//! - [`daemon`][]: watching, the pipeline, metrics;
//! - [`store`][]: SQLite;
//! - [`batch`][], [`output`][], [`report`][]: one-shot classification and its output;
//! - [`retrain`][], [`reclassify`][]: a library's model retrained on its
//!   corrections, where it lives, and the library redone with it.

pub use instrument_model::{calibration, engine, model, onnx, open_world, predict, preprocess, quantize};

pub mod batch;
pub mod daemon;
pub mod output;
pub mod reclassify;
pub mod report;
pub mod retrain;
pub mod store;
pub mod thumbnail;
pub mod web;
