//! The self-describing model file.
//!
//! Labels (in output order), input size, normalisation and resize mode travel
//! inside the ONNX file's `metadata_props`, written by the `training` binary and
//! read here. The daemon, `classify`, `evaluate` and training all take their
//! preprocessing from this one place, so a model and the code feeding it cannot
//! drift apart.

use crate::onnx::{self, ModelProto, dtype};
use crate::open_world::OpenWorld;
use crate::preprocess::{PreprocessSpec, ResizeMode};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Metadata keys. Values are plain strings; lists are JSON arrays.
pub mod keys {
    /// JSON array of label names, in the order of the output's last axis.
    pub const LABELS: &str = "labels";
    /// Square input side in pixels, e.g. `224`.
    pub const INPUT_SIZE: &str = "input_size";
    /// JSON array of 3 per-channel means, on the 0..1 pixel scale.
    pub const MEAN: &str = "mean";
    /// JSON array of 3 per-channel standard deviations, on the 0..1 scale.
    pub const STD: &str = "std";
    /// `stretch` (resize the whole photo to a square) or `center_crop`.
    pub const RESIZE: &str = "resize";
    /// `logits` (softmax applied by us) or `probabilities`.
    pub const OUTPUT: &str = "output";
    /// Softmax temperature fitted for calibration (logits / T). Default 1.
    pub const TEMPERATURE: &str = "temperature";
    pub const ARCHITECTURE: &str = "architecture";
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ONNX model (protobuf decoding failed: {source})")]
    NotOnnx { path: PathBuf, source: prost::DecodeError },
    #[error("model {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// What the model outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Logits,
    Probabilities,
}

/// Everything the daemon needs to know about a model, read from its metadata
/// ([`ModelSpec::from_metadata`]) and written into it ([`ModelSpec::to_metadata`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub labels: Vec<String>,
    pub preprocess: PreprocessSpec,
    pub output: OutputKind,
    pub temperature: f32,
    /// The appended ImageNet head and the "no instrument" rule, when the model has them.
    pub open_world: Option<OpenWorld>,
    /// Every metadata entry of the file, those beyond the contract
    /// (architecture, dataset, accuracy, ...) included.
    pub metadata: BTreeMap<String, String>,
}

/// One row of model output, interpreted.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// One probability per label.
    pub probabilities: Vec<f32>,
    /// `Some(confidence)` when the photo shows none of the labels
    /// (only for a model with an [`OpenWorld`] description).
    pub none: Option<f32>,
}

impl ModelSpec {
    /// A spec for a new model: `labels` in output order, fed as `preprocess`
    /// says; logits out, temperature 1, no open world, no other metadata.
    pub fn new(labels: Vec<String>, preprocess: PreprocessSpec) -> ModelSpec {
        ModelSpec {
            labels,
            preprocess,
            output: OutputKind::Logits,
            temperature: 1.0,
            open_world: None,
            metadata: BTreeMap::new(),
        }
    }

