//! The epoch loop. A [`Trainer`] holds what the epochs share; each epoch
//! trains, validates, and is recorded (metrics.csv, the checkpoints, the best).

use super::context::Ctx;
use super::finish::finish;
use super::interrupt::interrupted;
use super::metrics::{self, EpochRow};
use super::report::FinalReport;
use super::schedule::Phases;
use super::setup;
use crate::crossfit::CrossFit;
use crate::data::{Batch, HARD_VARIANTS, Loader, Mode, Sample};
use crate::eval::{Predictions, Scorer, engine_run};
use crate::imagenet::Expert;
use crate::nets::Network;
use crate::rng::Rng;
use crate::weights::{load_checkpoint_weights, read_meta, save_checkpoint};
use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use instrument_model::engine::Classifier;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor, nn};

/// The best checkpoint's score: valid accuracy first, hard-valid accuracy
/// (0 without it) breaks ties.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Best {
    pub(crate) valid_acc: f64,
    pub(crate) hard_valid_acc: f64,
}

impl Best {
    fn beaten_by(self, other: Best) -> bool {
        other.valid_acc > self.valid_acc
            || (other.valid_acc == self.valid_acc && other.hard_valid_acc > self.hard_valid_acc)
    }
}

pub(crate) struct Trainer {
    ctx: Ctx,
    net: Network,
    opt: nn::Optimizer,
    best: Option<Best>,
    /// The frozen backbone on an inference engine, for the head-only epochs.
    backbone: Option<Box<dyn Classifier>>,
    /// Our head's starting rows, the L2-SP anchor (open world, fresh runs).
    anchor: Option<(Tensor, Tensor)>,
    expert: Option<Expert>,
    cross_fit: Option<CrossFit>,
    train: Arc<Vec<Sample>>,
    valid: Arc<Vec<Sample>>,
    mode: Mode,
    phases: Phases,
    start_epoch: usize,
    metrics_csv: PathBuf,
    amp: bool,
}

/// What one epoch's training batches measured.
struct EpochTrain {
    /// The learning rate of the last batch.
    lr: f64,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    started: Instant,
    seconds: f64,
}

impl EpochTrain {
    fn progress(&self) -> String {
        format!(
            "loss {:.4} acc {:.3} lr {:.2e} {:.1} img/s",
            self.loss_sum / self.seen as f64,
            self.correct as f64 / self.seen as f64,
            self.lr,
            self.seen as f64 / self.started.elapsed().as_secs_f64()
        )
    }
}

impl Trainer {
    /// Builds the network and everything the epochs share, in the order the
    /// seeded random draws expect.
    pub(crate) fn new(ctx: Ctx) -> Result<Trainer> {
        let mut net = setup::new_network(&ctx);
        let start = setup::load_start(&ctx, &mut net)?;
        let anchor = match (&ctx.open_world, ctx.args.resume.is_none()) {
            (Some(ow), true) => Some(setup::start_head_at_twins(&net, ow, &ctx.ds.classes)?),
            _ => None,
        };
        let expert = ctx
            .open_world
            .as_ref()
            .map(|ow| Expert::new(ow, &ctx.ds.classes, ctx.device));
        let cross_fit = setup::cross_fit(&ctx, anchor.as_ref())?;
        let train = Arc::new(ctx.ds.train.clone());
        let valid = Arc::new(ctx.ds.valid.clone());
        let mode = match ctx.args.augment.augment() {
            Some(a) => Mode::Augment(a),
            None => Mode::Plain,
        };
        let phases = Phases::new(&ctx.args, train.len());
        let opt = setup::optimizer(&ctx.args, &net)?;
        let metrics_csv = metrics::start_csv(&ctx.args.out, start.epoch)?;
        let amp = ctx.args.amp && ctx.device.is_cuda();
        let backbone = setup::frozen_backbone(&ctx, &net, start.epoch < phases.warmup)?;
        Ok(Trainer {
            ctx,
            net,
            opt,
            best: start.best,
            backbone,
            anchor,
            expert,
            cross_fit,
            train,
            valid,
            mode,
            phases,
            start_epoch: start.epoch,
            metrics_csv,
            amp,
        })
    }

    /// Trains the remaining epochs, then measures the chosen model.
    pub(crate) fn run(mut self, started: Instant) -> Result<FinalReport> {
        for epoch in self.start_epoch..self.ctx.args.epochs {
            self.epoch(epoch)?;
        }
        let best_epoch = self.choose_model()?;
        finish(&self.ctx, &self.net, best_epoch, started)
    }

    fn epoch(&mut self, epoch: usize) -> Result<()> {
        let frozen = self.phases.frozen(epoch);
        let trained = self.train_epoch(epoch)?;
        let (vp, hard) = self.validate(frozen)?;
        let seen = trained.seen.max(1) as f64;
        let row = EpochRow {
            epoch: epoch + 1,
            phase: phase_name(frozen),
            lr: trained.lr,
            train_loss: trained.loss_sum / seen,
            train_acc: trained.correct as f64 / seen,
            valid_loss: vp.nll(1.0),
            valid_acc: vp.accuracy(),
            hard_valid_acc: hard,
            seconds: trained.started.elapsed().as_secs_f64(),
            images_per_s: trained.seen as f64 / trained.seconds,
        };
        self.record_epoch(&row, &vp)
    }

