//! Static INT8 quantisation in QDQ form, written by the project (no Python).
//!
//! What it produces is what ONNX Runtime's own `quantize_static` writes with
//! `QuantFormat.QDQ, per_channel=True`: the graph keeps its float ops and gains
//! `QuantizeLinear`/`DequantizeLinear` pairs, which ONNX Runtime fuses into
//! integer kernels (`QLinearConv`, `QLinearAdd`, ...) when it loads the model.
//!
//! - **Weights** of `Conv` and `Gemm`: int8, symmetric, one scale per output
//!   channel (axis 0), stored as int8 initializers behind a `DequantizeLinear`.
//!   Biases become int32 with scale `input_scale * weight_scale[c]`, the layout
//!   the integer kernels expect.
//! - **Activations**: uint8, asymmetric (the u8 x s8 path is the fast one on
//!   x86 VNNI). Every float tensor that feeds a `Conv`, `Gemm`, `Add` or
//!   `GlobalAveragePool` gets one Q/DQ pair right after its producer, with a
//!   range measured by running the fp32 model (tract, extra outputs) over a
//!   folder of calibration images. A `Conv` followed by `Clip`/`Relu` is left
//!   unquantised at its output on purpose: the Q after the activation covers
//!   it, and ONNX Runtime then folds the activation into the integer conv.
//! - Three layout choices that decide which integer kernels ONNX Runtime picks
//!   (measured on EfficientNet-Lite0, see BENCHMARKS.md "INT8"):
//!   - a `Conv` whose input has a channel count that is not a multiple of 4
//!     (the first conv: RGB) gets its quantised input padded with one zero
//!     channel (a uint8 `Pad` with the zero point as value) and its weights a
//!     zero input channel, because ORT's fast symmetric conv kernel needs
//!     input channels in fours;
//!   - the output of `GlobalAveragePool` gets a Q/DQ pair with its input's
//!     parameters (an average stays in its input's range), so ORT fuses a
//!     channels-last `QLinearGlobalAveragePool` instead of transposing back;
//!   - optionally ([`QuantizeOptions::gemm_route_min_channels`]), 1x1 convs
//!     with many input channels store their weights as `q - 1` with zero point
//!     -1, which dequantises to exactly the same values but sends the conv to
//!     ORT's general integer GEMM: on CPUs with AMX-INT8 that path runs on AMX
//!     tiles and is faster for deep layers than the VNNI symmetric kernel ORT
//!     uses when every weight zero point is 0. Off where there is no AMX.
//! - The graph output stays float (the last `Gemm` is dequantised), and the
//!   model's metadata is kept, with `quantization=int8-qdq` and the calibration
//!   details added, so the daemon reads labels and preprocessing as before.

use crate::model::LoadedModel;
use crate::onnx::{ModelProto, dtype};
use crate::preprocess::{DecodeLimits, preprocess_bytes};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Metadata key written into quantised models, and its value.
pub(crate) const QUANTIZATION_KEY: &str = "quantization";
pub(crate) const QUANTIZATION_VALUE: &str = "int8-qdq";

/// Ops whose float activation inputs are quantised.
const QUANTIZED_INPUT_OPS: &[&str] = &["Conv", "Gemm", "Add", "GlobalAveragePool"];

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("the model has no graph")]
    NoGraph,
    #[error("the model is already quantised (it has QuantizeLinear/DequantizeLinear nodes)")]
    AlreadyQuantized,
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("no usable calibration images ({0})")]
    NoImages(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
}

/// Choices that depend on the CPU the quantised copy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantizeOptions {
    /// 1x1 convs (group 1) with at least this many input channels get weight
    /// zero point -1 (values stored as `q - 1`, dequantising to the same
    /// numbers), which routes them to ORT's general int8 GEMM (AMX where the
    /// CPU has it). `None`: every weight zero point is 0.
    pub gemm_route_min_channels: Option<usize>,
}

/// Input channels from which a 1x1 conv is routed to the GEMM path on AMX
/// CPUs: below this, ORT's symmetric conv kernel was as fast or faster
/// (BENCHMARKS.md, "INT8", item 3, has the measurements).
pub const AMX_MIN_CHANNELS: usize = 192;

impl QuantizeOptions {
    /// The options for the CPU this runs on: GEMM routing where it has AMX-INT8.
    pub fn for_this_cpu() -> QuantizeOptions {
        QuantizeOptions { gemm_route_min_channels: cpu_has_amx_int8().then_some(AMX_MIN_CHANNELS) }
    }
}

