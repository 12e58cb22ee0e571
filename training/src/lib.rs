//! The `training` crate: trains the instrument classifier with `tch` (libtorch)
//! and exports it to the self-describing ONNX file the daemon loads.
//!
//! - [`data`]: the dataset (image folders or the CSV), augmentation and the
//!   parallel, bounded loader. Decoding and resizing are the daemon's own
//!   [`instrument_model::preprocess`] functions, never a copy.
//! - [`nets`]: EfficientNet-Lite0/1/2 and ResNet50 in tch, with the ImageNet weight
//!   names of their reference implementations, and their ONNX emitters.
//! - [`weights`]: pretrained loading that checks every name and shape;
//!   checkpoints.
//! - [`export`]: ONNX export plus the tch-vs-tract parity check.
//! - [`imagenet`]: what the backbone's ImageNet head knows of our labels, and
//!   the product of experts and "no instrument" rule built on it.
//! - [`train`]: the training loop; [`eval`]: metrics, hard validation,
//!   calibration; [`plot`]: the PNGs of the run folder.

pub mod crossfit;
pub mod data;
pub mod eval;
pub mod evaluate;
pub mod export;
pub mod imagenet;
pub mod nets;
pub mod plot;
pub mod rng;
pub mod train;
pub mod weights;
