//! The training loop: the seed's recipe (Adam, one-cycle, weight decay,
//! gradient clipping by value, dropout, batch 16) plus label smoothing,
//! head-only warm-up with a frozen backbone, augmentation, a hard validation,
//! best-checkpoint selection, resume, Ctrl-C, and the run folder's reports.

use crate::crossfit::{CrossFit, HeadRecipe};
use crate::data::{Augment, Dataset, HARD_VARIANTS, Loader, Mode, Sample, spec_for};
use crate::eval::{
    Predictions, Reader, Scorer, confused_pairs, engine_run, per_class_table, predict,
};
use crate::export::export_checked;
use crate::imagenet::Expert;
use crate::nets::{Arch, Network};
use crate::rng::Rng;
use crate::weights::{
    CheckpointMeta, load_checkpoint_weights, load_pretrained, read_meta, save_checkpoint,
};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use instrument_model::engine::{self, BackendChoice, Classifier, EngineOptions};
use instrument_model::open_world::{NoneRule, OpenWorld};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

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
    /// Dataset name recorded in the model metadata.
    #[arg(long, default_value = "instruments (30 classes)")]
    pub dataset_name: String,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler once: the first press asks the loop to save a
/// checkpoint and stop; a second press exits at once.
pub fn install_ctrlc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond Ctrl-C: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to quit now)");
        });
    });
}

/// One-cycle learning rate (cosine up from max/25, cosine down to max/25e4).
pub fn one_cycle(step: usize, total: usize, max_lr: f64, pct_start: f64) -> f64 {
    let total = total.max(1) as f64;
    let up = (pct_start * total).max(1.0);
    let s = step as f64;
    let (start, end) = (max_lr / 25.0, max_lr / 25.0 / 1e4);
    let cos = |a: f64, b: f64, t: f64| {
        b + (a - b) * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos()) / 2.0
    };
    if s < up {
        cos(start, max_lr, s / up)
    } else {
        cos(max_lr, end, (s - up) / (total - up).max(1.0))
    }
}

pub fn pick_device(choice: DeviceChoice) -> Result<Device> {
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda: libtorch sees no CUDA device");
            }
            Device::Cuda(0)
        }
        DeviceChoice::Auto => Device::cuda_if_available(),
    })
}

/// The open-world description this run will build, if it keeps the ImageNet
/// head: asked for, and there are ImageNet weights to take it from (or a
/// checkpoint that already has it).
fn planned_open_world(args: &TrainArgs, classes: &[String]) -> Option<OpenWorld> {
    if !args.open_world {
        return None;
    }
    if let Some(resume) = &args.resume {
        return read_meta(resume)
            .ok()?
            .open_world
            .and_then(|v| serde_json::from_value(v).ok());
    }
    if !args.pretrained.as_ref().is_some_and(|p| p.is_file()) {
        eprintln!(
            "note: no ImageNet weights, so no ImageNet head to keep: this model will have no `none` rule"
        );
        return None;
    }
    let rule = NoneRule {
        max_instrument_mass: args.none_max_mass as f32,
        max_confidence: args.none_max_confidence as f32,
    };
    Some(crate::imagenet::open_world(
        classes,
        args.expert_weight as f32,
        rule,
    ))
}

/// Starts our head at the ImageNet twins' rows and returns those rows (the
/// L2-SP anchor).
fn start_head_at_twins(
    net: &Network,
    ow: &OpenWorld,
    classes: &[String],
) -> Result<(Tensor, Tensor)> {
    let (iw, ib) = net
        .imagenet_weights()
        .context("the network has no ImageNet head to start from")?;
    let (w0, b0) = crate::imagenet::anchor_rows(iw, ib, ow, classes);
    let (w, b) = net.head_weights();
    tch::no_grad(|| {
        w.shallow_clone().copy_(&w0);
        if let Some(b) = b {
            b.shallow_clone().copy_(&b0);
        }
    });
    eprintln!(
        "open world: ImageNet head kept; our head starts at the twins' rows for {} of {} labels (expert weight {}, none rule: mass < {}, confidence < {})",
        ow.twins.len(),
        classes.len(),
        ow.expert_weight,
        ow.none_rule.max_instrument_mass,
        ow.none_rule.max_confidence
    );
    Ok((w0, b0))
}

