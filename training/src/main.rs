//! `training`: trains the instrument classifier and exports it to ONNX.
//! See training/README.md.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use training::train::{TrainArgs, real_inputs};

#[derive(Parser)]
#[command(
    name = "training",
    version,
    about = "Train the instrument classifier (tch) and export it to a self-describing ONNX model"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train (or fine-tune) a network; leaves checkpoints, metrics, plots, a report and model.onnx in --out.
    Train(Box<TrainArgs>),
    /// Re-export a checkpoint to ONNX without retraining (parity-checked against tch).
    Export {
        /// A checkpoint .safetensors written by `training train` (its .json must sit beside it).
        checkpoint: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Dataset whose valid images feed the parity check (default: the one the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Softmax temperature to record (default: the checkpoint's, else 1).
        #[arg(long)]
        temperature: Option<f64>,
        /// Extra metadata, KEY=VALUE (repeatable).
        #[arg(long = "meta", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
    },
    /// Measure an exported model through the daemon's decode, preprocessing and
    /// engine: valid, hard valid (per distortion), test, calibration, and
    /// whether full-size photos and their thumbnails get the same answer.
    Evaluate {
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        backend: instrument_model::engine::BackendChoice,
        /// Valid images to re-encode as 4000x3000 JPEGs for the size check (0 skips it).
        #[arg(long, default_value_t = 30)]
        big: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Export pretrained weights as they are (e.g. the 1000-class ImageNet
    /// classifier) to check the implementation against a reference.
    #[command(hide = true)]
    ExportPretrained {
        #[arg(long, value_enum)]
        arch: training::nets::Arch,
        #[arg(long)]
        pretrained: PathBuf,
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train(args) => {
            let r = training::train::run(*args)?;
            eprintln!("{}", serde_json::to_string_pretty(&r)?);
        }
        Cmd::Export {
            checkpoint,
            out,
            data,
            temperature,
            meta,
        } => {
            let (net, m) = training::weights::open_checkpoint(&checkpoint, tch::Device::Cpu)?;
            let spec = training::data::spec_for(m.arch, m.input_size);
            let inputs = match data.or_else(|| {
                m.args
                    .get("data")
                    .and_then(|d| d.as_str())
                    .map(PathBuf::from)
            }) {
                Some(d) if d.exists() => {
                    let ds = training::data::Dataset::open(&d)?;
                    real_inputs(
                        if ds.valid.is_empty() {
                            &ds.train
                        } else {
                            &ds.valid
                        },
                        &spec,
                        4,
                    )?
                }
                _ => {
                    eprintln!("note: dataset not found; parity checked on random inputs");
                    tch::Tensor::randn(
                        [2, 3, m.input_size as i64, m.input_size as i64],
                        (tch::Kind::Float, tch::Device::Cpu),
                    )
                }
            };
            let mut extra: BTreeMap<String, String> = BTreeMap::new();
            extra.insert(
                "temperature".into(),
                format!("{:.4}", temperature.or(m.temperature).unwrap_or(1.0)),
            );
            extra.insert("dataset".into(), m.dataset.clone());
            extra.insert(
                "accuracy".into(),
                serde_json::json!({"valid": m.valid_acc, "hard_valid": m.hard_valid_acc})
                    .to_string(),
            );
            extra.insert(
                "date".into(),
                chrono::Utc::now().format("%Y-%m-%d").to_string(),
            );
            extra.insert("training_args".into(), m.args.to_string());
            if let Some(ow) = &m.open_world {
                // `--meta open_world=JSON` may replace it (new thresholds, say).
                extra.insert(instrument_model::open_world::KEY.into(), ow.to_string());
            }
            extra.extend(meta);
            let parity =
                training::export::export_checked(&net, &spec, &m.classes, &extra, &inputs, &out)
                    .with_context(|| format!("exporting {}", checkpoint.display()))?;
            for p in parity {
                eprintln!("parity {p}");
            }
            eprintln!("wrote {}", out.display());
        }
        Cmd::Evaluate {
            model,
            data,
            backend,
            big,
            seed,
        } => training::evaluate::run(&model, &data, backend, big, seed)?,
        Cmd::ExportPretrained {
            arch,
            pretrained,
            classes,
            out,
        } => {
            let mut net = training::nets::Network::new(arch, classes as i64, 0.0, tch::Device::Cpu);
            let r = training::weights::load_pretrained(&mut net, &pretrained)?;
            anyhow::ensure!(
                r.head_reinitialised.is_empty(),
                "head shape differs: {:?}",
                r.head_reinitialised
            );
            let spec = training::data::spec_for(arch, 224);
            let labels: Vec<String> = (0..classes).map(|i| i.to_string()).collect();
            let inputs = tch::Tensor::randn([2, 3, 224, 224], (tch::Kind::Float, tch::Device::Cpu));
            let parity = training::export::export_checked(
                &net,
                &spec,
                &labels,
                &BTreeMap::new(),
                &inputs,
                &out,
            )?;
            for p in parity {
                eprintln!("parity {p}");
            }
        }
    }
    Ok(())
}
