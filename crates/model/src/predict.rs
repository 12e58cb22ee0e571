//! Raw model outputs to ranked labels, shared by every command that classifies.

use crate::model::ModelSpec;

/// One of the top-k classes of a prediction (stored as JSON by the daemon).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scored {
    pub label: String,
    pub confidence: f32,
}

/// The verdict first, then the `k` most probable labels of one output row.
///
/// For most photos the verdict is the best label, so the list is just the top
/// `k`. When an open-world model finds no instrument, the verdict is
/// [`NONE`](crate::open_world::NONE) with the confidence that there is none,
/// and the `k` instruments follow it (so "second choices" stay queryable).
pub fn top_k(spec: &ModelSpec, row: &[f32], k: usize) -> Vec<Scored> {
    let judgement = spec.judge(row);
    let probs = &judgement.probabilities;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let verdict = judgement.none.map(|c| Scored { label: crate::open_world::NONE.into(), confidence: c });
    verdict
        .into_iter()
        .chain(order.into_iter().take(k).map(|i| Scored {
            label: spec.labels.get(i).cloned().unwrap_or_else(|| format!("#{i}")),
            confidence: probs[i],
        }))
        .collect()
}
