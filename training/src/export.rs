//! ONNX export, written by the project (no Python), and the parity check that
//! every export must pass before it is written: tch logits against tract's
//! (through the daemon's own engine), and ONNX Runtime's where it is available.

use crate::data::{Dataset, Sample, spec_for};
use crate::nets::{Arch, Network};
use crate::weights::{CheckpointMeta, load_pretrained, open_checkpoint};
use anyhow::{Context, Result, bail, ensure};
use instrument_model::engine::{self, BackendChoice, EngineOptions};
use instrument_model::model::{LoadedModel, ModelSpec, keys};
use instrument_model::onnx::{Dim, GraphBuilder, dtype, encode};
use instrument_model::preprocess::PreprocessSpec;
use ndarray::ArrayView4;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Largest accepted |tch - runtime| relative to the logit scale (max(1, max |logit|)).
pub const PARITY_TOLERANCE: f64 = 1e-4;

/// Builds the ONNX model: `input [N,3,S,S]` -> `logits [N,classes]`, with metadata.
pub fn build_onnx(
    net: &Network,
    spec: &PreprocessSpec,
    classes: &[String],
    extra: &BTreeMap<String, String>,
) -> Vec<u8> {
    let size = spec.size as i64;
    let mut g = GraphBuilder::new(net.arch.as_str());
    let n = Dim::Named("N".into());
    g.input(
        "input",
        dtype::FLOAT,
        &[n.clone(), Dim::Fixed(3), Dim::Fixed(size), Dim::Fixed(size)],
    );
    let logits = net.emit(&mut g, "input", size);
    g.output(&logits, dtype::FLOAT, &[n, Dim::Fixed(net.output_width())]);
    let mut model = ModelSpec::new(classes.to_vec(), spec.clone());
    model
        .metadata
        .insert(keys::ARCHITECTURE.into(), net.arch.as_str().into());
    g.metadata_all(model.to_metadata());
    // Entries given by the caller (dataset, `--meta`, the open world) come last
    // and may replace any of the above.
    g.metadata_all(extra.clone());
    encode(&g.build())
}

/// The frozen backbone alone (`input` -> `features [N, feature_dim]`), for
/// computing features with a fast inference engine while only the head trains.
/// Its "labels" are the feature indices so the daemon's loader accepts it.
pub fn build_backbone_onnx(net: &Network, spec: &PreprocessSpec) -> Vec<u8> {
    let size = spec.size as i64;
    let mut g = GraphBuilder::new("backbone");
    let n = Dim::Named("N".into());
    g.input(
        "input",
        dtype::FLOAT,
        &[n.clone(), Dim::Fixed(3), Dim::Fixed(size), Dim::Fixed(size)],
    );
    let f = net.emit_features(&mut g, "input", size);
    let dim = net.arch.feature_dim();
    g.output(&f, dtype::FLOAT, &[n, Dim::Fixed(dim)]);
    let labels: Vec<String> = (0..dim).map(|i| format!("f{i}")).collect();
    g.metadata_all(ModelSpec::new(labels, spec.clone()).to_metadata());
    encode(&g.build())
}

/// Opens the frozen backbone on ONNX Runtime (CPU), after checking it against
/// tch on `check` inputs. `None` (with the reason printed) when ONNX Runtime is
/// unavailable or disagrees; the caller then keeps tch.
pub fn open_backbone_engine(
    net: &Network,
    spec: &PreprocessSpec,
    check: &Tensor,
) -> Option<Box<dyn instrument_model::engine::Classifier>> {
    let bytes = build_backbone_onnx(net, spec);
    let model = match LoadedModel::from_bytes(Path::new("backbone.onnx"), bytes) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("note: backbone export failed to load ({e}); features stay in tch");
            return None;
        }
    };
    let mut clf = match engine::open(&model, BackendChoice::OrtCpu, &EngineOptions::default()) {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!(
                "note: ONNX Runtime unavailable for frozen features ({e}); features stay in tch (slower)"
            );
            return None;
        }
    };
    let want = crate::nets::to_vec(&tch::no_grad(|| {
        net.features(&check.to_device(net.vs.device()), false)
    }));
    let dims: Vec<usize> = check.size().iter().map(|&d| d as usize).collect();
    let data = crate::nets::to_vec(check);
    let view = ArrayView4::from_shape((dims[0], dims[1], dims[2], dims[3]), &data).ok()?;
    let got: Vec<f32> = clf.run(view).ok()?.iter().copied().collect();
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    let scale = want.iter().map(|v| v.abs() as f64).fold(1.0, f64::max);
    if got.len() != want.len() || diff > PARITY_TOLERANCE * scale {
        eprintln!(
            "note: ONNX Runtime backbone disagrees with tch (max diff {diff:.2e}); features stay in tch"
        );
        return None;
    }
    eprintln!(
        "frozen features: ONNX Runtime on the exported backbone (parity with tch: max diff {diff:.2e} at scale {scale:.2})"
    );
    Some(clf)
}

