//! Predictions, accuracy, confusion, calibration (ECE, temperature) and the
//! hard validation.

use crate::data::{Loader, Mode, Sample};
use crate::nets::Network;
use anyhow::Result;
use instrument_model::calibration::expected_calibration_error;
use instrument_model::engine::Classifier;
use instrument_model::model::softmax;
use instrument_model::open_world::OpenWorld;
use instrument_model::preprocess::PreprocessSpec;
use ndarray::ArrayView4;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Logits of every item (for an open-world model, the combined logits), with labels.
pub struct Predictions {
    pub logits: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    /// ImageNet probability on instrument classes (open-world models only).
    pub instrument_mass: Vec<f32>,
}

/// How to read an open-world model's rows: the daemon's own reading.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub open_world: &'a OpenWorld,
    pub classes: &'a [String],
}

/// What turns a batch of preprocessed images into logits.
pub enum Scorer<'a> {
    /// The tch network, eval mode.
    Tch(&'a Network),
    /// The frozen backbone on an inference engine, the head in tch.
    EngineBackbone(&'a mut dyn Classifier, &'a Network),
    /// A whole exported model on an inference engine (what the daemon runs).
    Engine(&'a mut dyn Classifier),
}

/// Runs an engine on `n` images of side `size`; returns a CPU float `[n, width]` tensor.
pub fn engine_run(
    clf: &mut dyn Classifier,
    images: &[f32],
    n: usize,
    size: usize,
) -> Result<Tensor> {
    let view = ArrayView4::from_shape((n, 3, size, size), images)?;
    let out = clf.run(view)?;
    let width = out.shape()[1] as i64;
    let flat: Vec<f32> = out.iter().copied().collect();
    Ok(Tensor::from_slice(&flat).view([n as i64, width]))
}

impl Scorer<'_> {
    /// Logits `[n, classes]` on the CPU.
    pub fn logits(&mut self, images: &[f32], n: usize, size: usize) -> Result<Tensor> {
        let s = size as i64;
        Ok(match self {
            Scorer::Tch(net) => {
                let x = Tensor::from_slice(images)
                    .view([n as i64, 3, s, s])
                    .to_device(net.vs.device());
                tch::no_grad(|| net.forward(&x, false))
            }
            Scorer::EngineBackbone(clf, net) => {
                let f = engine_run(&mut **clf, images, n, size)?.to_device(net.vs.device());
                tch::no_grad(|| net.head(&f, false))
            }
            Scorer::Engine(clf) => engine_run(&mut **clf, images, n, size)?,
        }
        .to_device(Device::Cpu)
        .to_kind(Kind::Float))
    }
}

