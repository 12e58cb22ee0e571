//! The per-label bias that makes the product of experts fair to every label.
//!
//! The ImageNet expert speaks for the 16 labels it has twins for and only
//! weakly for the 14 it does not, so adding `w * ln q` to a probe trained on
//! its own tilts every close call toward a twinned label (a bongo toward
//! "drums"). A bias per label, fitted on the combined logits, undoes exactly
//! that tilt. Fitted on the probe's own training images it would be fitted on
//! answers the probe has memorised, so it is fitted *cross-fitted*: two extra
//! heads train beside the real one, each on half of the images (by index
//! parity), and the bias is fitted on each head's logits for the other half.
//! The heads cost almost nothing: they share the frozen features the real
//! head trains on, which are the expensive part.

use crate::imagenet::{Expert, drift};
use anyhow::Result;
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

/// Strength of the pull of the bias toward zero (it has 30 values and
/// thousands of images: this only keeps it finite for a label never seen).
const BIAS_DECAY: f64 = 1e-3;
const BIAS_STEPS: usize = 400;

/// The two half-data heads and the held-out logits they produce.
pub struct CrossFit {
    _vs: nn::VarStore,
    heads: [nn::Linear; 2],
    opt: nn::Optimizer,
    anchor: (Tensor, Tensor),
    l2sp: f64,
    label_smoothing: f64,
    /// Out-of-fold combined logits (rows of `labels` values) and their labels.
    held_out: Vec<(Tensor, Tensor)>,
}

/// How the half-data heads are trained: as the real head is.
pub struct HeadRecipe {
    pub features: i64,
    pub labels: i64,
    pub l2sp: f64,
    pub label_smoothing: f64,
    pub weight_decay: f64,
    pub device: Device,
}

impl CrossFit {
    /// Two heads starting at `anchor` (the real head's starting rows).
    pub fn new(recipe: &HeadRecipe, anchor: (&Tensor, &Tensor)) -> Result<CrossFit> {
        let vs = nn::VarStore::new(recipe.device);
        let head = |k: usize| {
            let l = nn::linear(
                vs.root() / format!("half{k}"),
                recipe.features,
                recipe.labels,
                Default::default(),
            );
            tch::no_grad(|| {
                l.ws.shallow_clone().copy_(anchor.0);
                if let Some(b) = &l.bs {
                    b.shallow_clone().copy_(anchor.1);
                }
            });
            l
        };
        let heads = [head(0), head(1)];
        let opt = nn::AdamW {
            wd: recipe.weight_decay,
            ..Default::default()
        }
        .build(&vs, 1e-3)?;
        Ok(CrossFit {
            _vs: vs,
            heads,
            opt,
            anchor: (anchor.0.detach(), anchor.1.detach()),
            l2sp: recipe.l2sp,
            label_smoothing: recipe.label_smoothing,
            held_out: Vec::new(),
        })
    }

    /// Rows of `items` (indices into the training list) in half `k`.
    fn half(items: &[usize], k: usize, device: Device) -> Tensor {
        let rows: Vec<i64> = (0..items.len())
            .filter(|&r| items[r] % 2 == k)
            .map(|r| r as i64)
            .collect();
        Tensor::from_slice(&rows).to_device(device)
    }

    /// One step of each head on its half of the batch, at learning rate `lr`.
    pub fn train_step(&mut self, features: &Tensor, y: &Tensor, items: &[usize], lr: f64) {
        self.opt.set_lr(lr);
        let mut loss = Tensor::zeros([], (Kind::Float, features.device()));
        for (k, head) in self.heads.iter().enumerate() {
            let rows = Self::half(items, k, features.device());
            if rows.size()[0] == 0 {
                continue;
            }
            let logits = features.index_select(0, &rows).apply(head);
            loss += logits.cross_entropy_loss::<Tensor>(
                &y.index_select(0, &rows),
                None,
                tch::Reduction::Mean,
                -100,
                self.label_smoothing,
            );
            if self.l2sp > 0.0 {
                loss += drift(&head.ws, head.bs.as_ref(), &self.anchor) * self.l2sp;
            }
        }
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();
    }

    /// Keeps each image's combined logits from the head that did not train on it.
    pub fn collect(
        &mut self,
        features: &Tensor,
        imagenet: &Tensor,
        y: &Tensor,
        items: &[usize],
        expert: &Expert,
    ) {
        tch::no_grad(|| {
            for (k, head) in self.heads.iter().enumerate() {
                let rows = Self::half(items, 1 - k, features.device());
                if rows.size()[0] == 0 {
                    continue;
                }
                let own = features.index_select(0, &rows).apply(head);
                let raw = Tensor::cat(&[own, imagenet.index_select(0, &rows)], 1);
                self.held_out
                    .push((expert.combine(&raw), y.index_select(0, &rows)));
            }
        });
    }

    /// The bias (one value per label, mean zero) that makes the held-out
    /// combined logits most likely; `None` if nothing was collected.
    pub fn fit_bias(&self) -> Option<Tensor> {
        if self.held_out.is_empty() {
            return None;
        }
        let z = Tensor::cat(&self.held_out.iter().map(|(z, _)| z).collect::<Vec<_>>(), 0).detach();
        let y = Tensor::cat(&self.held_out.iter().map(|(_, y)| y).collect::<Vec<_>>(), 0);
        let vs = nn::VarStore::new(z.device());
        let beta = vs.root().zeros("beta", &[z.size()[1]]);
        let mut opt = nn::Adam::default().build(&vs, 0.05).ok()?;
        for _ in 0..BIAS_STEPS {
            let loss = (&z + &beta).cross_entropy_for_logits(&y)
                + beta.square().sum(Kind::Float) * BIAS_DECAY;
            opt.zero_grad();
            loss.backward();
            opt.step();
        }
        let beta = beta.detach();
        Some(&beta - beta.mean(Kind::Float))
    }

    /// Images collected so far.
    pub fn held_out_len(&self) -> i64 {
        self.held_out.iter().map(|(z, _)| z.size()[0]).sum()
    }
}