/// Whether this CPU (and kernel) offers AMX-INT8, from `/proc/cpuinfo`.
pub(crate) fn cpu_has_amx_int8() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "amx_int8")))
        .unwrap_or(false)
}

/// Observed float range of one tensor over the calibration set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    fn empty() -> Range {
        Range { min: f32::INFINITY, max: f32::NEG_INFINITY }
    }
    fn observe<'a>(&mut self, values: impl IntoIterator<Item = &'a f32>) {
        for &v in values {
            if v.is_finite() {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
        }
    }
    /// uint8 asymmetric parameters; the range always includes 0 so that zero
    /// (padding) is exact.
    pub(crate) fn uint8_params(&self) -> (f32, u8) {
        let lo = self.min.min(0.0);
        let hi = self.max.max(0.0);
        let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        (scale, zp)
    }
}

/// The float tensors that will get a Q/DQ pair, in graph order.
pub fn activations_to_quantize(model: &ModelProto) -> Result<Vec<String>, QuantizeError> {
    Ok(activation_names(model.graph.as_ref().ok_or(QuantizeError::NoGraph)?))
}

fn activation_names(graph: &pb::GraphProto) -> Vec<String> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for node in &graph.node {
        if !QUANTIZED_INPUT_OPS.contains(&node.op_type.as_str()) {
            continue;
        }
        // Conv and Gemm: only the data input (weights and bias are handled apart).
        let data_inputs: &[String] = match node.op_type.as_str() {
            "Conv" | "Gemm" => &node.input[..1.min(node.input.len())],
            _ => &node.input,
        };
        for name in data_inputs {
            if !name.is_empty() && !inits.contains(name.as_str()) && seen.insert(name.clone()) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Runs the fp32 model with tract over the calibration images (batch 1) with
/// every tensor in `names` as an extra output, and returns their ranges.
pub fn calibrate(
    model: &LoadedModel,
    images: &[PathBuf],
    names: &[String],
    mut progress: impl FnMut(usize, usize),
) -> Result<HashMap<String, Range>, QuantizeError> {
    let err = |e: TractError| QuantizeError::Calibration(format!("{e:#}"));
    let mut proto = (*model.proto).clone();
    let graph = proto.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    let existing: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for name in names {
        if existing.contains(name) {
            continue;
        }
        graph.output.push(pb::ValueInfoProto { name: name.clone(), ..Default::default() });
    }
    // Output slot of each requested tensor.
    let all_outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let slot: HashMap<&str, usize> = all_outputs.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let size = model.spec.preprocess.size as usize;
    let mut inference = tract_onnx::onnx().model_for_proto_model(&proto).map_err(err)?;
    inference.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), tvec![1, 3, size, size])).map_err(err)?;
    let plan = inference.into_optimized().map_err(err)?.into_runnable().map_err(err)?;

    let mut ranges: HashMap<String, Range> = names.iter().map(|n| (n.clone(), Range::empty())).collect();
    let limits = DecodeLimits::default();
    let spec = &model.spec.preprocess;
    let mut used = 0;
    let mut skipped = Vec::new();
    for (i, path) in images.iter().enumerate() {
        progress(i, images.len());
        let mut t = vec![0.0f32; spec.tensor_len()];
        let ok = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| preprocess_bytes(&b, spec, &limits, &mut t).map_err(|e| e.to_string()));
        if let Err(e) = ok {
            skipped.push(format!("{}: {e}", path.display()));
            continue;
        }
        let input = tract_ndarray::Array4::from_shape_vec((1, 3, size, size), t)
            .map_err(|e| QuantizeError::Calibration(e.to_string()))?;
        let outputs = plan.run(tvec!(Tensor::from(input).into())).map_err(err)?;
        for name in names {
            let value = &outputs[slot[name.as_str()]];
            let view = value.to_plain_array_view::<f32>().map_err(err)?;
            ranges.get_mut(name).expect("every name has a range").observe(view.iter());
        }
        used += 1;
    }
    if used == 0 {
        return Err(QuantizeError::NoImages(if skipped.is_empty() {
            "the folder has no images".into()
        } else {
            skipped.join("; ")
        }));
    }
    Ok(ranges)
}