    fn train_epoch(&mut self, epoch: usize) -> Result<EpochTrain> {
        let loader = self.loader(epoch);
        let bar = self.progress_bar(epoch);
        let mut t = EpochTrain {
            lr: self.phases.peak(epoch),
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            started: Instant::now(),
            seconds: 0.0,
        };
        for (i, batch) in loader.enumerate() {
            let batch = batch?;
            t.lr = self.phases.lr(epoch, i);
            let (loss, correct) = self.train_step(epoch, &batch, t.lr)?;
            let n = batch.labels.len();
            t.loss_sum += loss * n as f64;
            t.correct += correct;
            t.seen += n;
            bar.inc(1);
            bar.set_message(t.progress());
            if interrupted() {
                bar.abandon();
                return Err(self.save_interrupted(epoch));
            }
        }
        bar.finish_and_clear();
        t.seconds = t.started.elapsed().as_secs_f64();
        Ok(t)
    }

    /// This epoch's batches: the train split in a seeded order, cut to the
    /// epoch's steps.
    fn loader(&self, epoch: usize) -> Loader {
        let args = &self.ctx.args;
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        Rng::derive(args.seed, epoch as u64, 0xda7a).shuffle(&mut order);
        order.truncate(self.phases.steps_per_epoch * args.batch_size);
        Loader::new(
            self.train.clone(),
            order,
            args.batch_size,
            self.ctx.spec.clone(),
            self.mode,
            args.seed,
            epoch as u64,
            self.ctx.workers,
        )
    }

    fn progress_bar(&self, epoch: usize) -> ProgressBar {
        let bar = ProgressBar::new(self.phases.steps_per_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!(
            "epoch {}/{} {}",
            epoch + 1,
            self.ctx.args.epochs,
            phase_name(self.phases.frozen(epoch))
        ));
        bar
    }

    /// One optimizer step on `batch`; returns its mean loss and how many it
    /// got right.
    fn train_step(&mut self, epoch: usize, batch: &Batch, lr: f64) -> Result<(f64, usize)> {
        self.opt.set_lr(lr);
        let device = self.ctx.device;
        let n = batch.labels.len() as i64;
        let s = self.ctx.spec.size as i64;
        let x = Tensor::from_slice(&batch.images)
            .view([n, 3, s, s])
            .to_device(device);
        let y = Tensor::from_slice(&batch.labels).to_device(device);
        let (logits, features) = self.forward(epoch, batch, &x)?;
        let logits = self.logits_for_loss(logits);
        let loss = self.loss(&logits, &y);
        self.opt.zero_grad();
        loss.backward();
        if self.ctx.args.clip_value > 0.0 {
            self.opt.clip_grad_value(self.ctx.args.clip_value);
        }
        self.opt.step();
        if let (Some(cf), Some(f)) = (self.cross_fit.as_mut(), &features) {
            cf.train_step(f, &y, &batch.items, lr);
            if epoch + 1 == self.phases.warmup
                && let (Some(e), Some(imagenet)) = (&self.expert, self.net.imagenet_logits(f))
            {
                cf.collect(f, &imagenet, &y, &batch.items, e);
            }
        }
        let correct = logits
            .argmax(-1, false)
            .eq_tensor(&y)
            .sum(Kind::Int64)
            .int64_value(&[]) as usize;
        Ok((loss.double_value(&[]), correct))
    }

    /// The network's logits in training mode, and in head-only epochs the
    /// frozen features they came from.
    fn forward(
        &mut self,
        epoch: usize,
        batch: &Batch,
        x: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let amp = self.amp;
        if !self.phases.frozen(epoch) {
            let logits = tch::autocast(amp, || self.net.forward(x, true)).to_kind(Kind::Float);
            return Ok((logits, None));
        }
        let f = match self.backbone.as_mut() {
            Some(clf) => {
                let (n, s) = (batch.labels.len(), self.ctx.spec.size as usize);
                engine_run(clf.as_mut(), &batch.images, n, s)?.to_device(self.ctx.device)
            }
            None => tch::no_grad(|| tch::autocast(amp, || self.net.features(x, false)))
                .to_kind(Kind::Float),
        };
        Ok((self.net.head(&f, true), Some(f)))
    }

    /// The logits the loss sees: with the ImageNet expert combined in when it
    /// trains in the loss, else our own.
    fn logits_for_loss(&self, logits: Tensor) -> Tensor {
        match (&self.expert, self.ctx.args.expert_in_loss) {
            (Some(e), true) => e.combine(&logits),
            // Our own logits; the ImageNet ones that follow do not train.
            (Some(_), false) => logits.narrow(1, 0, self.ctx.ds.classes.len() as i64),
            (None, _) => logits,
        }
    }