/// Folds the cross-fitted bias into our head's bias (so the exported graph
/// carries it) and saves the result as `calibrated.safetensors`.
fn add_bias(ctx: &Ctx, net: &Network, beta: &Tensor, cf: Option<&CrossFit>) -> Result<usize> {
    let (_, b) = net.head_weights();
    let b = b.context("our head has no bias to fold the cross-fitted bias into")?;
    tch::no_grad(|| {
        let mut b = b.shallow_clone();
        b += beta.to_device(b.device());
    });
    let shown: Vec<String> = ctx
        .ds
        .classes
        .iter()
        .zip(crate::nets::to_vec(beta))
        .map(|(c, v)| format!("{c} {v:+.2}"))
        .collect();
    eprintln!(
        "cross-fitted bias ({} held-out images of the last epoch): {}",
        cf.map_or(0, CrossFit::held_out_len),
        shown.join(", ")
    );
    let epoch = ctx.args.epochs;
    save_checkpoint(
        net,
        &meta(ctx, epoch, None, None, None),
        &ctx.args.out.join("calibrated.safetensors"),
    )?;
    Ok(epoch)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub phase: &'static str,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub valid_loss: f64,
    pub valid_acc: f64,
    pub hard_valid_acc: Option<f64>,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// What a finished run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FinalReport {
    pub best_epoch: usize,
    pub valid_acc: f64,
    pub hard_valid_acc: Option<f64>,
    pub hard_valid_per_variant: BTreeMap<String, f64>,
    pub test_acc: f64,
    pub test_correct: usize,
    pub test_total: usize,
    pub temperature: f64,
    pub valid_ece_t1: f64,
    pub valid_ece: f64,
    pub test_ece: f64,
    pub train_seconds: f64,
    pub parity: Vec<String>,
    /// The `none` rule (open-world models): how many photos it called `none`.
    pub none: Option<NoneReport>,
}

/// What the `none` rule did on each set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoneReport {
    pub valid_called_none: usize,
    pub valid_total: usize,
    pub test_called_none: usize,
    pub test_total: usize,
    pub negatives_called_none: usize,
    pub negatives_total: usize,
}

pub struct Ctx {
    pub args: TrainArgs,
    pub ds: Dataset,
    pub spec: instrument_model::preprocess::PreprocessSpec,
    pub device: Device,
    pub workers: usize,
    /// The ImageNet expert and the `none` rule, when the ImageNet head is kept.
    pub open_world: Option<OpenWorld>,
}

impl Ctx {
    fn reader(&self) -> Option<Reader<'_>> {
        self.open_world.as_ref().map(|ow| Reader {
            open_world: ow,
            classes: &self.ds.classes,
        })
    }
}

pub fn meta(
    ctx: &Ctx,
    epoch: usize,
    valid: Option<f64>,
    hard: Option<f64>,
    t: Option<f64>,
) -> CheckpointMeta {
    CheckpointMeta {
        arch: ctx.args.arch,
        classes: ctx.ds.classes.clone(),
        input_size: ctx.spec.size,
        mean: ctx.spec.mean,
        std: ctx.spec.std,
        dropout: ctx.args.dropout,
        epoch,
        valid_acc: valid,
        hard_valid_acc: hard,
        temperature: t,
        dataset: ctx.args.dataset_name.clone(),
        args: serde_json::to_value(&ctx.args).unwrap_or_default(),
        created: chrono::Utc::now().to_rfc3339(),
        imagenet_classes: ctx.open_world.as_ref().map(|ow| ow.imagenet_classes as i64),
        open_world: ctx
            .open_world
            .as_ref()
            .and_then(|ow| serde_json::to_value(ow).ok()),
    }
}

