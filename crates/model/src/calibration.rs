//! Calibration: how far a model's confidence is from how often it is right.

/// Confidence bins of [`expected_calibration_error`].
///
/// 15 equal-width bins is the common choice since Guo et al., "On Calibration
/// of Modern Neural Networks" (2017), so our numbers compare with published
/// ones; it is also few enough that a validation split of a few hundred
/// photos puts a useful count in the bins that matter (a confident model
/// fills only the top few). `evaluate` (10 bins) and the trainer (15) used to
/// disagree; both use this now.
pub(crate) const ECE_BINS: usize = 15;

/// Expected calibration error of `(confidence, hit)` pairs: the predictions
/// are put in 15 equal-width bins (`ECE_BINS`) by confidence (`[0, 1/15)`, ...,
/// `[14/15, 1]`), and the gaps between each bin's mean confidence and its
/// accuracy are averaged, weighted by the bin's share of the predictions.
/// 0 for a perfectly calibrated model (and for no predictions at all).
pub fn expected_calibration_error(predictions: impl IntoIterator<Item = (f64, bool)>) -> f64 {
    let mut count = [0usize; ECE_BINS];
    let mut confidence = [0.0f64; ECE_BINS];
    let mut hits = [0usize; ECE_BINS];
    for (c, hit) in predictions {
        let bin = ((c.clamp(0.0, 1.0) * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        count[bin] += 1;
        confidence[bin] += c;
        hits[bin] += hit as usize;
    }
    let total: usize = count.iter().sum();
    if total == 0 {
        return 0.0;
    }
    // sum_b n_b/N * |acc_b - conf_b| = sum_b |hits_b - sum of confidences_b| / N
    (0..ECE_BINS).map(|b| (hits[b] as f64 - confidence[b]).abs()).sum::<f64>() / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfectly_calibrated_model_has_none() {
        // 10 predictions at 0.8 of which 8 are right, 4 at 0.5 of which 2 are.
        let mut p: Vec<(f64, bool)> = (0..10).map(|i| (0.8, i < 8)).collect();
        p.extend((0..4).map(|i| (0.5, i < 2)));
        assert!(expected_calibration_error(p).abs() < 1e-12);
        assert_eq!(expected_calibration_error(std::iter::empty()), 0.0);
    }

    #[test]
    fn an_overconfident_model_matches_the_hand_computed_value() {
        // Bin [14/15, 1]: 4 predictions at 0.95 (mean 0.95), 2 right (accuracy 0.5): gap 0.45.
        // Bin [9/15, 10/15): 2 predictions at 0.65, both wrong: gap 0.65.
        // A confidence of exactly 1.0 falls in the top bin: 2 at 1.0, both right,
        // makes the top bin 6 predictions, mean (3.8 + 2) / 6, accuracy 4/6.
        let p = [(0.95, true), (0.95, true), (0.95, false), (0.95, false), (0.65, false), (0.65, false)];
        let expected = 4.0 / 6.0 * 0.45 + 2.0 / 6.0 * 0.65;
        assert!((expected_calibration_error(p) - expected).abs() < 1e-12);
        let q = p.iter().copied().chain([(1.0, true), (1.0, true)]);
        let top_gap: f64 = (5.8f64 / 6.0 - 4.0 / 6.0).abs();
        let expected = 6.0 / 8.0 * top_gap + 2.0 / 8.0 * 0.65;
        assert!((expected_calibration_error(q) - expected).abs() < 1e-12);
    }

    #[test]
    fn bins_are_fifteen_equal_widths() {
        // Confidence 0.5 (bin 7, [7/15, 8/15)) and 0.55 (bin 8) are apart:
        // each is its own bin, so the gaps do not cancel.
        let p = [(0.5, true), (0.55, false)];
        assert!((expected_calibration_error(p) - (0.5 + 0.55) / 2.0).abs() < 1e-12);
        // 0.5 and 0.52 share bin 7: mean 0.51, accuracy 0.5.
        let q = [(0.5, true), (0.52, false)];
        assert!((expected_calibration_error(q) - 0.01).abs() < 1e-12);
    }
}
