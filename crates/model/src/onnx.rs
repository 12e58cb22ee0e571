//! A small, explicit writer for ONNX graphs.
//!
//! The project writes ONNX itself in three places: tests build tiny models of
//! their own, the `training` binary exports trained networks, and the INT8
//! quantiser rewrites a graph. All three go through this module, which is a thin
//! layer over the protobuf types that `tract_onnx::pb` already exposes, so no
//! Python and no second protobuf stack are involved.
//!
//! Note on prost: fields are plain values, so an attribute whose value is zero is
//! still written here (we build `AttributeProto` by hand with an explicit type),
//! but a zero-valued *optional* proto field is not serialised. That is fine for
//! everything ONNX defaults to zero.

use prost::Message;
use std::collections::BTreeMap;
use tract_onnx::pb;

pub use tract_onnx::pb::ModelProto;
/// Re-exported so other modules can name graph input types.
pub(crate) mod pb_value_info {
    pub use tract_onnx::pb::ValueInfoProto;
}

/// ONNX `TensorProto.DataType` codes we use.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub(crate) const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub(crate) const INT32: i32 = 6;
    pub(crate) const INT64: i32 = 7;
}

/// The opset every graph we write declares.
pub(crate) const OPSET: i64 = 17;

/// An attribute value for [`GraphBuilder::node`].
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
}

fn attribute(name: &str, value: Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut a = pb::AttributeProto { name: name.to_string(), ..Default::default() };
    match value {
        Attr::Int(i) => {
            a.i = i;
            a.r#type = T::Int as i32;
        }
        Attr::Float(f) => {
            a.f = f;
            a.r#type = T::Float as i32;
        }
        Attr::Ints(v) => {
            a.ints = v;
            a.r#type = T::Ints as i32;
        }
        Attr::Floats(v) => {
            a.floats = v;
            a.r#type = T::Floats as i32;
        }
        Attr::Str(s) => {
            a.s = s.into_bytes();
            a.r#type = T::String as i32;
        }
    }
    a
}

/// One dimension of a graph input or output: fixed, or named (dynamic).
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

pub(crate) fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n),
                Dim::Named(s) => Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds a single-graph ONNX model node by node.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    counter: usize,
    metadata: BTreeMap<String, String>,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder { graph: pb::GraphProto { name: name.to_string(), ..Default::default() }, ..Default::default() }
    }

    /// A fresh, unique tensor name with a readable prefix.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.input.push(value_info(name, elem_type, dims));
    }

    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// Adds a float initializer (a constant weight) and returns its name.
    pub fn constant_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let expected: i64 = dims.iter().product();
        assert_eq!(expected as usize, data.len(), "initializer {name}: shape and data disagree");
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_constant(name, dtype::FLOAT, dims, raw)
    }

    pub fn constant_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.raw_constant(name, dtype::INT64, dims, raw)
    }

    fn raw_constant(&mut self, name: &str, data_type: i32, dims: &[i64], raw: Vec<u8>) -> String {
        self.graph.initializer.push(pb::TensorProto {
            name: name.to_string(),
            dims: dims.to_vec(),
            data_type,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node with one output named after `out` and returns that name.
    pub fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<(&str, Attr)>) -> String {
        self.node_multi(op, inputs, &[out], attrs);
        out.to_string()
    }

    fn node_multi(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        let name = self.fresh(op);
        self.graph.node.push(pb::NodeProto {
            name,
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    pub fn metadata(&mut self, key: &str, value: impl Into<String>) {
        self.metadata.insert(key.to_string(), value.into());
    }

    /// Adds (or replaces) many metadata entries, e.g. a whole
    /// [`ModelSpec::to_metadata`](crate::model::ModelSpec::to_metadata).
    pub fn metadata_all(&mut self, entries: BTreeMap<String, String>) {
        self.metadata.extend(entries);
    }

    pub fn build(self) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "instrument-detector".to_string(),
            producer_version: env!("CARGO_PKG_VERSION").to_string(),
            graph: Some(self.graph),
            metadata_props: self
                .metadata
                .into_iter()
                .map(|(key, value)| pb::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

/// Serialises a model to ONNX protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Parses ONNX protobuf bytes.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

/// Reads a model's `metadata_props` into a map.
pub fn metadata_of(model: &ModelProto) -> BTreeMap<String, String> {
    model.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
}

/// Replaces (or adds) metadata entries in an existing model.
pub fn set_metadata(model: &mut ModelProto, entries: &BTreeMap<String, String>) {
    model.metadata_props.retain(|e| !entries.contains_key(&e.key));
    for (key, value) in entries {
        model.metadata_props.push(pb::StringStringEntryProto { key: key.clone(), value: value.clone() });
    }
    model.metadata_props.sort_by(|a, b| a.key.cmp(&b.key));
}