/// Scores `samples` (or their hard variants) in order.
pub fn predict(
    scorer: &mut Scorer,
    samples: Arc<Vec<Sample>>,
    spec: &PreprocessSpec,
    mode: Mode,
    batch: usize,
    workers: usize,
    seed: u64,
) -> Result<Predictions> {
    let items = match mode {
        Mode::Hard { variants } => samples.len() * variants,
        _ => samples.len(),
    };
    let loader = Loader::new(
        samples,
        (0..items).collect(),
        batch,
        spec.clone(),
        mode,
        seed,
        u64::MAX,
        workers,
    );
    let mut out = Predictions {
        logits: Vec::with_capacity(items),
        labels: Vec::with_capacity(items),
        instrument_mass: Vec::new(),
    };
    for b in loader {
        let b = b?;
        let n = b.labels.len();
        let logits = scorer.logits(&b.images, n, spec.size as usize)?;
        let k = logits.size()[1] as usize;
        let flat = crate::nets::to_vec(&logits);
        for (i, l) in b.labels.iter().enumerate() {
            out.logits.push(flat[i * k..(i + 1) * k].to_vec());
            out.labels.push(*l as usize);
        }
    }
    Ok(out)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

impl Predictions {
    /// Raw output rows read as the daemon reads them: for an open-world
    /// model, the combined logits and the ImageNet instrument mass.
    pub fn read_with(self, reader: Option<Reader>) -> Predictions {
        let Some(r) = reader else { return self };
        let (logits, instrument_mass) = self
            .logits
            .iter()
            .map(|row| {
                let reading = r.open_world.read(r.classes, row);
                (reading.logits, reading.instrument_mass)
            })
            .unzip();
        Predictions {
            logits,
            labels: self.labels,
            instrument_mass,
        }
    }

    pub fn correct(&self) -> usize {
        self.logits
            .iter()
            .zip(&self.labels)
            .filter(|(l, y)| argmax(l) == **y)
            .count()
    }

    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.labels.len().max(1) as f64
    }

    /// Mean negative log-likelihood at temperature `t`.
    pub fn nll(&self, t: f64) -> f64 {
        let mut sum = 0.0;
        for (row, &y) in self.logits.iter().zip(&self.labels) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&v| ((v as f64 - m) / t).exp())
                .sum::<f64>()
                .ln();
            sum += lse - (row[y] as f64 - m) / t;
        }
        sum / self.labels.len().max(1) as f64
    }

    /// Expected calibration error at temperature `t`
    /// ([`expected_calibration_error`], the daemon's `evaluate` uses the same).
    pub fn ece(&self, t: f64) -> f64 {
        expected_calibration_error(self.logits.iter().zip(&self.labels).map(|(row, &y)| {
            let p = softmax(row, t as f32);
            let k = argmax(&p);
            (p[k] as f64, k == y)
        }))
    }

    /// These predictions followed by `other`'s (for fitting one temperature on both).
    pub fn joined(&self, other: &Predictions) -> Predictions {
        Predictions {
            logits: self.logits.iter().chain(&other.logits).cloned().collect(),
            labels: self.labels.iter().chain(&other.labels).copied().collect(),
            instrument_mass: self
                .instrument_mass
                .iter()
                .chain(&other.instrument_mass)
                .copied()
                .collect(),
        }
    }

    /// The temperature minimising NLL (grid over log T, then refined).
    pub fn fit_temperature(&self) -> f64 {
        let mut best = (1.0, self.nll(1.0));
        for i in 0..=200 {
            let t = (-2.0f64 + 4.5 * i as f64 / 200.0).exp();
            let v = self.nll(t);
            if v < best.1 {
                best = (t, v);
            }
        }
        best.0
    }

    /// Which items the "no instrument" rule calls `none` (all false for a
    /// model without the rule): the daemon's own [`OpenWorld::verdict`].
    pub fn called_none(&self, open_world: Option<&OpenWorld>) -> Vec<bool> {
        let Some(ow) = open_world else {
            return vec![false; self.logits.len()];
        };
        self.logits
            .iter()
            .zip(&self.instrument_mass)
            .map(|(row, &mass)| ow.verdict(row, mass).is_some())
            .collect()
    }

    pub fn confusion(&self, k: usize) -> Vec<Vec<usize>> {
        let mut m = vec![vec![0usize; k]; k];
        for (row, &y) in self.logits.iter().zip(&self.labels) {
            m[y][argmax(row)] += 1;
        }
        m
    }

    /// Accuracy of each hard variant (items are sample * variants + variant).
    pub fn per_variant(&self, variants: usize) -> Vec<f64> {
        (0..variants)
            .map(|v| {
                let idx: Vec<usize> = (v..self.labels.len()).step_by(variants).collect();
                idx.iter()
                    .filter(|&&i| argmax(&self.logits[i]) == self.labels[i])
                    .count() as f64
                    / idx.len().max(1) as f64
            })
            .collect()
    }
}

/// A Markdown per-class precision / recall table.
pub fn per_class_table(confusion: &[Vec<usize>], classes: &[String]) -> String {
    let mut s = String::from(
        "| class | support | correct | precision | recall |\n|---|---:|---:|---:|---:|\n",
    );
    for (i, name) in classes.iter().enumerate() {
        let support: usize = confusion[i].iter().sum();
        let predicted: usize = confusion.iter().map(|r| r[i]).sum();
        let tp = confusion[i][i];
        let p = if predicted > 0 {
            tp as f64 / predicted as f64
        } else {
            0.0
        };
        let r = if support > 0 {
            tp as f64 / support as f64
        } else {
            0.0
        };
        s += &format!("| {name} | {support} | {tp} | {p:.3} | {r:.3} |\n");
    }
    s
}

/// The off-diagonal cells, largest first: "true -> predicted (count)".
pub fn confused_pairs(confusion: &[Vec<usize>], classes: &[String]) -> Vec<String> {
    let mut pairs = Vec::new();
    for (i, row) in confusion.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if i != j && c > 0 {
                pairs.push((c, format!("{} -> {} ({c})", classes[i], classes[j])));
            }
        }
    }
    pairs.sort_by_key(|p| std::cmp::Reverse(p.0));
    pairs.into_iter().map(|p| p.1).collect()
}
