//! Remote inference on a Triton Inference Server (the KServe v2 / Open
//! Inference Protocol), over HTTP with Triton's binary tensor extension.
//!
//! The daemon still decodes and preprocesses every photo itself (that is the
//! CPU-heavy part, and the server should not need the photos); only the
//! batch tensor travels, as raw little-endian f32 after a small JSON header.
//! HTTP rather than gRPC: one blocking request per batch from a batcher
//! thread needs no async runtime and no generated protobuf code, and the
//! binary extension sends the same bytes gRPC's `raw_input_contents` would.
//!
//! The labels, preprocessing and identity still come from the local `.onnx`
//! file: v2 model metadata carries no labels. So at open the server's model
//! must name the same file, by the `model_sha256` parameter in its Triton
//! config; a server that cannot say which model it runs is refused, because
//! a quiet substitute would store another model's answers under this one's
//! name.
//!
//! A server that is away (refused connection, timeout, 502/503/504, or 404
//! while its model reloads) is [`EngineError::Unreachable`]: not the photos'
//! fault, so the daemon keeps them and tries again rather than writing error
//! rows. Any other failed answer fails the batch (see `run_one`).

use super::{Backend, Classifier, EngineError};
use crate::model::LoadedModel;
use ndarray::{Array2, ArrayView4};
use serde_json::{Value, json};
use std::time::Duration;

/// How long one request may take before the server counts as unreachable
/// (a batch of 16 on a CPU server is well under a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bigger than any answer: 64 rows of 1,030 f32 scores plus the header.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// The batch the daemon sends when the server allows it; the server's
/// dynamic batcher merges batches from several daemons.
const PREFERRED_BATCH: usize = 16;
/// The most requests one daemon keeps in flight.
const MAX_IN_FLIGHT: usize = 8;

/// Where the server is and which of its models to use (`--triton-url`, `--triton-model`).
#[derive(Debug, Clone)]
pub struct TritonTarget {
    /// `http://host:port`, the server's HTTP endpoint.
    pub url: String,
    pub model: String,
}

#[derive(Clone)]
pub(crate) struct TritonClassifier {
    /// Shared by the pieces of a split (it pools their connections).
    agent: ureq::Agent,
    infer_url: String,
    input: String,
    output: String,
    batch: usize,
    /// The server's `max_batch_size`: a larger batch goes in pieces.
    max_batch: usize,
    /// Requests to keep in flight: one per model instance on the server, and
    /// at least two, so one batch travels while another is computed.
    in_flight: usize,
}

impl TritonClassifier {
    /// Connects, checks that the server's model is `model` (same sha256)
    /// and reads its input and output names and its largest batch.
    pub(crate) fn new(model: &LoadedModel, target: &TritonTarget) -> Result<Self, EngineError> {
        let agent = agent();
        let base = format!("{}/v2/models/{}", target.url.trim_end_matches('/'), target.model);
        let unavailable = |reason: String| EngineError::Unavailable { backend: Backend::Triton, reason };
        get_json(&agent, &format!("{base}/ready"))
            .map_err(|e| unavailable(format!("model '{}' is not ready at {}: {e}", target.model, target.url)))?;
        let config = get_json(&agent, &format!("{base}/config")).map_err(|e| unavailable(e.to_string()))?;
        check_same_model(&config, model, target)
            .map_err(|reason| EngineError::Model { backend: Backend::Triton, reason })?;
        let metadata = get_json(&agent, &base).map_err(|e| unavailable(e.to_string()))?;
        let name_of = |key: &str| metadata[key][0]["name"].as_str().map(String::from);
        let (Some(input), Some(output)) = (name_of("inputs"), name_of("outputs")) else {
            return Err(unavailable(format!("the server's metadata for '{}' names no input or output", target.model)));
        };
        let max_batch = config["max_batch_size"].as_u64().unwrap_or(0) as usize;
        // 0: the server batches nothing, so one photo per request.
        let max_batch = max_batch.max(1);
        let batch = max_batch.min(PREFERRED_BATCH);
        let instances: u64 = config["instance_group"]
            .as_array()
            .map(|g| g.iter().filter_map(|i| i["count"].as_u64()).sum())
            .unwrap_or(1);
        let in_flight = (instances as usize).clamp(2, MAX_IN_FLIGHT);
        Ok(TritonClassifier { agent, infer_url: format!("{base}/infer"), input, output, batch, max_batch, in_flight })
    }

    /// The request body: the JSON header, then the tensor's bytes.
    fn request(&self, batch: &ArrayView4<'_, f32>) -> (Vec<u8>, usize) {
        let data_bytes = batch.len() * 4;
        let header = json!({
            "inputs": [{
                "name": self.input,
                "shape": batch.shape(),
                "datatype": "FP32",
                "parameters": { "binary_data_size": data_bytes },
            }],
            "outputs": [{ "name": self.output, "parameters": { "binary_data": true } }],
        })
        .to_string();
        let mut body = Vec::with_capacity(header.len() + data_bytes);
        body.extend_from_slice(header.as_bytes());
        // Row-major, no padding: what the protocol asks for.
        for v in batch.iter() {
            body.extend_from_slice(&v.to_le_bytes());
        }
        (body, header.len())
    }
}

impl Classifier for TritonClassifier {
    fn backend(&self) -> Backend {
        Backend::Triton
    }

    fn preferred_batch(&self) -> usize {
        self.batch
    }

