//! `training`: trains the instrument classifier and exports it to ONNX.
//! See training/README.md.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use training::train::TrainArgs;

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
        } => training::export::reexport_checkpoint(
            &checkpoint,
            &out,
            data.as_deref(),
            temperature,
            meta,
        )?,
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
        } => training::export::export_pretrained(arch, &pretrained, classes, &out)?,
    }
    Ok(())
}
