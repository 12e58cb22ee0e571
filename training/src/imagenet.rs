//! What the ImageNet classifier that ships with the backbone weights knows
//! about our instruments: which of its 1,000 classes (torchvision's order) are
//! one of the dataset's labels, and which show an instrument at all.
//!
//! The trainer turns these tables into the model's open-world description
//! ([`instrument_model::open_world::OpenWorld`]); the daemon only ever reads
//! that description, so it holds no copy of them.

use instrument_model::open_world::{NoneRule, OpenWorld};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// Classes of the ImageNet head the Lite and ResNet50 weights carry.
pub const IMAGENET_CLASSES: usize = 1000;

/// ImageNet twins of the dataset's labels (the dataset's own spellings).
/// Two ImageNet classes fold into one label where the dataset does not tell
/// them apart (acoustic and electric guitar; grand and upright piano); a
/// cornet is close enough to a trumpet, and a marimba to a xylophone, that
/// ImageNet's photos of one are the best evidence it has for the other.
pub const TWINS: &[(&str, &[usize])] = &[
    ("Xylophone", &[642]),
    ("acordian", &[401]),
    ("banjo", &[420]),
    ("drums", &[541]),
    ("flute", &[558]),
    ("guitar", &[402, 546]),
    ("harmonica", &[593]),
    ("harp", &[594]),
    ("marakas", &[641]),
    ("ocarina", &[684]),
    ("piano", &[579, 881]),
    ("saxaphone", &[776]),
    ("steel drum", &[822]),
    ("trombone", &[875]),
    ("trumpet", &[513]),
    ("violin", &[889]),
];

/// Every ImageNet class that shows a musical instrument: the twins above,
/// and the instruments outside our 30 (bassoon, cello, chime, French horn,
/// gong, oboe, organ, panpipe), whose photos are instrument photos too.
pub const INSTRUMENTS: &[usize] = &[
    401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684,
    687, 699, 776, 822, 875, 881, 889,
];

/// The open-world description for a model over `classes`: the twins of the
/// labels it has, the expert's weight and the "no instrument" rule.
pub fn open_world(classes: &[String], expert_weight: f32, none_rule: NoneRule) -> OpenWorld {
    let twins: BTreeMap<String, Vec<usize>> = TWINS
        .iter()
        .filter(|(label, _)| classes.iter().any(|c| c == label))
        .map(|(label, idx)| (label.to_string(), idx.to_vec()))
        .collect();
    let twinned: Vec<usize> = twins.values().flatten().copied().collect();
    OpenWorld {
        imagenet_classes: IMAGENET_CLASSES,
        imagenet_temperature: 1.0,
        orphan_classes: INSTRUMENTS
            .iter()
            .copied()
            .filter(|i| !twinned.contains(i))
            .collect(),
        twins,
        expert_weight,
        instrument_classes: INSTRUMENTS.to_vec(),
        none_rule,
    }
}

/// The product of experts on tch tensors, for the training loss: exactly
/// [`OpenWorld::read`]'s combined logits, differentiable in our own logits.
pub struct Expert {
    /// `[imagenet_classes, labels]`: [`OpenWorld::fold_matrix`].
    fold: Tensor,
    weight: f64,
    temperature: f64,
    labels: i64,
}

impl Expert {
    pub fn new(ow: &OpenWorld, classes: &[String], device: tch::Device) -> Expert {
        let m = ow.fold_matrix(classes);
        let fold = Tensor::from_slice(&m)
            .view([ow.imagenet_classes as i64, classes.len() as i64])
            .to_device(device);
        Expert {
            fold,
            weight: ow.expert_weight as f64,
            temperature: ow.imagenet_temperature as f64,
            labels: classes.len() as i64,
        }
    }