/// Per-channel symmetric int8 quantisation of a weight tensor along axis 0.
/// Returns (int8 values, one scale per channel).
pub fn quantize_weights_per_channel(data: &[f32], channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = data.len() / channels.max(1);
    let mut q = Vec::with_capacity(data.len());
    let mut scales = Vec::with_capacity(channels);
    for c in 0..channels {
        let w = &data[c * per..(c + 1) * per];
        let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(w.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

fn tensor_f32(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != dtype::FLOAT {
        return None;
    }
    if !t.raw_data.is_empty() {
        Some(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    } else {
        Some(t.float_data.clone())
    }
}

fn raw_tensor(name: &str, data_type: i32, dims: &[i64], raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto { name: name.to_string(), dims: dims.to_vec(), data_type, raw_data: raw, ..Default::default() }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    raw_tensor(name, dtype::FLOAT, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn node(op: &str, name: String, inputs: &[&str], output: &str, axis: Option<i64>) -> pb::NodeProto {
    let attribute = axis
        .map(|a| {
            vec![pb::AttributeProto {
                name: "axis".into(),
                i: a,
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                ..Default::default()
            }]
        })
        .unwrap_or_default();
    pb::NodeProto {
        name,
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

fn attr_int(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// What was done, for the report and the metadata.
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    pub activations: usize,
    pub weights: usize,
    /// Convs whose weights got zero point -1 (GEMM/AMX route).
    pub gemm_routed: usize,
    /// Convs whose input was padded to a multiple of 4 channels.
    pub padded_inputs: usize,
    pub skipped_weights: Vec<String>,
}

/// Rewrites `model` into QDQ form using the activation `ranges`.
pub fn quantize_model(
    model: &ModelProto,
    ranges: &HashMap<String, Range>,
    extra_metadata: &BTreeMap<String, String>,
    options: &QuantizeOptions,
) -> Result<(ModelProto, QuantizeReport), QuantizeError> {
    let mut out = model.clone();
    let graph = out.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    if graph.node.iter().any(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") {
        return Err(QuantizeError::AlreadyQuantized);
    }
    let mut report = QuantizeReport::default();
    let inits: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();

    // 1. Activation Q/DQ pairs: tensor -> Q -> DQ -> "<tensor>_dq".
    let mut act_params: HashMap<String, (f32, u8)> = HashMap::new();
    let mut rename: HashMap<String, String> = HashMap::new();
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    // Nodes to insert after the producer of a tensor (or at the front for graph inputs).
    let mut after: HashMap<String, Vec<pb::NodeProto>> = HashMap::new();
    let mut front: Vec<pb::NodeProto> = Vec::new();
    let producers: HashSet<String> = graph.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    for name in activation_names(graph) {
        let Some(range) = ranges.get(&name) else { continue };
        if !(range.min.is_finite() && range.max.is_finite()) {
            continue;
        }
        let (scale, zp) = range.uint8_params();
        let s = format!("{name}_scale");
        let z = format!("{name}_zero_point");
        new_inits.push(f32_tensor(&s, &[], &[scale]));
        new_inits.push(raw_tensor(&z, dtype::UINT8, &[], vec![zp]));
        let q = format!("{name}_q");
        let dq = format!("{name}_dq");
        let pair = vec![
            node("QuantizeLinear", format!("{name}_QuantizeLinear"), &[&name, &s, &z], &q, None),
            node("DequantizeLinear", format!("{name}_DequantizeLinear"), &[&q, &s, &z], &dq, None),
        ];
        if producers.contains(&name) {
            after.insert(name.clone(), pair);
        } else {
            front.extend(pair);
        }
        act_params.insert(name.clone(), (scale, zp));
        rename.insert(name, dq);
        report.activations += 1;
    }

    // 1b. The output of a GlobalAveragePool over a quantised tensor gets a pair
    // with its input's parameters: an average never leaves its input's range.
    for n in graph.node.iter() {
        if n.op_type != "GlobalAveragePool" || n.output.len() != 1 || graph.output.iter().any(|o| o.name == n.output[0])
        {
            continue;
        }
        let (input, out) = (&n.input[0], &n.output[0]);
        let Some(&params) = act_params.get(input) else { continue };
        if act_params.contains_key(out) {
            continue;
        }
        let (s, z) = (format!("{input}_scale"), format!("{input}_zero_point"));
        let (q, dq) = (format!("{out}_q"), format!("{out}_dq"));
        after.insert(
            out.clone(),
            vec![
                node("QuantizeLinear", format!("{out}_QuantizeLinear"), &[out, &s, &z], &q, None),
                node("DequantizeLinear", format!("{out}_DequantizeLinear"), &[&q, &s, &z], &dq, None),
            ],
        );
        act_params.insert(out.clone(), params);
        rename.insert(out.clone(), dq);
        report.activations += 1;
    }

    // 2. Weights (and biases) of Conv and Gemm.
    let mut weight_nodes: Vec<pb::NodeProto> = Vec::new();
    let mut remove_inits: HashSet<String> = HashSet::new();
    for n in graph.node.iter_mut() {
        let is_conv = n.op_type == "Conv";
        let is_gemm = n.op_type == "Gemm";
        if !(is_conv || is_gemm) || n.input.len() < 2 {
            continue;
        }
        if is_gemm && (attr_int(n, "transA").unwrap_or(0) != 0 || attr_int(n, "transB").unwrap_or(0) != 1) {
            report.skipped_weights.push(format!("{}: Gemm without transB=1", n.name));
            continue;
        }
        let Some(&wi) = inits.get(&n.input[1]) else {
            report.skipped_weights.push(format!("{}: weight is not a constant", n.name));
            continue;
        };
        let w = &graph.initializer[wi];
        let Some(data) = tensor_f32(w) else {
            report.skipped_weights.push(format!("{}: weight is not float", n.name));
            continue;
        };
        let mut dims = w.dims.clone();
        let mut data = data;
        let channels = dims.first().copied().unwrap_or(1).max(1) as usize;
        let x_params = act_params.get(&n.input[0]).copied();
        let group = attr_int(n, "group").unwrap_or(1);
        let plain_conv = is_conv && group == 1 && dims.len() == 4;
        // Input channels not in fours: pad the quantised input with one zero
        // channel (the zero point) and the weights with zero input channels.
        if plain_conv && dims[1] % 4 != 0 && x_params.is_some() {
            let (cin, cin4) = (dims[1] as usize, (dims[1] as usize).next_multiple_of(4));
            let per_in = (dims[2] * dims[3]) as usize;
            let mut padded = vec![0.0f32; channels * cin4 * per_in];
            for (c, chunk) in data.chunks_exact(cin * per_in).enumerate() {
                padded[c * cin4 * per_in..c * cin4 * per_in + cin * per_in].copy_from_slice(chunk);
            }
            data = padded;
            dims[1] = cin4 as i64;
            let x = n.input[0].clone();
            let (s, z) = (format!("{x}_scale"), format!("{x}_zero_point"));
            let pads = format!("{x}_pads_to_{cin4}");
            let (qp, dqp) = (format!("{x}_q_pad{cin4}"), format!("{x}_dq_pad{cin4}"));
            if !new_inits.iter().any(|t| t.name == pads) {
                let p: [i64; 8] = [0, 0, 0, 0, 0, (cin4 - cin) as i64, 0, 0];
                new_inits.push(raw_tensor(&pads, dtype::INT64, &[8], p.iter().flat_map(|v| v.to_le_bytes()).collect()));
                let pair = vec![
                    node("Pad", format!("{x}_Pad{cin4}"), &[&format!("{x}_q"), &pads, &z], &qp, None),
                    node("DequantizeLinear", format!("{x}_DequantizeLinear_pad{cin4}"), &[&qp, &s, &z], &dqp, None),
                ];
                match after.get_mut(&x) {
                    Some(v) => v.extend(pair),
                    None => front.extend(pair),
                }
            }
            n.input[0] = dqp;
            report.padded_inputs += 1;
        }
        let (mut q, scales) = quantize_weights_per_channel(&data, channels);
        // GEMM route: the same numbers as (q - 1 - (-1)) * scale.
        let routed = plain_conv
            && dims[2] == 1
            && dims[3] == 1
            && options.gemm_route_min_channels.is_some_and(|m| dims[1] as usize >= m);
        if routed {
            for v in q.iter_mut() {
                *v -= 1; // q is in [-127, 127], so q - 1 fits
            }
            report.gemm_routed += 1;
        }
        let zero_point: i8 = if routed { -1 } else { 0 };
        let wname = w.name.clone();
        let qn = format!("{wname}_quantized");
        let sn = format!("{wname}_scale");
        let zn = format!("{wname}_zero_point");
        let dqn = format!("{wname}_dq");
        new_inits.push(raw_tensor(&qn, dtype::INT8, &dims, q.iter().map(|v| *v as u8).collect()));
        new_inits.push(f32_tensor(&sn, &[channels as i64], &scales));
        new_inits.push(raw_tensor(&zn, dtype::INT8, &[channels as i64], vec![zero_point as u8; channels]));
        weight_nodes.push(node(
            "DequantizeLinear",
            format!("{wname}_DequantizeLinear"),
            &[&qn, &sn, &zn],
            &dqn,
            Some(0),
        ));
        remove_inits.insert(wname);
        n.input[1] = dqn;
        report.weights += 1;

        // Bias: int32 with scale input_scale * weight_scale, only when the input is quantised.
        if n.input.len() >= 3
            && !n.input[2].is_empty()
            && let Some(&bi) = inits.get(&n.input[2])
            && let Some((x_scale, _)) = x_params
            && let Some(bias) = tensor_f32(&graph.initializer[bi])
            && bias.len() == channels
        {
            let bname = graph.initializer[bi].name.clone();
            let bscales: Vec<f32> = scales.iter().map(|s| s * x_scale).collect();
            let bq: Vec<i32> = bias
                .iter()
                .zip(&bscales)
                .map(|(b, s)| (b / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
                .collect();
            let qn = format!("{bname}_quantized_{}", report.weights);
            let sn = format!("{bname}_scale_{}", report.weights);
            let zn = format!("{bname}_zero_point_{}", report.weights);
            let dqn = format!("{bname}_dq_{}", report.weights);
            new_inits.push(raw_tensor(
                &qn,
                dtype::INT32,
                &[channels as i64],
                bq.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
            new_inits.push(f32_tensor(&sn, &[channels as i64], &bscales));
            new_inits.push(raw_tensor(&zn, dtype::INT32, &[channels as i64], vec![0; 4 * channels]));
            weight_nodes.push(node(
                "DequantizeLinear",
                format!("{bname}_DequantizeLinear_{}", report.weights),
                &[&qn, &sn, &zn],
                &dqn,
                Some(0),
            ));
            remove_inits.insert(bname);
            n.input[2] = dqn;
        }
    }

    // 3. Rewire consumers to the dequantised tensors (graph outputs keep their names).
    for n in graph.node.iter_mut() {
        for input in n.input.iter_mut() {
            if let Some(r) = rename.get(input) {
                *input = r.clone();
            }
        }
    }
    // A graph output that is also quantised keeps its float value: its producer's
    // output keeps the name, only consumers read the dequantised copy.

    // 4. Rebuild the node list in topological order.
    let old = std::mem::take(&mut graph.node);
    let mut nodes = weight_nodes;
    nodes.extend(front);
    for n in old {
        let outs = n.output.clone();
        nodes.push(n);
        for o in outs {
            if let Some(pair) = after.remove(&o) {
                nodes.extend(pair);
            }
        }
    }
    graph.node = nodes;
    // Initialisers still used elsewhere (a weight shared with a non-quantised op) stay.
    let used: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.initializer.retain(|t| !remove_inits.contains(&t.name) || used.contains(&t.name));
    graph.initializer.extend(new_inits);
    // Opset 13+ is needed for per-channel DequantizeLinear (axis).
    for op in out.opset_import.iter_mut() {
        if op.domain.is_empty() && op.version < 13 {
            op.version = 13;
        }
    }
    let mut meta = crate::onnx::metadata_of(&out);
    meta.insert(QUANTIZATION_KEY.into(), QUANTIZATION_VALUE.into());
    meta.insert("quantization_weights".into(), "int8 symmetric per-channel (Conv, Gemm)".into());
    meta.insert("quantization_activations".into(), "uint8 asymmetric, static (calibrated min/max)".into());
    meta.insert(
        "quantization_gemm_route".into(),
        match options.gemm_route_min_channels {
            Some(m) => format!("1x1 convs with >= {m} input channels: weight zero point -1 (ORT int8 GEMM, AMX)"),
            None => "none (every weight zero point 0)".into(),
        },
    );
    for (k, v) in extra_metadata {
        meta.insert(k.clone(), v.clone());
    }
    crate::onnx::set_metadata(&mut out, &meta);
    Ok((out, report))
}

/// Whether a model carries the metadata this module writes.
pub fn is_quantized(model: &ModelProto) -> bool {
    crate::onnx::metadata_of(model).get(QUANTIZATION_KEY).is_some_and(|v| v.starts_with("int8"))
}
