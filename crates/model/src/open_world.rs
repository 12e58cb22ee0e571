//! The open world: photos of instruments the dataset never showed, and photos
//! of no instrument at all.
//!
//! A model trained only on the 30-class dataset gives one of its 30 labels to
//! every photo, a goldfish included. The backbone's own ImageNet classifier
//! (about 1,300 real photos per class, 1,000 classes of which only 26 are
//! instruments) knows far better whether a photo shows an instrument, and which
//! one for the 18 of our classes it has a twin for. A model that keeps that head
//! appends its 1,000 ImageNet logits after its own logits, and describes in its
//! metadata (key [`KEY`]) how to read them:
//!
//! - **Product of experts.** The instrument answer combines both heads:
//!   `combined[c] = logits[c] + expert_weight * ln q[c]`, where `q` is the
//!   ImageNet softmax folded onto our labels: a label with ImageNet twins gets
//!   their probability, and the labels without a twin share equally the
//!   probability of the `orphan_classes` (the instruments ImageNet knows that
//!   are none of ours: a photo ImageNet calls a gong or a panpipe is evidence
//!   for an instrument it has no name for). So ImageNet has no say between
//!   two labels it does not know, and the model's own logits (which the
//!   trainer fits knowing this) carry the rest.
//! - **The "no instrument" rule.** `mass` is the ImageNet probability on
//!   instrument classes. A photo is [`NONE`] when `mass` is below
//!   `max_instrument_mass` **and** the combined classifier's best probability is
//!   below `max_confidence` (its probability before calibration, at
//!   temperature 1, so that refitting the temperature never moves the rule):
//!   the ImageNet head alone would reject the
//!   instruments it has no class for (a guiro, an alphorn), so the instrument
//!   classifier must be unsure too. Its confidence is `1 - mass`.
//!
//! The trainer writes this description with [`OpenWorld::to_metadata`] and the
//! daemon, `classify`, `evaluate` and the trainer's own evaluation read it with
//! [`OpenWorld::from_metadata`] and [`OpenWorld::read`], so none of them can drift.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metadata key holding the JSON description.
pub const KEY: &str = "open_world";

/// The label of a photo that shows none of the model's instruments.
pub const NONE: &str = "none";

/// Guards `ln q` where the ImageNet head gives a label no probability at all.
const EXPERT_FLOOR: f32 = 1e-6;

/// How to read the ImageNet logits a model appends to its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenWorld {
    /// Number of ImageNet logits that follow the labels' logits in each row.
    pub imagenet_classes: usize,
    /// Softmax temperature of the ImageNet logits (1 as trained).
    #[serde(default = "one")]
    pub imagenet_temperature: f32,
    /// For each label that has ImageNet twins, their indices.
    pub twins: BTreeMap<String, Vec<usize>>,
    /// Weight of the ImageNet expert in the product (0: the model's own logits alone).
    pub expert_weight: f32,
    /// ImageNet classes whose probability the labels without a twin share.
    pub orphan_classes: Vec<usize>,
    /// ImageNet classes that show an instrument (for the "no instrument" rule).
    pub instrument_classes: Vec<usize>,
    pub none_rule: NoneRule,
}

fn one() -> f32 {
    1.0
}

/// When a photo is `none`: both signals must say so.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneRule {
    /// The ImageNet probability on instrument classes must be below this...
    pub max_instrument_mass: f32,
    /// ...and the combined classifier's best probability (at temperature 1,
    /// before calibration) below this.
    pub max_confidence: f32,
}

/// One row of model output, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The combined logits, one per label (before the model's temperature).
    pub logits: Vec<f32>,
    /// ImageNet probability on instrument classes.
    pub instrument_mass: f32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OpenWorldError {
    #[error("metadata '{KEY}' is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("metadata '{KEY}': {0}")]
    Invalid(String),
}

impl OpenWorld {
    /// Parses and checks the description against the model's labels.
    pub fn from_metadata(raw: &str, labels: &[String]) -> Result<OpenWorld, OpenWorldError> {
        let ow: OpenWorld = serde_json::from_str(raw).map_err(|e| OpenWorldError::Json(e.to_string()))?;
        ow.check(labels)?;
        Ok(ow)
    }

