//! The model file seen as a backbone and a linear head on its `features`.
//!
//! `training` exports every model the same way: the backbone ends in a tensor
//! named `features` (`[N, D]`, the pooled activations), and our head is one
//! `Gemm` with the initializers `fc_weight` (`[labels, D]`) and `fc_bias`;
//! an open-world model adds the frozen ImageNet head (`imagenet_fc_weight`,
//! `imagenet_fc_bias`) on the same features. Retraining replaces the two
//! `fc_*` tensors and nothing else, so the new file is the old one with a
//! new head: same backbone, same preprocessing, same rule for `none`.

use super::RetrainError;
use crate::model::{LoadedModel, ModelSpec};
use crate::onnx::{self, Dim, ModelProto, dtype};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tract_onnx::pb::TensorProto;

/// The tensor the backbone ends in.
pub(crate) const FEATURES: &str = "features";
const WEIGHT: &str = "fc_weight";
const BIAS: &str = "fc_bias";
const IMAGENET_WEIGHT: &str = "imagenet_fc_weight";
const IMAGENET_BIAS: &str = "imagenet_fc_bias";

/// A linear layer: `logits = features · weightᵀ + bias`, row-major weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    pub outputs: usize,
    pub inputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// What a model file holds for retraining: our head, and the ImageNet head
/// when the model has the open-world rule.
#[derive(Debug, Clone)]
pub(crate) struct Heads {
    pub(crate) own: LinearHead,
    pub(crate) imagenet: Option<LinearHead>,
}

impl Heads {
    /// Reads the heads of `model`, or says why it cannot be retrained.
    pub(crate) fn of(model: &LoadedModel) -> Result<Heads, RetrainError> {
        let not_retrainable = |why: String| RetrainError::NotRetrainable { model: model.name(), why };
        let graph = model.proto.graph.as_ref().ok_or_else(|| not_retrainable("it holds no graph".into()))?;
        if !graph.node.iter().any(|n| n.output.iter().any(|o| o == FEATURES)) {
            return Err(not_retrainable(format!(
                "no tensor named '{FEATURES}' (only models exported by `training` can be retrained)"
            )));
        }
        let own = linear(graph, WEIGHT, BIAS).map_err(not_retrainable)?;
        if own.outputs != model.spec.labels.len() {
            return Err(not_retrainable(format!(
                "'{WEIGHT}' has {} rows but the model has {} labels",
                own.outputs,
                model.spec.labels.len()
            )));
        }
        let imagenet = match &model.spec.open_world {
            None => None,
            Some(ow) => {
                let head = linear(graph, IMAGENET_WEIGHT, IMAGENET_BIAS).map_err(not_retrainable)?;
                if head.outputs != ow.imagenet_classes || head.inputs != own.inputs {
                    return Err(not_retrainable(format!(
                        "'{IMAGENET_WEIGHT}' is {}x{}, expected {}x{}",
                        head.outputs, head.inputs, ow.imagenet_classes, own.inputs
                    )));
                }
                Some(head)
            }
        };
        Ok(Heads { own, imagenet })
    }
}

/// Reads a `[outputs, inputs]` float weight and its `[outputs]` bias.
fn linear(graph: &tract_onnx::pb::GraphProto, weight: &str, bias: &str) -> Result<LinearHead, String> {
    let find = |name: &str| {
        graph.initializer.iter().find(|t| t.name == name).ok_or_else(|| format!("no initializer named '{name}'"))
    };
    let (w, b) = (find(weight)?, find(bias)?);
    let [outputs, inputs] = <[i64; 2]>::try_from(w.dims.as_slice())
        .map_err(|_| format!("'{weight}' has shape {:?}, expected [outputs, features]", w.dims))?;
    if b.dims != [outputs] {
        return Err(format!("'{bias}' has shape {:?}, expected [{outputs}]", b.dims));
    }
    let weight_values =
        floats(w).ok_or_else(|| format!("'{weight}' is not float32 (an INT8 model cannot be retrained)"))?;
    let bias_values = floats(b).ok_or_else(|| format!("'{bias}' is not float32"))?;
    Ok(LinearHead { outputs: outputs as usize, inputs: inputs as usize, weight: weight_values, bias: bias_values })
}

/// The float values of an initializer, raw or typed.
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != dtype::FLOAT {
        return None;
    }
    let expected: i64 = t.dims.iter().product();
    let values = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    (values.len() as i64 == expected).then_some(values)
}

/// The backbone alone: `input` → `features`, every node and weight the
/// features do not need removed. Its "labels" are the feature indices so that
/// the engines (and their checks) take it like any model.
pub(crate) fn backbone(model: &LoadedModel, dim: usize) -> Result<LoadedModel, RetrainError> {
    let mut proto: ModelProto = (*model.proto).clone();
    let graph = proto.graph.as_mut().expect("Heads::of checked there is a graph");
    let mut needed: HashSet<String> = HashSet::from([FEATURES.to_string()]);
    let mut kept = Vec::new();
    for node in graph.node.drain(..).rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            needed.extend(node.input.iter().cloned());
            kept.push(node);
        }
    }
    kept.reverse();
    graph.node = kept;
    graph.initializer.retain(|t| needed.contains(&t.name));
    graph.output = vec![onnx::value_info(FEATURES, dtype::FLOAT, &[Dim::Named("N".into()), Dim::Fixed(dim as i64)])];
    let labels = (0..dim).map(|i| format!("f{i}")).collect();
    let meta = ModelSpec::new(labels, model.spec.preprocess.clone()).to_metadata();
    proto.metadata_props.clear();
    onnx::set_metadata(&mut proto, &meta);
    let bytes = onnx::encode(&proto);
    LoadedModel::from_bytes(Path::new("backbone.onnx"), bytes)
        .map_err(|e| RetrainError::NotRetrainable { model: model.name(), why: format!("its backbone alone: {e}") })
}

/// `model` with our head replaced by `head` and `extra` metadata merged in.
pub(crate) fn with_head(model: &LoadedModel, head: &LinearHead, extra: &BTreeMap<String, String>) -> Vec<u8> {
    let mut proto: ModelProto = (*model.proto).clone();
    let graph = proto.graph.as_mut().expect("Heads::of checked there is a graph");
    for t in graph.initializer.iter_mut() {
        let values = match t.name.as_str() {
            WEIGHT => &head.weight,
            BIAS => &head.bias,
            _ => continue,
        };
        t.float_data.clear();
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    onnx::set_metadata(&mut proto, extra);
    onnx::encode(&proto)
}
