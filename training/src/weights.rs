//! Pretrained weights and checkpoints.
//!
//! `--pretrained` reads `.safetensors` (or a tch-loadable `.pt`) and checks every
//! name and shape against the network, saying exactly what did not match. The
//! classification head is the one layer allowed to differ in shape (1000
//! ImageNet classes vs ours); it then keeps its fresh initialisation.

use crate::nets::{Arch, IMAGENET_HEAD, Network};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// What a pretrained load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Head tensors whose shape differed (new class count): kept random.
    pub head_reinitialised: Vec<String>,
    /// Tensors in the file the network has no use for (`num_batches_tracked`).
    pub ignored: Vec<String>,
}

/// Reads every tensor of a weights file.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let hint = "PyTorch .pth state dicts (torchvision's, the Lite0 wheel's) cannot be read by libtorch's C++ loader; \
                convert once with `.venv/bin/python scripts/convert_weights.py IN.pth OUT.safetensors`";
    let tensors = if ext == "safetensors" {
        Tensor::read_safetensors(path)
            .with_context(|| format!("reading safetensors {}", path.display()))?
    } else {
        match Tensor::loadz_multi(path).or_else(|_| Tensor::load_multi(path)) {
            Ok(t) => t,
            Err(e) => bail!(
                "cannot read {} as a tch tensor archive ({e}). {hint}",
                path.display()
            ),
        }
    };
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            (
                name.strip_prefix("module.")
                    .map(str::to_string)
                    .unwrap_or(name),
                t,
            )
        })
        .collect())
}

/// Copies pretrained tensors into `net`, checking every name and shape.
pub fn load_pretrained(net: &mut Network, path: &Path) -> Result<LoadReport> {
    let file: BTreeMap<String, Tensor> = read_tensors(path)?.into_iter().collect();
    let vars = net.vs.variables();
    let mut report = LoadReport::default();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let head_prefix = format!("{}.", net.arch.head_name());
    for name in names {
        let var = &vars[name];
        // The kept ImageNet classifier is the file's own head.
        let file_name = if Network::is_imagenet_var(name) {
            name.replacen(&format!("{IMAGENET_HEAD}."), &head_prefix, 1)
        } else {
            name.clone()
        };
        match file.get(&file_name) {
            None => problems.push(format!(
                "missing in file: {file_name} (model needs shape {:?})",
                var.size()
            )),
            Some(t) if t.size() != var.size() => {
                if Network::is_imagenet_var(name) {
                    problems.push(format!(
                        "the ImageNet head to keep: {file_name} has shape {:?}, expected {:?} (is this an ImageNet checkpoint?)",
                        t.size(),
                        var.size()
                    ));
                } else if net.is_head_var(name) {
                    report.head_reinitialised.push(format!(
                        "{name}: file {:?}, model {:?}",
                        t.size(),
                        var.size()
                    ));
                } else {
                    problems.push(format!(
                        "shape mismatch: {name}: file has {:?}, model needs {:?}",
                        t.size(),
                        var.size()
                    ));
                }
            }
            Some(t) => {
                tch::no_grad(|| {
                    let mut v = var.shallow_clone();
                    v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
                });
                report.loaded += 1;
            }
        }
    }
    for name in file.keys() {
        if !vars.contains_key(name) {
            if name.ends_with("num_batches_tracked") {
                report.ignored.push(name.clone());
            } else {
                problems.push(format!(
                    "unexpected in file: {name} {:?}",
                    file[name].size()
                ));
            }
        }
    }
    if !problems.is_empty() {
        let shown: Vec<&String> = problems.iter().take(25).collect();
        let more = problems.len().saturating_sub(shown.len());
        bail!(
            "{} does not fit --arch {} ({} problem(s)):\n  {}{}",
            path.display(),
            net.arch.as_str(),
            problems.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if more > 0 {
                format!("\n  ... and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(report)
}

/// Everything needed to rebuild a network from its checkpoint (the JSON
/// file beside the `.safetensors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub arch: Arch,
    pub classes: Vec<String>,
    pub input_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub dropout: f64,
    /// Epochs completed.
    pub epoch: usize,
    pub valid_acc: Option<f64>,
    pub hard_valid_acc: Option<f64>,
    pub temperature: Option<f64>,
    pub dataset: String,
    pub args: serde_json::Value,
    pub created: String,
    /// Width of the kept ImageNet classifier (absent: none kept).
    #[serde(default)]
    pub imagenet_classes: Option<i64>,
    /// How the daemon reads the ImageNet logits and when it says `none`
    /// (`instrument_model::open_world::OpenWorld` as JSON).
    #[serde(default)]
    pub open_world: Option<serde_json::Value>,
}

pub fn meta_path(ckpt: &Path) -> PathBuf {
    ckpt.with_extension("json")
}

pub fn save_checkpoint(net: &Network, meta: &CheckpointMeta, path: &Path) -> Result<()> {
    let vars = net.vs.variables();
    let mut named: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = path.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&named, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    std::fs::write(meta_path(path), serde_json::to_string_pretty(meta)?)?;
    Ok(())
}

pub fn read_meta(ckpt: &Path) -> Result<CheckpointMeta> {
    let mp = meta_path(ckpt);
    let raw = std::fs::read_to_string(&mp)
        .with_context(|| format!("reading checkpoint metadata {}", mp.display()))?;
    serde_json::from_str(&raw).with_context(|| format!("parsing {}", mp.display()))
}

/// Loads a checkpoint's weights into `net`; every tensor must match exactly.
pub fn load_checkpoint_weights(net: &mut Network, path: &Path) -> Result<()> {
    let file: BTreeMap<String, Tensor> = read_tensors(path)?.into_iter().collect();
    let vars = net.vs.variables();
    for (name, var) in &vars {
        let t = file
            .get(name)
            .with_context(|| format!("checkpoint {} lacks {name}", path.display()))?;
        if t.size() != var.size() {
            bail!(
                "checkpoint {}: {name} has shape {:?}, model needs {:?}",
                path.display(),
                t.size(),
                var.size()
            );
        }
        tch::no_grad(|| {
            let mut v = var.shallow_clone();
            v.copy_(&t.to_device(v.device()));
        });
    }
    Ok(())
}

/// Rebuilds the network a checkpoint describes, on `device`.
pub fn open_checkpoint(path: &Path, device: tch::Device) -> Result<(Network, CheckpointMeta)> {
    let meta = read_meta(path)?;
    let classes = meta.classes.len() as i64;
    let mut net = match meta.imagenet_classes {
        Some(n) => Network::with_imagenet_head(meta.arch, classes, meta.dropout, device, n),
        None => Network::new(meta.arch, classes, meta.dropout, device),
    };
    load_checkpoint_weights(&mut net, path)?;
    Ok((net, meta))
}