    /// The JSON text stored under [`KEY`].
    pub fn to_metadata(&self) -> String {
        serde_json::to_string(self).expect("plain numbers and strings serialise")
    }

    fn check(&self, labels: &[String]) -> Result<(), OpenWorldError> {
        let bad = |m: String| Err(OpenWorldError::Invalid(m));
        let n = self.imagenet_classes;
        if n == 0 {
            return bad("imagenet_classes must be positive".into());
        }
        if labels.iter().any(|l| l == NONE) {
            return bad(format!("a model that declares the open-world rule cannot also have a label '{NONE}'"));
        }
        for (label, idx) in &self.twins {
            if !labels.contains(label) {
                return bad(format!("twins name '{label}', which is not one of the model's labels"));
            }
            if let Some(i) = idx.iter().find(|&&i| i >= n) {
                return bad(format!("twin {i} of '{label}' is outside the {n} ImageNet classes"));
            }
        }
        if let Some(i) = self.instrument_classes.iter().chain(&self.orphan_classes).find(|&&i| i >= n) {
            return bad(format!("ImageNet class {i} is outside the {n} ImageNet classes"));
        }
        let finite = [
            self.imagenet_temperature,
            self.expert_weight,
            self.none_rule.max_instrument_mass,
            self.none_rule.max_confidence,
        ];
        if finite.iter().any(|v| !v.is_finite()) || self.imagenet_temperature <= 0.0 || self.expert_weight < 0.0 {
            return bad("imagenet_temperature must be positive, expert_weight non-negative, all numbers finite".into());
        }
        Ok(())
    }

    /// Reads one output row: `labels` logits, then the ImageNet logits.
    /// The caller has checked the row's width (see [`OpenWorld::row_width`]).
    pub fn read(&self, labels: &[String], row: &[f32]) -> Reading {
        let (own, imagenet) = row.split_at(labels.len());
        let p = crate::model::softmax(&imagenet[..self.imagenet_classes], self.imagenet_temperature);
        let instrument_mass: f32 = self.instrument_classes.iter().map(|&i| p[i]).sum();
        let q = self.fold_onto_labels(labels, &p);
        let logits = own.iter().zip(&q).map(|(l, q)| l + self.expert_weight * q.max(EXPERT_FLOOR).ln()).collect();
        Reading { logits, instrument_mass: instrument_mass.clamp(0.0, 1.0) }
    }

    /// The ImageNet distribution as one probability per label (see the module doc).
    fn fold_onto_labels(&self, labels: &[String], p: &[f32]) -> Vec<f32> {
        let orphans = labels.iter().filter(|l| !self.twins.contains_key(*l)).count().max(1);
        let share = self.orphan_classes.iter().map(|&i| p[i]).sum::<f32>() / orphans as f32;
        labels
            .iter()
            .map(|label| match self.twins.get(label) {
                Some(idx) => idx.iter().map(|&i| p[i]).sum(),
                None => share,
            })
            .collect()
    }

    /// The fold of [`OpenWorld::read`] as a matrix `[imagenet_classes, labels]`
    /// (row-major), so a trainer can compute `q = softmax(imagenet) · M` on
    /// its own tensors and get exactly what the daemon computes.
    pub fn fold_matrix(&self, labels: &[String]) -> Vec<f32> {
        let n = self.imagenet_classes;
        let mut columns: Vec<Vec<f32>> = Vec::with_capacity(n);
        for i in 0..n {
            let mut one_hot = vec![0.0f32; n];
            one_hot[i] = 1.0;
            columns.push(self.fold_onto_labels(labels, &one_hot));
        }
        columns.concat()
    }

    /// Columns a row of this model's output holds.
    pub(crate) fn row_width(&self, labels: usize) -> usize {
        labels + self.imagenet_classes
    }

    /// `Some(confidence)` when the photo shows no instrument.
    /// The rule on one read row: `combined` logits (see [`Reading`]) and the
    /// ImageNet instrument mass. It reads the uncalibrated probability, at
    /// temperature 1, so that refitting the model's temperature never moves it.
    pub fn verdict(&self, combined: &[f32], instrument_mass: f32) -> Option<f32> {
        let best = crate::model::softmax(combined, 1.0).into_iter().fold(0.0, f32::max);
        self.none_verdict(instrument_mass, best)
    }