/// Valid (or hard-valid) predictions in eval mode.
fn evaluate(
    ctx: &Ctx,
    scorer: &mut Scorer,
    samples: &Arc<Vec<Sample>>,
    mode: Mode,
) -> Result<Predictions> {
    predict(
        scorer,
        samples.clone(),
        &ctx.spec,
        mode,
        32,
        ctx.workers,
        ctx.args.seed,
    )
    .map(|p| p.read_with(ctx.reader()))
}

fn loss_of(p: &Predictions) -> f64 {
    p.nll(1.0)
}

pub fn run(args: TrainArgs) -> Result<FinalReport> {
    install_ctrlc();
    let started = Instant::now();
    let device = pick_device(args.device)?;
    tch::set_num_threads(args.threads.unwrap_or_else(cores).max(1) as i32);
    tch::manual_seed(args.seed as i64);
    let ds = Dataset::open(&args.data)?;
    if ds.train.is_empty() || ds.valid.is_empty() {
        bail!(
            "{}: the train and valid splits must both hold images",
            args.data.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let spec = spec_for(args.arch, args.size.unwrap_or(args.arch.native_size()));
    let workers = args.workers.unwrap_or_else(cores).max(1);
    eprintln!(
        "data: {} classes, train {} / valid {} / test {} images; device {:?}; {} torch threads, {} loader threads",
        ds.classes.len(),
        ds.train.len(),
        ds.valid.len(),
        ds.test.len(),
        device,
        tch::get_num_threads(),
        workers
    );
    let open_world = planned_open_world(&args, &ds.classes);
    let ctx = Ctx {
        args: args.clone(),
        ds,
        spec,
        device,
        workers,
        open_world,
    };
    let classes = ctx.ds.classes.len() as i64;
    let mut net = match &ctx.open_world {
        Some(ow) => Network::with_imagenet_head(
            args.arch,
            classes,
            args.dropout,
            device,
            ow.imagenet_classes as i64,
        ),
        None => Network::new(args.arch, classes, args.dropout, device),
    };

    let mut start_epoch = 0;
    let mut best: Option<(f64, f64, usize)> = None;
    if let Some(resume) = &args.resume {
        let m = read_meta(resume)?;
        if m.arch != args.arch || m.classes != ctx.ds.classes {
            bail!(
                "--resume {}: checkpoint is {} over {} classes; this run is {} over {}",
                resume.display(),
                m.arch.as_str(),
                m.classes.len(),
                args.arch.as_str(),
                ctx.ds.classes.len()
            );
        }
        load_checkpoint_weights(&mut net, resume)?;
        start_epoch = m.epoch;
        if let Ok(b) = read_meta(&args.out.join("best.safetensors")) {
            best = Some((
                b.valid_acc.unwrap_or(0.0),
                b.hard_valid_acc.unwrap_or(0.0),
                b.epoch,
            ));
        }
        eprintln!(
            "resumed from {} after epoch {start_epoch} (optimizer moments start afresh)",
            resume.display()
        );
    } else {
        match &args.pretrained {
            Some(p) if p.is_file() => {
                let r = load_pretrained(&mut net, p)?;
                eprintln!(
                    "pretrained: {} tensors loaded from {}, {} ignored ({}), head re-initialised: {}",
                    r.loaded,
                    p.display(),
                    r.ignored.len(),
                    if r.ignored.is_empty() {
                        "none"
                    } else {
                        "num_batches_tracked"
                    },
                    if r.head_reinitialised.is_empty() {
                        "no".to_string()
                    } else {
                        r.head_reinitialised.join("; ")
                    }
                );
            }
            Some(p) => eprintln!(
                "warning: --pretrained {} does not exist: starting from RANDOM initialisation",
                p.display()
            ),
            None => {
                eprintln!("warning: no --pretrained weights: starting from RANDOM initialisation")
            }
        }
    }

    let anchor = match (&ctx.open_world, args.resume.is_none()) {
        (Some(ow), true) => Some(start_head_at_twins(&net, ow, &ctx.ds.classes)?),
        _ => None,
    };
    let expert = ctx
        .open_world
        .as_ref()
        .map(|ow| Expert::new(ow, &ctx.ds.classes, device));
    // The cross-fitted bias needs fixed features (a linear probe) and an
    // expert left out of the loss.
    let mut cross_fit = match (&anchor, args.expert_in_loss) {
        (Some((w0, b0)), false) if args.warmup_epochs >= args.epochs => Some(CrossFit::new(
            &HeadRecipe {
                features: args.arch.feature_dim(),
                labels: classes,
                l2sp: args.l2sp,
                label_smoothing: args.label_smoothing,
                weight_decay: args.weight_decay,
                device,
            },
            (w0, b0),
        )?),
        _ => None,
    };
    let train = Arc::new(ctx.ds.train.clone());
    let valid = Arc::new(ctx.ds.valid.clone());
    let mode = match args.augment.augment() {
        Some(a) => Mode::Augment(a),
        None => Mode::Plain,
    };
    let steps_per_epoch = {
        let full = train.len().div_ceil(args.batch_size);
        args.max_batches.map_or(full, |m| m.min(full))
    };
    let warmup = args.warmup_epochs.min(args.epochs);
    let warm_lr = args.warmup_lr.unwrap_or(args.lr);
    let mut opt = match args.optimizer {
        OptimizerKind::Adam => nn::Adam {
            wd: args.weight_decay,
            ..Default::default()
        }
        .build(&net.vs, args.lr)?,
        OptimizerKind::Adamw => nn::AdamW {
            wd: args.weight_decay,
            ..Default::default()
        }
        .build(&net.vs, args.lr)?,
    };
    let metrics_path = args.out.join("metrics.csv");
    if start_epoch == 0 || !metrics_path.exists() {
        std::fs::write(
            &metrics_path,
            "epoch,phase,lr,train_loss,train_acc,valid_loss,valid_acc,hard_valid_acc,seconds,images_per_s\n",
        )?;
    }
    let s = ctx.spec.size as i64;
    let amp = args.amp && device.is_cuda();
    let mut backbone: Option<Box<dyn Classifier>> = None;
    if start_epoch < warmup && args.frozen_features != FeatureEngine::Tch && !device.is_cuda() {
        let check = real_inputs(&ctx.ds.valid, &ctx.spec, 2)?;
        backbone = crate::export::open_backbone_engine(&net, &ctx.spec, &check);
        if backbone.is_none() && args.frozen_features == FeatureEngine::Ort {
            bail!(
                "--frozen-features ort: ONNX Runtime could not run the backbone (see the note above)"
            );
        }
    }

    for epoch in start_epoch..args.epochs {
        let frozen = epoch < warmup;
        let (phase_step0, phase_steps, max_lr) = if frozen {
            (epoch * steps_per_epoch, warmup * steps_per_epoch, warm_lr)
        } else {
            (
                (epoch - warmup) * steps_per_epoch,
                (args.epochs - warmup) * steps_per_epoch,
                args.lr,
            )
        };
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::derive(args.seed, epoch as u64, 0xda7a).shuffle(&mut order);
        order.truncate(steps_per_epoch * args.batch_size);
        let loader = Loader::new(
            train.clone(),
            order,
            args.batch_size,
            ctx.spec.clone(),
            mode,
            args.seed,
            epoch as u64,
            workers,
        );
        let bar = ProgressBar::new(steps_per_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!(
            "epoch {}/{} {}",
            epoch + 1,
            args.epochs,
            if frozen { "head" } else { "full" }
        ));
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = max_lr;
        for (i, batch) in loader.enumerate() {
            let batch = batch?;
            lr = one_cycle(phase_step0 + i, phase_steps, max_lr, args.pct_start);
            opt.set_lr(lr);
            let n = batch.labels.len() as i64;
            let x = Tensor::from_slice(&batch.images)
                .view([n, 3, s, s])
                .to_device(device);
            let y = Tensor::from_slice(&batch.labels).to_device(device);
            let (logits, features) = if frozen {
                let f = match backbone.as_mut() {
                    Some(clf) => engine_run(clf.as_mut(), &batch.images, n as usize, s as usize)?
                        .to_device(device),
                    None => tch::no_grad(|| tch::autocast(amp, || net.features(&x, false)))
                        .to_kind(Kind::Float),
                };
                (net.head(&f, true), Some(f))
            } else {
                (
                    tch::autocast(amp, || net.forward(&x, true)).to_kind(Kind::Float),
                    None,
                )
            };
            let logits = match (&expert, args.expert_in_loss) {
                (Some(e), true) => e.combine(&logits),
                // Our own logits; the ImageNet ones that follow do not train.
                (Some(_), false) => logits.narrow(1, 0, classes),
                (None, _) => logits,
            };
            let mut loss = logits.cross_entropy_loss::<Tensor>(
                &y,
                None,
                tch::Reduction::Mean,
                -100,
                args.label_smoothing,
            );
            if let (Some(anchor), true) = (&anchor, args.l2sp > 0.0) {
                let (w, b) = net.head_weights();
                loss += crate::imagenet::drift(w, b, anchor) * args.l2sp;
            }
            opt.zero_grad();
            loss.backward();
            if args.clip_value > 0.0 {
                opt.clip_grad_value(args.clip_value);
            }
            opt.step();
            if let (Some(cf), Some(f)) = (cross_fit.as_mut(), &features) {
                cf.train_step(f, &y, &batch.items, lr);
                if epoch + 1 == warmup
                    && let (Some(e), Some(imagenet)) = (&expert, net.imagenet_logits(f))
                {
                    cf.collect(f, &imagenet, &y, &batch.items, e);
                }
            }
            let l = loss.double_value(&[]);
            loss_sum += l * n as f64;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]) as usize;
            seen += n as usize;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} lr {:.2e} {:.1} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                lr,
                seen as f64 / t0.elapsed().as_secs_f64()
            ));
            if INTERRUPTED.load(Ordering::SeqCst) {
                bar.abandon();
                let p = args.out.join("interrupted.safetensors");
                save_checkpoint(&net, &meta(&ctx, epoch, None, None, None), &p)?;
                bail!(
                    "interrupted during epoch {}: weights saved to {} (resume with --resume {} to redo that epoch)",
                    epoch + 1,
                    p.display(),
                    p.display()
                );
            }
        }
        bar.finish_and_clear();
        let train_secs = t0.elapsed().as_secs_f64();
        let mut scorer = match (frozen, backbone.as_mut()) {
            (true, Some(clf)) => Scorer::EngineBackbone(clf.as_mut(), &net),
            _ => Scorer::Tch(&net),
        };
        let vp = evaluate(&ctx, &mut scorer, &valid, Mode::Plain)?;
        let hard = if args.hard_valid {
            Some(
                evaluate(
                    &ctx,
                    &mut scorer,
                    &valid,
                    Mode::Hard {
                        variants: HARD_VARIANTS.len(),
                    },
                )?
                .accuracy(),
            )
        } else {
            None
        };
        let row = EpochRow {
            epoch: epoch + 1,
            phase: if frozen { "head" } else { "full" },
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            valid_loss: loss_of(&vp),
            valid_acc: vp.accuracy(),
            hard_valid_acc: hard,
            seconds: t0.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_secs,
        };
        eprintln!(
            "epoch {:>2}/{} [{}] train loss {:.4} acc {:.4} | valid loss {:.4} acc {:.4} ({}/{}) | hard-valid {} | {:.0} s, {:.1} img/s",
            row.epoch,
            args.epochs,
            row.phase,
            row.train_loss,
            row.train_acc,
            row.valid_loss,
            row.valid_acc,
            vp.correct(),
            vp.labels.len(),
            hard.map_or("-".into(), |h| format!("{h:.4}")),
            row.seconds,
            row.images_per_s
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&metrics_path)?;
        writeln!(
            f,
            "{},{},{:.6e},{:.5},{:.5},{:.5},{:.5},{},{:.1},{:.2}",
            row.epoch,
            row.phase,
            row.lr,
            row.train_loss,
            row.train_acc,
            row.valid_loss,
            row.valid_acc,
            row.hard_valid_acc
                .map_or(String::new(), |h| format!("{h:.5}")),
            row.seconds,
            row.images_per_s
        )?;
        let m = meta(&ctx, epoch + 1, Some(row.valid_acc), hard, None);
        save_checkpoint(&net, &m, &args.out.join("last.safetensors"))?;
        let key = (row.valid_acc, hard.unwrap_or(0.0));
        if best.is_none_or(|(v, h, _)| key.0 > v || (key.0 == v && key.1 > h)) {
            best = Some((key.0, key.1, epoch + 1));
            save_checkpoint(&net, &m, &args.out.join("best.safetensors"))?;
            eprintln!("  new best checkpoint (epoch {})", epoch + 1);
        }
        plot_metrics(&args.out)?;
    }

    let best_path = args.out.join("best.safetensors");
    let best_epoch = match cross_fit.as_ref().and_then(CrossFit::fit_bias) {
        // The bias belongs to the last epoch's head (the one the half-data
        // heads trained beside), so that head is the model.
        Some(beta) => add_bias(&ctx, &net, &beta, cross_fit.as_ref())?,
        None => {
            load_checkpoint_weights(&mut net, &best_path)?;
            read_meta(&best_path)?.epoch
        }
    };
    let mut report = finish(&ctx, &net, best_epoch, &args.out)?;
    report.train_seconds = started.elapsed().as_secs_f64();
    std::fs::write(
        args.out.join("final.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}

/// Re-reads metrics.csv and draws curves.png.
pub fn plot_metrics(out: &Path) -> Result<()> {
    let mut rdr = csv::Reader::from_path(out.join("metrics.csv"))?;
    let (mut tl, mut vl, mut ta, mut va, mut ha) = (vec![], vec![], vec![], vec![], vec![]);
    for rec in rdr.records() {
        let r = rec?;
        let num = |i: usize| r.get(i).and_then(|v| v.parse::<f64>().ok());
        tl.push(num(3).unwrap_or(0.0));
        ta.push(num(4).unwrap_or(0.0));
        vl.push(num(5).unwrap_or(0.0));
        va.push(num(6).unwrap_or(0.0));
        if let Some(h) = num(7) {
            ha.push(h);
        }
    }
    crate::plot::curves(&out.join("curves.png"), &[tl, vl], &[ta, va, ha])?;
    Ok(())
}

/// After training: the checked ONNX export, then every final number measured
/// on that exported file through the daemon's engine (ONNX Runtime, else
/// tract): temperature on valid, hard-valid detail, test once, reports.
pub fn finish(ctx: &Ctx, net: &Network, best_epoch: usize, out: &Path) -> Result<FinalReport> {
    let valid = Arc::new(ctx.ds.valid.clone());
    let model_path = out.join("model.onnx");
    let mut parity = Vec::new();
    let mut engine_clf: Option<Box<dyn Classifier>> = None;
    let mut measured_on = "tch".to_string();
    if !ctx.args.no_export {
        let mut extra = BTreeMap::new();
        extra.insert("dataset".to_string(), ctx.args.dataset_name.clone());
        extra.insert(
            "date".to_string(),
            chrono::Utc::now().format("%Y-%m-%d").to_string(),
        );
        extra.insert(
            "training_args".to_string(),
            serde_json::to_string(&ctx.args)?,
        );
        if let Some(ow) = &ctx.open_world {
            extra.insert(
                instrument_model::open_world::KEY.to_string(),
                ow.to_metadata(),
            );
        }
        let inputs = real_inputs(&ctx.ds.valid, &ctx.spec, 4)?;
        let p = export_checked(
            net,
            &ctx.spec,
            &ctx.ds.classes,
            &extra,
            &inputs,
            &model_path,
        )?;
        for x in &p {
            eprintln!("export parity: {x}");
        }
        parity = p.iter().map(|x| x.to_string()).collect();
        let model = instrument_model::model::LoadedModel::load(&model_path)?;
        for choice in [BackendChoice::OrtCpu, BackendChoice::Tract] {
            if let Ok((c, _)) = engine::open(&model, choice, &EngineOptions::default()) {
                measured_on = format!("{} on the exported model.onnx", c.backend());
                engine_clf = Some(c);
                break;
            }
        }
    }
    let mut scorer = match engine_clf.as_mut() {
        Some(c) => Scorer::Engine(c.as_mut()),
        None => Scorer::Tch(net),
    };
    eprintln!("final numbers measured with {measured_on}");
    let vp = evaluate(ctx, &mut scorer, &valid, Mode::Plain)?;
    let (t, hard_acc, per_variant) = if ctx.args.hard_valid {
        let hp = evaluate(
            ctx,
            &mut scorer,
            &valid,
            Mode::Hard {
                variants: HARD_VARIANTS.len(),
            },
        )?;
        let pv = hp.per_variant(HARD_VARIANTS.len());
        // Valid alone is nearly all right, so a temperature fitted on it
        // alone is overconfident for the world; the hard variants are not.
        (
            vp.joined(&hp).fit_temperature(),
            Some(hp.accuracy()),
            HARD_VARIANTS
                .iter()
                .map(|s| s.to_string())
                .zip(pv)
                .collect(),
        )
    } else {
        (vp.fit_temperature(), None, BTreeMap::new())
    };
    let test = Arc::new(ctx.ds.test.clone());
    let mut test_none = 0;
    let (test_acc, test_correct, test_ece, md) = if test.is_empty() {
        (f64::NAN, 0, f64::NAN, String::from("(no test split)\n"))
    } else {
        let tp = evaluate(ctx, &mut scorer, &test, Mode::Plain)?;
        test_none = count(&tp.called_none(ctx.open_world.as_ref()));
        let k = ctx.ds.classes.len();
        let cm = tp.confusion(k);
        crate::plot::confusion(&out.join("confusion.png"), &cm)?;
        let mut md = per_class_table(&cm, &ctx.ds.classes);
        let pairs = confused_pairs(&cm, &ctx.ds.classes);
        md += &format!(
            "\nConfused (true -> predicted): {}\n",
            if pairs.is_empty() {
                "none".into()
            } else {
                pairs.join(", ")
            }
        );
        md += "\nconfusion.png: rows = true class, columns = predicted, in this label order: ";
        md += &ctx.ds.classes.join(", ");
        md += "\n";
        (tp.accuracy(), tp.correct(), tp.ece(t), md)
    };
    let none = match &ctx.open_world {
        Some(ow) => Some(none_report(ctx, &mut scorer, ow, &vp, test_none)?),
        None => None,
    };
    if model_path.is_file() && !ctx.args.no_export {
        // Record calibration and accuracy in the model's metadata (weights untouched).
        let model = instrument_model::model::LoadedModel::load(&model_path)?;
        let mut spec = model.spec.clone();
        // Four decimals are plenty, and keep the metadata readable.
        spec.temperature = ((t * 1e4).round() / 1e4) as f32;
        spec.metadata.insert(
            "accuracy".to_string(),
            serde_json::json!({"valid": vp.accuracy(), "hard_valid": hard_acc, "test": test_acc})
                .to_string(),
        );
        let mut proto = (*model.proto).clone();
        instrument_model::onnx::set_metadata(&mut proto, &spec.to_metadata());
        std::fs::write(&model_path, instrument_model::onnx::encode(&proto))?;
        instrument_model::model::LoadedModel::load(&model_path)?;
        eprintln!("wrote {} (temperature {t:.3})", model_path.display());
    }
    let report_md = format!(
        "# Run report\n\nbest epoch {best_epoch}; measured with {measured_on}\n\n| split | accuracy |\n|---|---:|\n| valid | {:.4} ({}/{}) |\n| hard valid | {} |\n| test | {:.4} ({}/{}) |\n\n\
         Temperature fitted on valid and hard valid: {t:.3}; ECE on valid {:.4} at T=1, {:.4} at T; ECE on test at T {:.4}\n\n\
         Hard valid per distortion: {}\n\n## Test, per class\n\n{md}",
        vp.accuracy(),
        vp.correct(),
        vp.labels.len(),
        hard_acc.map_or("-".into(), |h| format!("{h:.4}")),
        test_acc,
        test_correct,
        test.len(),
        vp.ece(1.0),
        vp.ece(t),
        test_ece,
        per_variant
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let report_md = match &none {
        Some(n) => format!(
            "{report_md}\n## The `none` rule\n\ncalled `none`: valid {}/{}, test {}/{}, negatives {}/{}\n",
            n.valid_called_none,
            n.valid_total,
            n.test_called_none,
            n.test_total,
            n.negatives_called_none,
            n.negatives_total
        ),
        None => report_md,
    };
    std::fs::write(out.join("report.md"), &report_md)?;
    eprintln!("{report_md}");
    Ok(FinalReport {
        best_epoch,
        valid_acc: vp.accuracy(),
        hard_valid_acc: hard_acc,
        hard_valid_per_variant: per_variant,
        test_acc,
        test_correct,
        test_total: test.len(),
        temperature: t,
        valid_ece_t1: vp.ece(1.0),
        valid_ece: vp.ece(t),
        test_ece,
        train_seconds: 0.0,
        parity,
        none,
    })
}

fn count(flags: &[bool]) -> usize {
    flags.iter().filter(|&&f| f).count()
}

/// Runs the `none` rule on valid, test and `--negatives`.
fn none_report(
    ctx: &Ctx,
    scorer: &mut Scorer,
    ow: &OpenWorld,
    vp: &Predictions,
    test_called_none: usize,
) -> Result<NoneReport> {
    let (mut negatives_called_none, mut negatives_total) = (0, 0);
    if let Some(dir) = &ctx.args.negatives {
        let paths = crate::data::images_under(dir)?;
        let samples: Vec<Sample> = paths
            .into_iter()
            .map(|path| Sample { path, label: 0 })
            .collect();
        negatives_total = samples.len();
        let np = evaluate(ctx, scorer, &Arc::new(samples), Mode::Plain)?;
        negatives_called_none = count(&np.called_none(Some(ow)));
    }
    Ok(NoneReport {
        valid_called_none: count(&vp.called_none(Some(ow))),
        valid_total: vp.labels.len(),
        test_called_none,
        test_total: ctx.ds.test.len(),
        negatives_called_none,
        negatives_total,
    })
}

/// The first `n` images of `samples`, preprocessed like the daemon does.
pub fn real_inputs(
    samples: &[Sample],
    spec: &instrument_model::preprocess::PreprocessSpec,
    n: usize,
) -> Result<Tensor> {
    let n = n.min(samples.len()).max(1);
    let len = spec.tensor_len();
    let mut data = vec![0f32; n * len];
    for (i, s) in samples.iter().take(n).enumerate() {
        crate::data::load_plain(&s.path, spec, &mut data[i * len..(i + 1) * len])?;
    }
    let sz = spec.size as i64;
    Ok(Tensor::from_slice(&data).view([n as i64, 3, sz, sz]))
}