#[derive(Debug, Clone)]
pub struct Parity {
    pub backend: String,
    pub max_abs_diff: f64,
    pub logit_scale: f64,
    pub argmax_agree: usize,
    pub rows: usize,
}

impl std::fmt::Display for Parity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: max |diff| {:.2e} on logits of scale {:.2} (relative {:.2e}), top-1 agrees on {}/{}",
            self.backend,
            self.max_abs_diff,
            self.logit_scale,
            self.max_abs_diff / self.logit_scale,
            self.argmax_agree,
            self.rows
        )
    }
}

/// Compares tch (eval mode) with the exported model on `inputs` `[N,3,S,S]`.
/// Tract must run and agree; ONNX Runtime is compared when it can be opened.
pub fn check_parity(net: &Network, onnx: &[u8], inputs: &Tensor) -> Result<Vec<Parity>> {
    let model = LoadedModel::from_bytes(Path::new("exported.onnx"), onnx.to_vec())
        .context("the exported model does not load")?;
    let want = tch::no_grad(|| net.forward(&inputs.to_device(net.vs.device()), false))
        .to_device(Device::Cpu)
        .to_kind(Kind::Float);
    let want = crate::nets::to_vec(&want);
    let dims: Vec<usize> = inputs.size().iter().map(|&d| d as usize).collect();
    let data = crate::nets::to_vec(inputs);
    let view = ArrayView4::from_shape((dims[0], dims[1], dims[2], dims[3]), &data)?;
    // Compare the whole row (the ImageNet logits too), top-1 on our own logits.
    let width = net.output_width() as usize;
    let k = net.num_classes as usize;
    let mut results = Vec::new();
    for choice in [BackendChoice::Tract, BackendChoice::OrtCpu] {
        let opened = engine::open(&model, choice, &EngineOptions::default());
        let mut classifier = match opened {
            Ok((c, _)) => c,
            Err(e) if choice == BackendChoice::OrtCpu => {
                eprintln!("note: ONNX Runtime parity skipped ({e})");
                continue;
            }
            Err(e) => bail!("tract cannot run the exported model: {e}"),
        };
        let got = classifier
            .run(view.view())
            .with_context(|| format!("{choice:?} inference"))?;
        let got: Vec<f32> = got.iter().copied().collect();
        if got.len() != want.len() {
            bail!(
                "{choice:?} returned {} values, tch {}",
                got.len(),
                want.len()
            );
        }
        let max_abs_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        let logit_scale = want.iter().map(|v| v.abs() as f64).fold(1.0, f64::max);
        let argmax_agree = (0..dims[0])
            .filter(|&r| {
                crate::eval::argmax(&got[r * width..r * width + k])
                    == crate::eval::argmax(&want[r * width..r * width + k])
            })
            .count();
        let p = Parity {
            backend: classifier.backend().to_string(),
            max_abs_diff,
            logit_scale,
            argmax_agree,
            rows: dims[0],
        };
        if max_abs_diff > PARITY_TOLERANCE * logit_scale {
            bail!("export parity failed, the ONNX graph does not compute what tch computes: {p}");
        }
        results.push(p);
    }
    Ok(results)
}

/// Builds, checks and writes the model. Nothing is written if parity fails.
pub fn export_checked(
    net: &Network,
    spec: &PreprocessSpec,
    classes: &[String],
    extra: &BTreeMap<String, String>,
    check_inputs: &Tensor,
    out: &Path,
) -> Result<Vec<Parity>> {
    let bytes = build_onnx(net, spec, classes, extra);
    let parity = check_parity(net, &bytes, check_inputs)?;
    if let Some(dir) = out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(parity)
}

/// Metadata keys `training` writes beside the model contract's own
/// ([`keys`]); the daemon shows them but needs none of them.
pub(crate) mod meta_keys {
    pub(crate) const DATASET: &str = "dataset";
    pub(crate) const DATE: &str = "date";
    pub(crate) const TRAINING_ARGS: &str = "training_args";
    /// `{"valid": .., "hard_valid": .., "test": ..}`, as JSON.
    pub(crate) const ACCURACY: &str = "accuracy";
    /// What a person's corrections added to the train split (lineage).
    pub(crate) const CORRECTIONS: &str = "corrections";
}