    /// The rule on its two numbers.
    pub(crate) fn none_verdict(&self, instrument_mass: f32, best_probability: f32) -> Option<f32> {
        let rule = self.none_rule;
        (instrument_mass < rule.max_instrument_mass && best_probability < rule.max_confidence)
            .then_some(1.0 - instrument_mass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["guitar", "sitar", "violin"].map(String::from).to_vec()
    }

    /// Five ImageNet classes: 0 acoustic guitar, 1 electric guitar, 2 violin, 3 cello, 4 goldfish.
    fn world() -> OpenWorld {
        OpenWorld {
            imagenet_classes: 5,
            imagenet_temperature: 1.0,
            twins: BTreeMap::from([("guitar".into(), vec![0, 1]), ("violin".into(), vec![2])]),
            expert_weight: 1.0,
            orphan_classes: vec![3],
            instrument_classes: vec![0, 1, 2, 3],
            none_rule: NoneRule { max_instrument_mass: 0.2, max_confidence: 0.8 },
        }
    }

    #[test]
    fn metadata_round_trips() {
        let ow = world();
        assert_eq!(OpenWorld::from_metadata(&ow.to_metadata(), &labels()), Ok(ow));
    }

    #[test]
    fn metadata_that_names_unknown_labels_or_classes_is_refused() {
        let mut ow = world();
        ow.twins.insert("banjo".into(), vec![0]);
        assert!(matches!(OpenWorld::from_metadata(&ow.to_metadata(), &labels()), Err(OpenWorldError::Invalid(_))));
        let mut ow = world();
        ow.orphan_classes.push(5);
        assert!(matches!(OpenWorld::from_metadata(&ow.to_metadata(), &labels()), Err(OpenWorldError::Invalid(_))));
        let mut with_none = labels();
        with_none.push(NONE.into());
        assert!(OpenWorld::from_metadata(&world().to_metadata(), &with_none).is_err());
        assert!(matches!(OpenWorld::from_metadata("{\"x\": 1}", &labels()), Err(OpenWorldError::Json(_))));
    }

    #[test]
    fn the_expert_folds_twins_together_and_orphans_share_the_other_instruments() {
        let ow = world();
        // ImageNet logits: equal on every class, so p = 0.2 each.
        let row = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let q = ow.fold_onto_labels(&labels(), &crate::model::softmax(&row[3..], 1.0));
        // guitar: two twins (0.4); violin: one (0.2); sitar, no twin: the cello's (0.2).
        for (got, want) in q.iter().zip([0.4, 0.2, 0.2]) {
            assert!((got - want).abs() < 1e-6, "{q:?}");
        }
    }

    #[test]
    fn the_fold_matrix_is_the_fold() {
        let ow = world();
        let p = crate::model::softmax(&[1.0, -2.0, 0.5, 3.0, 0.0], 1.0);
        let m = ow.fold_matrix(&labels());
        let by_matrix: Vec<f32> = (0..3).map(|c| (0..5).map(|i| p[i] * m[i * 3 + c]).sum()).collect();
        for (a, b) in by_matrix.iter().zip(ow.fold_onto_labels(&labels(), &p)) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn a_confident_imagenet_twin_moves_the_answer() {
        let ow = world();
        // The model's own head slightly prefers sitar; ImageNet is sure of an electric guitar.
        let row = [1.0, 1.2, 0.0, 0.0, 8.0, 0.0, 0.0, 0.0];
        let r = ow.read(&labels(), &row);
        assert!(r.logits[0] > r.logits[1], "{r:?}");
        assert!(r.instrument_mass > 0.99);
    }

    #[test]
    fn none_needs_both_signals() {
        let ow = world();
        let goldfish = ow.read(&labels(), &[0.3, 0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 9.0]);
        assert!(goldfish.instrument_mass < 0.01);
        assert!(ow.none_verdict(goldfish.instrument_mass, 0.5).unwrap() > 0.99);
        // Sure of itself (an alphorn ImageNet has no class for): kept.
        assert_eq!(ow.none_verdict(goldfish.instrument_mass, 0.9), None);
        // An instrument by ImageNet: kept however unsure the classifier is.
        let cello = ow.read(&labels(), &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0]);
        assert_eq!(ow.none_verdict(cello.instrument_mass, 0.4), None);
    }
}
