//! `instrument-detector quantize`: writes a statically quantised (INT8, QDQ)
//! copy of a model, calibrated on a folder of images. See
//! `instrument_detector::quantize` for what is quantised and why.

use anyhow::{Context, Result, bail};
use instrument_detector::batch::expand_paths;
use instrument_detector::model::LoadedModel;
use instrument_detector::onnx;
use instrument_detector::quantize::{self, QuantizeError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// The fp32 model to quantise.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Folder of calibration images (searched recursively), e.g. the validation
    /// split. They should look like what the daemon will see.
    #[arg(long, value_name = "DIR")]
    pub calibration: PathBuf,
    /// Where to write the quantised model (default: MODEL with `.int8.onnx`).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Use at most this many calibration images (spread evenly over the folder).
    #[arg(long, default_value = "200", value_name = "N")]
    pub max_images: usize,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Route deep 1x1 convs to ONNX Runtime's int8 GEMM, which runs on AMX
    /// tiles (weight zero point -1; the numbers are unchanged). `auto`: on
    /// when this CPU has AMX-INT8, where it measured faster; elsewhere the
    /// VNNI conv kernel is the better choice.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub amx: Amx,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amx {
    Auto,
    On,
    Off,
}

pub fn run(a: QuantizeArgs) -> Result<ExitCode> {
    let out = a.out.clone().unwrap_or_else(|| a.model.with_extension("int8.onnx"));
    if out.exists() && !a.force {
        bail!("{} exists; pass --force to overwrite it", out.display());
    }
    let model = LoadedModel::load(&a.model)?;
    if quantize::is_quantized(&model.proto) {
        bail!("{} is already quantised (metadata quantization=int8-qdq)", a.model.display());
    }
    let mut images = expand_paths(std::slice::from_ref(&a.calibration))?;
    if images.is_empty() {
        bail!("no files under {}", a.calibration.display());
    }
    if a.max_images > 0 && images.len() > a.max_images {
        let step = images.len() as f64 / a.max_images as f64;
        images = (0..a.max_images).map(|i| images[(i as f64 * step) as usize].clone()).collect();
    }
    let names = quantize::activations_to_quantize(&model.proto)?;
    let started = Instant::now();
    eprintln!("calibrating {} activations on {} images (fp32 model, tract)...", names.len(), images.len());
    let ranges = quantize::calibrate(&model, &images, &names, |_, _| {}).map_err(|e| match e {
        QuantizeError::NoImages(why) => {
            anyhow::anyhow!("no usable calibration images under {}: {why}", a.calibration.display())
        }
        other => anyhow::Error::new(other),
    })?;
    let mut extra = BTreeMap::new();
    extra.insert("quantization_calibration".to_string(), format!("{} images, min/max", images.len()));
    extra.insert("quantized_from_sha256".to_string(), model.sha256.clone());
    let options = match a.amx {
        Amx::Auto => quantize::QuantizeOptions::for_this_cpu(),
        Amx::On => quantize::QuantizeOptions { gemm_route_min_channels: Some(quantize::AMX_MIN_CHANNELS) },
        Amx::Off => quantize::QuantizeOptions::default(),
    };
    let (q, report) = quantize::quantize_model(&model.proto, &ranges, &extra, &options)?;
    let bytes = onnx::encode(&q);
    // Check what we wrote loads as a model before putting it in place.
    LoadedModel::from_bytes(&out, bytes.clone()).context("the quantised model does not load")?;
    let tmp = out.with_extension("onnx.tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    eprintln!(
        "wrote {} ({:.1} MB, from {:.1} MB): {} weight tensors int8 per-channel, {} activations uint8, in {:.1}s",
        out.display(),
        bytes.len() as f64 / 1e6,
        model.bytes.len() as f64 / 1e6,
        report.weights,
        report.activations,
        started.elapsed().as_secs_f64()
    );
    match options.gemm_route_min_channels {
        Some(m) => {
            eprintln!("{} 1x1 convs with >= {m} input channels routed to the int8 GEMM (AMX)", report.gemm_routed)
        }
        None => eprintln!("no conv routed to the int8 GEMM (--amx off, or no AMX-INT8 on this CPU)"),
    }
    for s in &report.skipped_weights {
        eprintln!("note: kept in float: {s}");
    }
    Ok(ExitCode::SUCCESS)
}