    /// The metadata map [`from_metadata`](Self::from_metadata) reads this spec
    /// back from: [`metadata`](Self::metadata) with every key of the contract
    /// written from the typed fields over it (`open_world` removed when there
    /// is none). The one writer of the contract: the trainer's export, the
    /// test models and the examples all go through it.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let json = |v: &[f32]| serde_json::to_string(v).expect("floats serialise");
        let mut meta = self.metadata.clone();
        let mut put = |key: &str, value: String| meta.insert(key.to_string(), value);
        put(keys::LABELS, serde_json::to_string(&self.labels).expect("labels serialise"));
        put(keys::INPUT_SIZE, self.preprocess.size.to_string());
        put(keys::MEAN, json(&self.preprocess.mean));
        put(keys::STD, json(&self.preprocess.std));
        let resize = match self.preprocess.resize {
            ResizeMode::Stretch => "stretch",
            ResizeMode::CenterCrop => "center_crop",
        };
        put(keys::RESIZE, resize.into());
        let output = match self.output {
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        };
        put(keys::OUTPUT, output.into());
        put(keys::TEMPERATURE, self.temperature.to_string());
        match &self.open_world {
            Some(ow) => meta.insert(crate::open_world::KEY.to_string(), ow.to_metadata()),
            None => meta.remove(crate::open_world::KEY),
        };
        meta
    }

    /// Parses the metadata map. Missing labels or input size are errors;
    /// normalisation defaults to ImageNet's, as torchvision models expect.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Result<ModelSpec, String> {
        let labels_raw = meta.get(keys::LABELS).ok_or_else(|| {
            format!(
                "metadata has no '{}' entry (a JSON array of class names); was it exported by `training`?",
                keys::LABELS
            )
        })?;
        let labels: Vec<String> = serde_json::from_str(labels_raw)
            .map_err(|e| format!("metadata '{}' is not a JSON array of strings: {e}", keys::LABELS))?;
        if labels.is_empty() {
            return Err("metadata 'labels' is empty".into());
        }
        let size: u32 = meta
            .get(keys::INPUT_SIZE)
            .ok_or_else(|| format!("metadata has no '{}' entry", keys::INPUT_SIZE))?
            .trim()
            .parse()
            .map_err(|e| format!("metadata '{}' is not a positive integer: {e}", keys::INPUT_SIZE))?;
        if !(8..=4096).contains(&size) {
            return Err(format!("input size {size} is outside 8..=4096"));
        }
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], String> {
            match meta.get(key) {
                None => Ok(default),
                Some(raw) => {
                    let v: Vec<f32> = serde_json::from_str(raw)
                        .map_err(|e| format!("metadata '{key}' is not a JSON array of 3 numbers: {e}"))?;
                    <[f32; 3]>::try_from(v.as_slice())
                        .map_err(|_| format!("metadata '{key}' must have exactly 3 numbers"))
                }
            }
        };
        let mean = triple(keys::MEAN, [0.485, 0.456, 0.406])?;
        let std = triple(keys::STD, [0.229, 0.224, 0.225])?;
        if std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err("metadata 'std' must be positive".into());
        }
        let resize = match meta.get(keys::RESIZE).map(String::as_str) {
            None | Some("stretch") => ResizeMode::Stretch,
            Some("center_crop") => ResizeMode::CenterCrop,
            Some(other) => return Err(format!("metadata 'resize' is '{other}', expected 'stretch' or 'center_crop'")),
        };
        let output = match meta.get(keys::OUTPUT).map(String::as_str) {
            None | Some("logits") => OutputKind::Logits,
            Some("probabilities") => OutputKind::Probabilities,
            Some(other) => return Err(format!("metadata 'output' is '{other}', expected 'logits' or 'probabilities'")),
        };
        let temperature = match meta.get(keys::TEMPERATURE) {
            None => 1.0,
            Some(t) => t.trim().parse::<f32>().map_err(|e| format!("metadata 'temperature': {e}"))?,
        };
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err("metadata 'temperature' must be a positive number".into());
        }
        let open_world = match meta.get(crate::open_world::KEY) {
            None => None,
            Some(raw) => Some(OpenWorld::from_metadata(raw, &labels).map_err(|e| e.to_string())?),
        };
        if open_world.is_some() && output != OutputKind::Logits {
            return Err("a model with an 'open_world' description must output logits".into());
        }
        Ok(ModelSpec {
            labels,
            preprocess: PreprocessSpec { size, mean, std, resize },
            output,
            temperature,
            open_world,
            metadata: meta.clone(),
        })
    }

    /// Every label a verdict can carry: the labels, and `none` for an open-world model.
    pub fn verdict_labels(&self) -> Vec<String> {
        let mut all = self.labels.clone();
        if self.open_world.is_some() {
            all.push(crate::open_world::NONE.into());
        }
        all
    }

    /// Columns in one row of this model's output.
    pub fn output_width(&self) -> usize {
        match &self.open_world {
            Some(ow) => ow.row_width(self.labels.len()),
            None => self.labels.len(),
        }
    }

    /// Turns one row of raw model output into one probability per label.
    pub fn probabilities(&self, row: &[f32]) -> Vec<f32> {
        self.judge(row).probabilities
    }

    /// Turns one row of raw model output into probabilities and, for an
    /// open-world model, the "no instrument" verdict.
    pub fn judge(&self, row: &[f32]) -> Judgement {
        let Some(ow) = &self.open_world else {
            let probabilities = match self.output {
                OutputKind::Probabilities => row.to_vec(),
                OutputKind::Logits => softmax(row, self.temperature),
            };
            return Judgement { probabilities, none: None };
        };
        let reading = ow.read(&self.labels, row);
        let none = ow.verdict(&reading.logits, reading.instrument_mass);
        Judgement { probabilities: softmax(&reading.logits, self.temperature), none }
    }
}

/// Numerically stable softmax of `logits / temperature`.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// A model file read from disk, checked, with its identity.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    pub path: PathBuf,
    /// Hex sha256 of the file: the model's identity in the database.
    pub sha256: String,
    pub spec: ModelSpec,
    pub bytes: Arc<Vec<u8>>,
    pub proto: Arc<ModelProto>,
}

