//! What every stage of a run reads: the flags, the dataset and its
//! preprocessing, the device, and the open world, opened once at the start.

use super::args::{DeviceChoice, TrainArgs};
use crate::data::{CorrectionsAdded, Dataset, Mode, Sample, spec_for};
use crate::eval::{Predictions, Reader, Scorer, predict};
use crate::weights::{CheckpointMeta, read_meta};
use anyhow::{Context, Result, bail};
use instrument_model::open_world::{NoneRule, OpenWorld};
use instrument_model::preprocess::PreprocessSpec;
use std::sync::Arc;
use tch::Device;

pub(crate) struct Ctx {
    pub(crate) args: TrainArgs,
    pub(crate) ds: Dataset,
    pub(crate) spec: PreprocessSpec,
    pub(crate) device: Device,
    pub(crate) workers: usize,
    /// The ImageNet expert and the `none` rule, when the ImageNet head is kept.
    pub(crate) open_world: Option<OpenWorld>,
    /// What `--corrections` added to the train split.
    pub(crate) corrections: Option<CorrectionsAdded>,
}

impl Ctx {
    /// Sets up the process (device, threads, seed), opens the dataset and
    /// creates the run folder. Libtorch's seed is set before anything draws
    /// from it, so a run is reproducible.
    pub(crate) fn open(args: &TrainArgs) -> Result<Ctx> {
        let device = pick_device(args.device)?;
        tch::set_num_threads(args.threads.unwrap_or_else(cores).max(1) as i32);
        tch::manual_seed(args.seed as i64);
        let mut ds = Dataset::open(&args.data)?;
        let corrections = match &args.corrections {
            Some(dir) => {
                let added = ds.add_corrections(dir, args.corrections_repeat)?;
                eprintln!(
                    "corrections: {} photos from {} added to train ({}x each); {} corrected to none left out",
                    added.photos,
                    dir.display(),
                    args.corrections_repeat.max(1),
                    added.none
                );
                Some(added)
            }
            None => None,
        };
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
        let open_world = planned_open_world(args, &ds.classes);
        Ok(Ctx {
            args: args.clone(),
            ds,
            spec,
            device,
            workers,
            open_world,
            corrections,
        })
    }

    /// How predictions are read: through the open world when it is kept.
    pub(crate) fn reader(&self) -> Option<Reader<'_>> {
        self.open_world.as_ref().map(|ow| Reader {
            open_world: ow,
            classes: &self.ds.classes,
        })
    }

    /// The metadata saved beside a checkpoint of this run.
    pub(crate) fn meta(
        &self,
        epoch: usize,
        valid: Option<f64>,
        hard: Option<f64>,
        t: Option<f64>,
    ) -> CheckpointMeta {
        CheckpointMeta {
            arch: self.args.arch,
            classes: self.ds.classes.clone(),
            input_size: self.spec.size,
            mean: self.spec.mean,
            std: self.spec.std,
            dropout: self.args.dropout,
            epoch,
            valid_acc: valid,
            hard_valid_acc: hard,
            temperature: t,
            dataset: self.args.dataset_name.clone(),
            args: serde_json::to_value(&self.args).unwrap_or_default(),
            created: chrono::Utc::now().to_rfc3339(),
            imagenet_classes: self
                .open_world
                .as_ref()
                .map(|ow| ow.imagenet_classes as i64),
            open_world: self
                .open_world
                .as_ref()
                .and_then(|ow| serde_json::to_value(ow).ok()),
        }
    }

    /// Valid (or hard-valid, or test) predictions in eval mode.
    pub(crate) fn evaluate(
        &self,
        scorer: &mut Scorer,
        samples: &Arc<Vec<Sample>>,
        mode: Mode,
    ) -> Result<Predictions> {
        predict(
            scorer,
            samples.clone(),
            &self.spec,
            mode,
            32,
            self.workers,
            self.args.seed,
        )
        .map(|p| p.read_with(self.reader()))
    }
}

fn pick_device(choice: DeviceChoice) -> Result<Device> {
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

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
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
