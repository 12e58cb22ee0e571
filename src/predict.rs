//! Raw model outputs to ranked labels, shared by every command that classifies.

use crate::model::ModelSpec;
use crate::store::Scored;

/// The `k` most probable labels of one output row, best first.
pub fn top_k(spec: &ModelSpec, row: &[f32], k: usize) -> Vec<Scored> {
    let probs = spec.probabilities(row);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| Scored { label: spec.labels.get(i).cloned().unwrap_or_else(|| format!("#{i}")), confidence: probs[i] })
        .collect()
}
