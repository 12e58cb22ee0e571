//! What a run builds before its first epoch: the network (resumed, or from
//! the pretrained weights), the open world's starting head and cross-fit, the
//! optimizer, and the frozen backbone's engine.

use super::args::{FeatureEngine, OptimizerKind, TrainArgs};
use super::context::Ctx;
use super::trainer::Best;
use crate::crossfit::{CrossFit, HeadRecipe};
use crate::export::{open_backbone_engine, real_inputs};
use crate::nets::Network;
use crate::weights::{load_checkpoint_weights, load_pretrained, read_meta};
use anyhow::{Context, Result, bail};
use instrument_model::engine::Classifier;
use instrument_model::open_world::OpenWorld;
use std::path::Path;
use tch::{Tensor, nn, nn::OptimizerConfig};

/// This run's network: our head, and the backbone's ImageNet head beside it
/// when the open world keeps that.
pub(crate) fn new_network(ctx: &Ctx) -> Network {
    let args = &ctx.args;
    let classes = ctx.ds.classes.len() as i64;
    match &ctx.open_world {
        Some(ow) => Network::with_imagenet_head(
            args.arch,
            classes,
            args.dropout,
            ctx.device,
            ow.imagenet_classes as i64,
        ),
        None => Network::new(args.arch, classes, args.dropout, ctx.device),
    }
}

/// Where the epochs start.
pub(crate) struct Start {
    /// Epochs already done (0 unless resumed).
    pub(crate) epoch: usize,
    /// The best checkpoint so far in the run folder (resumed runs only).
    pub(crate) best: Option<Best>,
}

/// Loads the `--resume` checkpoint, else the `--pretrained` weights (or
/// warns that the network starts from random weights).
pub(crate) fn load_start(ctx: &Ctx, net: &mut Network) -> Result<Start> {
    match &ctx.args.resume {
        Some(resume) => resume_from(ctx, net, resume),
        None => {
            load_pretrained_or_warn(net, ctx.args.pretrained.as_deref())?;
            Ok(Start {
                epoch: 0,
                best: None,
            })
        }
    }
}

fn resume_from(ctx: &Ctx, net: &mut Network, resume: &Path) -> Result<Start> {
    let args = &ctx.args;
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
    load_checkpoint_weights(net, resume)?;
    let best = read_meta(&args.out.join("best.safetensors"))
        .ok()
        .map(|b| Best {
            valid_acc: b.valid_acc.unwrap_or(0.0),
            hard_valid_acc: b.hard_valid_acc.unwrap_or(0.0),
        });
    eprintln!(
        "resumed from {} after epoch {} (optimizer moments start afresh)",
        resume.display(),
        m.epoch
    );
    Ok(Start {
        epoch: m.epoch,
        best,
    })
}

fn load_pretrained_or_warn(net: &mut Network, pretrained: Option<&Path>) -> Result<()> {
    match pretrained {
        Some(p) if p.is_file() => {
            let r = load_pretrained(net, p)?;
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
    Ok(())
}

/// Starts our head at the ImageNet twins' rows and returns those rows (the
/// L2-SP anchor).
pub(crate) fn start_head_at_twins(
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

/// The cross-fit of the expert's bias, when this run allows one: it needs
/// fixed features (a linear probe) and an expert left out of the loss.
pub(crate) fn cross_fit(ctx: &Ctx, anchor: Option<&(Tensor, Tensor)>) -> Result<Option<CrossFit>> {
    let args = &ctx.args;
    Ok(match (anchor, args.expert_in_loss) {
        (Some((w0, b0)), false) if args.warmup_epochs >= args.epochs => Some(CrossFit::new(
            &HeadRecipe {
                features: args.arch.feature_dim(),
                labels: ctx.ds.classes.len() as i64,
                l2sp: args.l2sp,
                label_smoothing: args.label_smoothing,
                weight_decay: args.weight_decay,
                device: ctx.device,
            },
            (w0, b0),
        )?),
        _ => None,
    })
}

pub(crate) fn optimizer(args: &TrainArgs, net: &Network) -> Result<nn::Optimizer> {
    let wd = args.weight_decay;
    Ok(match args.optimizer {
        OptimizerKind::Adam => nn::Adam {
            wd,
            ..Default::default()
        }
        .build(&net.vs, args.lr)?,
        OptimizerKind::Adamw => nn::AdamW {
            wd,
            ..Default::default()
        }
        .build(&net.vs, args.lr)?,
    })
}

/// The frozen backbone on ONNX Runtime, for head-only epochs on a CPU (where
/// it is several times faster than tch). `None`: the features come from tch.
pub(crate) fn frozen_backbone(
    ctx: &Ctx,
    net: &Network,
    head_only_epochs_left: bool,
) -> Result<Option<Box<dyn Classifier>>> {
    let wanted = ctx.args.frozen_features;
    if !head_only_epochs_left || wanted == FeatureEngine::Tch || ctx.device.is_cuda() {
        return Ok(None);
    }
    let check = real_inputs(&ctx.ds.valid, &ctx.spec, 2)?;
    let backbone = open_backbone_engine(net, &ctx.spec, &check);
    if backbone.is_none() && wanted == FeatureEngine::Ort {
        bail!(
            "--frozen-features ort: ONNX Runtime could not run the backbone (see the note above)"
        );
    }
    Ok(backbone)
}