impl LoadedModel {
    /// Reads, parses and checks a model file: one float NCHW input with three
    /// channels, and (where the file declares it) an output as wide as the labels.
    pub fn load(path: &Path) -> Result<LoadedModel, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(path, bytes)
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<LoadedModel, ModelError> {
        let invalid = |problem: String| ModelError::Invalid { path: path.to_path_buf(), problem };
        let proto = onnx::decode(&bytes).map_err(|source| ModelError::NotOnnx { path: path.to_path_buf(), source })?;
        let graph = proto.graph.as_ref().ok_or_else(|| invalid("the file holds no graph".into()))?;
        if graph.node.is_empty() {
            return Err(invalid("the graph has no nodes (is this really an ONNX model?)".into()));
        }
        let spec = ModelSpec::from_metadata(&onnx::metadata_of(&proto)).map_err(invalid)?;

        let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
        if inputs.len() != 1 {
            return Err(invalid(format!("expected exactly one input, found {}", inputs.len())));
        }
        let (elem, dims) = tensor_type(inputs[0]).ok_or_else(|| invalid("the input is not a tensor".into()))?;
        if elem != dtype::FLOAT {
            return Err(invalid(format!("the input must be float32 (ONNX type 1), found ONNX type {elem}")));
        }
        if dims.len() != 4 {
            return Err(invalid(format!("the input must be NCHW (rank 4), found rank {}", dims.len())));
        }
        if let Some(c) = dims[1]
            && c != 3
        {
            return Err(invalid(format!("the input must have 3 channels (NCHW), found {c} in axis 1")));
        }
        for (axis, d) in dims.iter().enumerate().skip(2) {
            if let Some(d) = d
                && *d != spec.preprocess.size as i64
            {
                return Err(invalid(format!(
                    "input axis {axis} is {d} pixels but the metadata says input_size {}",
                    spec.preprocess.size
                )));
            }
        }
        if graph.output.is_empty() {
            return Err(invalid("the graph has no output".into()));
        }
        if let Some((_, odims)) = tensor_type(&graph.output[0])
            && let Some(Some(width)) = odims.last()
            && *width != spec.output_width() as i64
        {
            return Err(invalid(format!(
                "the output has {width} columns but the metadata lists {} labels{}",
                spec.labels.len(),
                if spec.open_world.is_some() { " and an open-world ImageNet head" } else { "" }
            )));
        }
        let sha256 = hex(&Sha256::digest(&bytes));
        Ok(LoadedModel { path: path.to_path_buf(), sha256, spec, bytes: Arc::new(bytes), proto: Arc::new(proto) })
    }

    /// A short human name: the file name.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    }
}

/// Element type and dims (None where symbolic) of a graph input/output.
fn tensor_type(v: &onnx::pb_value_info::ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value, type_proto};
    let ty = v.r#type.as_ref()?;
    let Some(type_proto::Value::TensorType(t)) = ty.value.as_ref() else { return None };
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(n)) if n > 0 => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((t.elem_type, dims))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        let preprocess = PreprocessSpec {
            size: 160,
            mean: [0.5, 0.25, 0.125],
            std: [0.2, 0.3, 0.4],
            resize: ResizeMode::CenterCrop,
        };
        ModelSpec::new(vec!["red".into(), "green".into(), "blue".into()], preprocess)
    }

    /// Reading back what was written gives the same spec, whatever the fields.
    #[test]
    fn metadata_round_trips() {
        let mut s = spec();
        s.metadata.insert(keys::ARCHITECTURE.into(), "test-net".into());
        s.temperature = 1.7;
        let back = ModelSpec::from_metadata(&s.to_metadata()).unwrap();
        assert_eq!(back.metadata, s.to_metadata());
        assert_eq!(ModelSpec { metadata: s.to_metadata(), ..s.clone() }, back);

        s.output = OutputKind::Probabilities;
        s.preprocess.resize = ResizeMode::Stretch;
        let back = ModelSpec::from_metadata(&s.to_metadata()).unwrap();
        assert_eq!((back.output, back.preprocess.resize), (OutputKind::Probabilities, ResizeMode::Stretch));

        let mut s = spec();
        s.open_world = Some(crate::testkit::open_world_color_description());
        let back = ModelSpec::from_metadata(&s.to_metadata()).unwrap();
        assert_eq!(back.open_world, s.open_world);
        assert_eq!(back.verdict_labels(), ["red", "green", "blue", "none"]);
        // And a spec read from a file writes that file's map again.
        assert_eq!(back.to_metadata(), s.to_metadata());
    }

    /// The typed fields win over stale entries of the same key, and no open
    /// world means no `open_world` entry.
    #[test]
    fn typed_fields_overwrite_the_map() {
        let mut s = spec();
        s.metadata.insert(keys::INPUT_SIZE.into(), "999".into());
        s.metadata.insert(crate::open_world::KEY.into(), "{}".into());
        let meta = s.to_metadata();
        assert_eq!(meta[keys::INPUT_SIZE], "160");
        assert!(!meta.contains_key(crate::open_world::KEY));
        assert_eq!(ModelSpec::from_metadata(&meta).unwrap().preprocess, s.preprocess);
    }
}