    /// Sends the batch in pieces no larger than the server takes.
    fn run(&mut self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        let rows = batch.shape()[0];
        if rows <= self.max_batch {
            return self.run_one(batch);
        }
        let mut pieces = Vec::new();
        for start in (0..rows).step_by(self.max_batch) {
            let end = (start + self.max_batch).min(rows);
            pieces.push(self.run_one(batch.slice(ndarray::s![start..end, .., .., ..]))?);
        }
        let views: Vec<_> = pieces.iter().map(|p| p.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| inference(e.to_string()))
    }

    /// The daemon gives each piece a batcher, and each batcher keeps one
    /// request in flight: k pieces keep the server's k instances busy and
    /// hide the network's latency.
    fn split(self: Box<Self>) -> Vec<Box<dyn Classifier>> {
        (0..self.in_flight).map(|_| Box::new((*self).clone()) as Box<dyn Classifier>).collect()
    }
}

impl TritonClassifier {
    /// One request. What counts as the server being away (sent again by the
    /// daemon) and what as a failed batch (error rows): no connection, a
    /// timeout, 502/503/504 (a proxy or a server starting or stopping) and
    /// 404 (the model being reloaded) are away; any other answer that is not
    /// 200, such as 500 from the model itself, is the batch's failure, which
    /// sending it again would only repeat.
    fn run_one(&self, batch: ArrayView4<'_, f32>) -> Result<Array2<f32>, EngineError> {
        let rows = batch.shape()[0];
        let (body, header_len) = self.request(&batch);
        let mut response = self
            .agent
            .post(&self.infer_url)
            .header("Inference-Header-Content-Length", header_len.to_string())
            .content_type("application/octet-stream")
            .send(&body[..])
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let header_len = response
            .headers()
            .get("Inference-Header-Content-Length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec().map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(limit) => inference(format!("the answer is over {limit} bytes")),
            e => unreachable(format!("reading the answer: {e}")),
        })?;
        let text = || String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
        match status {
            200 => decode_output(&bytes, header_len, rows),
            404 | 502..=504 => Err(unreachable(format!("HTTP {status}: {}", text()))),
            _ => Err(inference(format!("HTTP {status}: {}", text()))),
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(REQUEST_TIMEOUT)).http_status_as_error(false).build().new_agent()
}

fn unreachable(reason: String) -> EngineError {
    EngineError::Unreachable { backend: Backend::Triton, reason }
}

fn inference(reason: String) -> EngineError {
    EngineError::Inference { backend: Backend::Triton, reason }
}

/// A GET that must answer 200 with JSON (an empty body reads as `null`).
fn get_json(agent: &ureq::Agent, url: &str) -> Result<Value, String> {
    let mut response = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| format!("{url}: {e}"))?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status} {text}"));
    }
    if text.trim().is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))
    }
}

/// The server's config must carry `parameters.model_sha256` equal to ours.
fn check_same_model(config: &Value, model: &LoadedModel, target: &TritonTarget) -> Result<(), String> {
    let theirs = config["parameters"]["model_sha256"]["string_value"].as_str();
    match theirs {
        Some(sha) if sha.eq_ignore_ascii_case(&model.sha256) => Ok(()),
        Some(sha) => Err(format!(
            "the server's model '{}' is {sha}, not {} ({}): give the server the same file, or --model the one it runs",
            target.model,
            model.sha256,
            model.path.display()
        )),
        None => Err(format!(
            "the server's model '{}' does not say which file it is: add parameters {{ key: \"model_sha256\" \
             value: {{ string_value: \"{}\" }} }} to its config.pbtxt",
            target.model, model.sha256
        )),
    }
}

/// The first output of a binary-extension answer as `[rows, width]`.
fn decode_output(bytes: &[u8], header_len: Option<usize>, rows: usize) -> Result<Array2<f32>, EngineError> {
    let header_len = header_len.unwrap_or(bytes.len()).min(bytes.len());
    let header: Value = serde_json::from_slice(&bytes[..header_len])
        .map_err(|e| inference(format!("the answer's header is not JSON: {e}")))?;
    let output = &header["outputs"][0];
    let shape: Vec<usize> = output["shape"]
        .as_array()
        .map(|s| s.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
        .unwrap_or_default();
    if output["datatype"] != "FP32" || shape.len() != 2 || shape[0] != rows {
        return Err(inference(format!(
            "expected an FP32 output of {rows} rows, got {} {:?}",
            output["datatype"], output["shape"]
        )));
    }
    let data = &bytes[header_len..];
    if shape[0].checked_mul(shape[1]).and_then(|n| n.checked_mul(4)) != Some(data.len()) {
        return Err(inference(format!("the answer holds {} bytes of scores for shape {shape:?}", data.len())));
    }
    let values = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Array2::from_shape_vec((shape[0], shape[1]), values).map_err(|e| inference(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(header: &str, values: &[f32]) -> Vec<u8> {
        let mut b = header.as_bytes().to_vec();
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_binary_answer_decodes_to_its_rows() {
        let header =
            r#"{"outputs":[{"name":"scores","datatype":"FP32","shape":[2,3],"parameters":{"binary_data_size":24}}]}"#;
        let out = decode_output(&answer(header, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), Some(header.len()), 2).unwrap();
        assert_eq!(out, ndarray::arr2(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]));
    }

    #[test]
    fn an_answer_of_the_wrong_size_or_rows_is_an_inference_error() {
        let header = r#"{"outputs":[{"name":"scores","datatype":"FP32","shape":[2,3]}]}"#;
        let short = decode_output(&answer(header, &[1.0; 5]), Some(header.len()), 2).unwrap_err();
        assert!(short.to_string().contains("20 bytes"), "{short}");
        let rows = decode_output(&answer(header, &[1.0; 6]), Some(header.len()), 3).unwrap_err();
        assert!(rows.to_string().contains("3 rows"), "{rows}");
    }
}
