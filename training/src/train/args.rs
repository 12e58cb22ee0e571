//! `training train`'s flags: every recipe setting, and the choices they take.

use crate::data::Augment;
use crate::nets::Arch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AugmentLevel {
    /// No augmentation (the original recipe).
    None,
    /// Random resized crop (scale 0.5..1), horizontal flip, light colour jitter.
    Light,
    /// Random resized crop down to a quarter, flip, colour jitter, grayscale, blur.
    Strong,
    /// Like the world's photos: crop (scale 0.3..1), flip, jitter, a little
    /// grayscale and blur, and half the time the instrument small in a synthetic scene.
    Scene,
}

impl AugmentLevel {
    pub fn augment(self) -> Option<Augment> {
        match self {
            AugmentLevel::None => None,
            AugmentLevel::Light => Some(Augment {
                min_scale: 0.5,
                hflip: true,
                jitter: 0.15,
                grayscale: 0.0,
                blur: 0.0,
                scene: 0.0,
            }),
            AugmentLevel::Strong => Some(Augment {
                min_scale: 0.25,
                hflip: true,
                jitter: 0.3,
                grayscale: 0.1,
                blur: 0.1,
                scene: 0.0,
            }),
            AugmentLevel::Scene => Some(Augment {
                min_scale: 0.3,
                hflip: true,
                jitter: 0.25,
                grayscale: 0.05,
                blur: 0.1,
                scene: 0.5,
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureEngine {
    Auto,
    Tch,
    Ort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else the CPU (all cores).
    Auto,
    Cpu,
    Cuda,
}

/// `training train`: every recipe setting is a flag whose default is the
/// original work's value (ResNet50 recipe: Adam, one-cycle to 0.01, weight
/// decay 1e-4, clip 0.1, dropout 0.5, batch 16, 15 epochs, no augmentation).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Dataset: a folder with train/ valid/ test/ (each <class>/<image>), or the dataset CSV.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "efficientnet-lite0")]
    pub arch: Arch,
    /// ImageNet weights (.safetensors or tch .pt). Missing: random initialisation, with a warning.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Total epochs, warm-up included.
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    /// Run folder (checkpoints, metrics, plots, report, model.onnx).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerKind,
    /// Peak learning rate of the one-cycle schedule (after warm-up).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// One-cycle: fraction of the steps spent rising to the peak.
    #[arg(long, default_value_t = 0.3)]
    pub pct_start: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Clip every gradient value to [-v, v] (0 disables).
    #[arg(long, default_value_t = 0.1)]
    pub clip_value: f64,
    /// Dropout before the final linear layer.
    #[arg(long, default_value_t = 0.5)]
    pub dropout: f64,
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Head-only epochs first, backbone frozen (batch-norm statistics included).
    /// Equal to --epochs: a linear probe (the backbone is never trained).
    #[arg(long, default_value_t = 0)]
    pub warmup_epochs: usize,
    /// Peak learning rate of the head-only phase (its own one-cycle). Default: --lr.
    #[arg(long)]
    pub warmup_lr: Option<f64>,
    #[arg(long, value_enum, default_value = "none")]
    pub augment: AugmentLevel,
    /// Square input side in pixels (default: the architecture's own, 224 for
    /// Lite0 and ResNet50, 240 for Lite1, 260 for Lite2).
    #[arg(long)]
    pub size: Option<u32>,
    /// Keep the backbone's ImageNet classifier (from --pretrained) beside our
    /// head: it joins the answer as a product of experts, and tells whether a
    /// photo shows any instrument at all (the `none` rule). Needs ImageNet weights.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub open_world: bool,
    /// Weight of the ImageNet expert: combined = ours + W * ln q (see
    /// `instrument_model::open_world`). In the training loss only with
    /// --expert-in-loss; otherwise the cross-fitted bias is fitted for it.
    #[arg(long, default_value_t = 0.5)]
    pub expert_weight: f64,
    /// `none` rule: the ImageNet probability on instrument classes must be below this...
    #[arg(long, default_value_t = 0.03)]
    pub none_max_mass: f64,
    /// ...and the combined best probability, uncalibrated (at temperature 1), below this.
    #[arg(long, default_value_t = 0.9)]
    pub none_max_confidence: f64,
    /// Put the ImageNet expert into the training loss (our head then learns
    /// what the expert lacks, and learns to cancel it). Off: our head trains
    /// alone, and a cross-fitted per-label bias balances the expert afterwards
    /// (see `crossfit`); that measured better on photos from elsewhere.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub expert_in_loss: bool,
    /// L2-SP: pull our head toward its starting rows (the ImageNet twins' rows,
    /// zero for labels without a twin) with this strength, instead of toward zero
    /// (use with --weight-decay 0). 0 disables.
    #[arg(long, default_value_t = 0.0)]
    pub l2sp: f64,
    /// Photos that show no instrument (a flat folder, or folders of them): the
    /// final report says how many the `none` rule catches. Never trained on.
    #[arg(long)]
    pub negatives: Option<PathBuf>,
    /// Decoding threads (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// libtorch compute threads (default: number of CPUs); fewer leaves cores for other work.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Mixed precision (bf16 autocast) on CUDA.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub amp: bool,
    /// Continue from a checkpoint (.safetensors with its .json) of this run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Also score the hard validation (valid images distorted 9 ways) each epoch.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub hard_valid: bool,
    /// Stop each epoch after this many batches (smoke tests).
    #[arg(long, hide = true)]
    pub max_batches: Option<usize>,
    /// Where the frozen backbone's features come from during head-only epochs:
    /// ONNX Runtime on the exported backbone (parity-checked against tch, several
    /// times faster on a CPU), tch, or auto (ONNX Runtime when it opens).
    #[arg(long, value_enum, default_value = "auto")]
    pub frozen_features: FeatureEngine,
    /// Skip the ONNX export at the end.
    #[arg(long)]
    pub no_export: bool,
    /// A person's corrections, `DIR/<label>/<photo>` (what `instrument-detector
    /// correct --export DIR` writes): added to the train split. Photos
    /// corrected to `none` are counted and left out (the `none` rule is not
    /// learnt from examples).
    #[arg(long, value_name = "DIR")]
    pub corrections: Option<PathBuf>,
    /// Refuse the new model if it answers more than one valid image fewer
    /// than this one (the model in use): it is then left as
    /// `model.refused.onnx`, never `model.onnx`, and the run fails.
    #[arg(long, value_name = "MODEL")]
    pub no_worse_than: Option<PathBuf>,
    /// Each corrected photo goes into the train split this many times.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub corrections_repeat: usize,
    /// Dataset name recorded in the model metadata.
    #[arg(long, default_value = "instruments (30 classes)")]
    pub dataset_name: String,
}