    /// Cross-entropy (label-smoothed), plus the L2-SP pull toward the anchor.
    fn loss(&self, logits: &Tensor, y: &Tensor) -> Tensor {
        let args = &self.ctx.args;
        let mut loss = logits.cross_entropy_loss::<Tensor>(
            y,
            None,
            tch::Reduction::Mean,
            -100,
            args.label_smoothing,
        );
        if let (Some(anchor), true) = (&self.anchor, args.l2sp > 0.0) {
            let (w, b) = self.net.head_weights();
            loss += crate::imagenet::drift(w, b, anchor) * args.l2sp;
        }
        loss
    }

    /// Saves interrupted.safetensors after Ctrl-C; the error that stops the run.
    fn save_interrupted(&self, epoch: usize) -> anyhow::Error {
        let p = self.ctx.args.out.join("interrupted.safetensors");
        if let Err(e) = save_checkpoint(&self.net, &self.ctx.meta(epoch, None, None, None), &p) {
            return e;
        }
        anyhow!(
            "interrupted during epoch {}: weights saved to {} (resume with --resume {} to redo that epoch)",
            epoch + 1,
            p.display(),
            p.display()
        )
    }

    /// Valid predictions, and the hard-valid accuracy when asked for.
    fn validate(&mut self, frozen: bool) -> Result<(Predictions, Option<f64>)> {
        let mut scorer = match (frozen, self.backbone.as_mut()) {
            (true, Some(clf)) => Scorer::EngineBackbone(clf.as_mut(), &self.net),
            _ => Scorer::Tch(&self.net),
        };
        let vp = self.ctx.evaluate(&mut scorer, &self.valid, Mode::Plain)?;
        let hard = if self.ctx.args.hard_valid {
            let hard_mode = Mode::Hard {
                variants: HARD_VARIANTS.len(),
            };
            Some(
                self.ctx
                    .evaluate(&mut scorer, &self.valid, hard_mode)?
                    .accuracy(),
            )
        } else {
            None
        };
        Ok((vp, hard))
    }

    /// Logs the epoch, appends it to metrics.csv, saves last.safetensors (and
    /// best.safetensors when it is the best so far), and redraws the curves.
    fn record_epoch(&mut self, row: &EpochRow, vp: &Predictions) -> Result<()> {
        let out = &self.ctx.args.out;
        metrics::log(row, self.ctx.args.epochs, vp.correct(), vp.labels.len());
        metrics::append(&self.metrics_csv, row)?;
        let m = self
            .ctx
            .meta(row.epoch, Some(row.valid_acc), row.hard_valid_acc, None);
        save_checkpoint(&self.net, &m, &out.join("last.safetensors"))?;
        let score = Best {
            valid_acc: row.valid_acc,
            hard_valid_acc: row.hard_valid_acc.unwrap_or(0.0),
        };
        if self.best.is_none_or(|b| b.beaten_by(score)) {
            self.best = Some(score);
            save_checkpoint(&self.net, &m, &out.join("best.safetensors"))?;
            eprintln!("  new best checkpoint (epoch {})", row.epoch);
        }
        metrics::plot(out)
    }

    /// The model to export: the last epoch's head with the cross-fitted bias
    /// when there is one, else the best checkpoint. Returns its epoch.
    fn choose_model(&mut self) -> Result<usize> {
        match self.cross_fit.as_ref().and_then(CrossFit::fit_bias) {
            // The bias belongs to the last epoch's head (the one the half-data
            // heads trained beside), so that head is the model.
            Some(beta) => self.add_bias(&beta),
            None => {
                let best_path = self.ctx.args.out.join("best.safetensors");
                load_checkpoint_weights(&mut self.net, &best_path)?;
                Ok(read_meta(&best_path)?.epoch)
            }
        }
    }

    /// Folds the cross-fitted bias into our head's bias (so the exported graph
    /// carries it) and saves the result as `calibrated.safetensors`.
    fn add_bias(&self, beta: &Tensor) -> Result<usize> {
        let (_, b) = self.net.head_weights();
        let b = b.context("our head has no bias to fold the cross-fitted bias into")?;
        tch::no_grad(|| {
            let mut b = b.shallow_clone();
            b += beta.to_device(b.device());
        });
        let shown: Vec<String> = self
            .ctx
            .ds
            .classes
            .iter()
            .zip(crate::nets::to_vec(beta))
            .map(|(c, v)| format!("{c} {v:+.2}"))
            .collect();
        eprintln!(
            "cross-fitted bias ({} held-out images of the last epoch): {}",
            self.cross_fit.as_ref().map_or(0, CrossFit::held_out_len),
            shown.join(", ")
        );
        let epoch = self.ctx.args.epochs;
        save_checkpoint(
            &self.net,
            &self.ctx.meta(epoch, None, None, None),
            &self.ctx.args.out.join("calibrated.safetensors"),
        )?;
        Ok(epoch)
    }
}

fn phase_name(frozen: bool) -> &'static str {
    if frozen { "head" } else { "full" }
}