/// The metadata every trained model carries: the dataset's name, today's
/// date, the training flags (as JSON) and the open world, when it has one.
pub(crate) fn run_metadata(
    dataset: &str,
    training_args: String,
    open_world: Option<String>,
) -> BTreeMap<String, String> {
    let mut extra = BTreeMap::new();
    extra.insert(meta_keys::DATASET.to_string(), dataset.to_string());
    extra.insert(
        meta_keys::DATE.to_string(),
        chrono::Utc::now().format("%Y-%m-%d").to_string(),
    );
    extra.insert(meta_keys::TRAINING_ARGS.to_string(), training_args);
    if let Some(ow) = open_world {
        extra.insert(instrument_model::open_world::KEY.to_string(), ow);
    }
    extra
}

/// The first `n` images of `samples`, preprocessed like the daemon does.
pub(crate) fn real_inputs(samples: &[Sample], spec: &PreprocessSpec, n: usize) -> Result<Tensor> {
    let n = n.min(samples.len()).max(1);
    let len = spec.tensor_len();
    let mut data = vec![0f32; n * len];
    for (i, s) in samples.iter().take(n).enumerate() {
        crate::data::load_plain(&s.path, spec, &mut data[i * len..(i + 1) * len])?;
    }
    let sz = spec.size as i64;
    Ok(Tensor::from_slice(&data).view([n as i64, 3, sz, sz]))
}

/// `training export`: writes `checkpoint` as an ONNX model at `out` without
/// retraining. Its metadata is rebuilt from the checkpoint's, as `training
/// train` would write it, with `--temperature` (else the checkpoint's) and
/// then the `--meta` entries on top.
pub fn reexport_checkpoint(
    checkpoint: &Path,
    out: &Path,
    data: Option<&Path>,
    temperature: Option<f64>,
    meta: Vec<(String, String)>,
) -> Result<()> {
    let (net, m) = open_checkpoint(checkpoint, Device::Cpu)?;
    let spec = spec_for(m.arch, m.input_size);
    let inputs = checkpoint_check_inputs(&m, &spec, data)?;
    let mut extra = run_metadata(
        &m.dataset,
        m.args.to_string(),
        m.open_world.as_ref().map(|ow| ow.to_string()),
    );
    extra.insert(
        keys::TEMPERATURE.into(),
        format!("{:.4}", temperature.or(m.temperature).unwrap_or(1.0)),
    );
    extra.insert(
        meta_keys::ACCURACY.into(),
        serde_json::json!({"valid": m.valid_acc, "hard_valid": m.hard_valid_acc}).to_string(),
    );
    // `--meta open_world=JSON` may replace the open world (new thresholds, say).
    extra.extend(meta);
    let parity = export_checked(&net, &spec, &m.classes, &extra, &inputs, out)
        .with_context(|| format!("exporting {}", checkpoint.display()))?;
    for p in parity {
        eprintln!("parity {p}");
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The parity check's inputs for a re-export: valid images (train ones when
/// there are none) from `data`, else from the dataset the checkpoint was
/// trained on; random inputs when neither is here.
fn checkpoint_check_inputs(
    m: &CheckpointMeta,
    spec: &PreprocessSpec,
    data: Option<&Path>,
) -> Result<Tensor> {
    let trained_on = || {
        m.args
            .get("data")
            .and_then(|d| d.as_str())
            .map(PathBuf::from)
    };
    match data.map(Path::to_path_buf).or_else(trained_on) {
        Some(d) if d.exists() => {
            let ds = Dataset::open(&d)?;
            let samples = if ds.valid.is_empty() {
                &ds.train
            } else {
                &ds.valid
            };
            real_inputs(samples, spec, 4)
        }
        _ => {
            eprintln!("note: dataset not found; parity checked on random inputs");
            let s = m.input_size as i64;
            Ok(Tensor::randn([2, 3, s, s], (Kind::Float, Device::Cpu)))
        }
    }
}

/// `training export-pretrained`: pretrained weights exported as they are (the
/// ImageNet classifier, say), to check the implementation against a reference.
pub fn export_pretrained(arch: Arch, pretrained: &Path, classes: usize, out: &Path) -> Result<()> {
    let mut net = Network::new(arch, classes as i64, 0.0, Device::Cpu);
    let r = load_pretrained(&mut net, pretrained)?;
    ensure!(
        r.head_reinitialised.is_empty(),
        "head shape differs: {:?}",
        r.head_reinitialised
    );
    let spec = spec_for(arch, 224);
    let labels: Vec<String> = (0..classes).map(|i| i.to_string()).collect();
    let inputs = Tensor::randn([2, 3, 224, 224], (Kind::Float, Device::Cpu));
    let parity = export_checked(&net, &spec, &labels, &BTreeMap::new(), &inputs, out)?;
    for p in parity {
        eprintln!("parity {p}");
    }
    Ok(())
}