    /// Model output rows (our logits, then the ImageNet logits) to the
    /// combined logits, one per label.
    pub fn combine(&self, rows: &Tensor) -> Tensor {
        let own = rows.narrow(1, 0, self.labels);
        let imagenet = rows.narrow(1, self.labels, rows.size()[1] - self.labels);
        let q = (imagenet / self.temperature)
            .softmax(-1, Kind::Float)
            .matmul(&self.fold);
        own + q.clamp_min(1e-6).log() * self.weight
    }
}

/// Starting rows for our head: each label with ImageNet twins starts from the
/// mean of its twins' rows (weight and bias), so the probe begins where the
/// ImageNet classifier already is; the others start at zero. Returned as
/// (weight `[labels, features]`, bias `[labels]`); L2-SP pulls toward them.
pub fn anchor_rows(
    imagenet_w: &Tensor,
    imagenet_b: Option<&Tensor>,
    ow: &OpenWorld,
    classes: &[String],
) -> (Tensor, Tensor) {
    let features = imagenet_w.size()[1];
    let device = imagenet_w.device();
    let w = Tensor::zeros([classes.len() as i64, features], (Kind::Float, device));
    let b = Tensor::zeros([classes.len() as i64], (Kind::Float, device));
    tch::no_grad(|| {
        for (k, label) in classes.iter().enumerate() {
            let Some(idx) = ow.twins.get(label) else {
                continue;
            };
            let rows: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let index = Tensor::from_slice(&rows).to_device(device);
            w.get(k as i64)
                .copy_(
                    &imagenet_w
                        .index_select(0, &index)
                        .mean_dim(0, false, Kind::Float),
                );
            if let Some(ib) = imagenet_b {
                b.get(k as i64)
                    .copy_(&ib.index_select(0, &index).mean(Kind::Float));
            }
        }
    });
    (w, b)
}

/// L2-SP's penalty: the squared distance of a head (weight, bias) from its
/// starting rows (`anchor_rows`), to be scaled by `--l2sp`.
pub fn drift(w: &Tensor, b: Option<&Tensor>, anchor: &(Tensor, Tensor)) -> Tensor {
    let mut d = (w - &anchor.0).square().sum(Kind::Float);
    if let Some(b) = b {
        d += (b - &anchor.1).square().sum(Kind::Float);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_twin_is_an_instrument_and_in_range() {
        for (label, idx) in TWINS {
            for i in *idx {
                assert!(INSTRUMENTS.contains(i), "{label}: {i}");
                assert!(*i < IMAGENET_CLASSES);
            }
        }
        let mut sorted = INSTRUMENTS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), INSTRUMENTS.len());
    }

    #[test]
    fn labels_the_dataset_lacks_get_no_twin() {
        let classes = ["guitar", "sitar"].map(String::from);
        let rule = NoneRule {
            max_instrument_mass: 0.1,
            max_confidence: 0.5,
        };
        let ow = open_world(&classes, 1.0, rule);
        assert_eq!(ow.twins.keys().collect::<Vec<_>>(), ["guitar"]);
        assert!(OpenWorld::from_metadata(&ow.to_metadata(), &classes).is_ok());
    }

    #[test]
    fn the_tch_product_of_experts_is_the_daemons() {
        let classes = ["guitar", "sitar", "violin"].map(String::from);
        let rule = NoneRule {
            max_instrument_mass: 0.1,
            max_confidence: 0.5,
        };
        let ow = open_world(&classes, 0.7, rule);
        let mut row = vec![0.5f32, -0.25, 1.0];
        row.extend((0..IMAGENET_CLASSES).map(|i| ((i * 37) % 11) as f32 * 0.3));
        row[3 + 546] = 6.0;
        let want = ow.read(&classes, &row).logits;
        let rows = Tensor::from_slice(&row).view([1, row.len() as i64]);
        let got = Expert::new(&ow, &classes, tch::Device::Cpu).combine(&rows);
        let got = crate::nets::to_vec(&got);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{got:?} against {want:?}");
        }
    }
}
