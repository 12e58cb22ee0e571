//! Fitting our linear head on cached features: softmax regression, full
//! batch, Adam, started from the model's own head and pulled back toward it
//! (L2-SP). Pure Rust on ndarray's matrix product, so a retrain needs neither
//! libtorch nor a GPU: on the full dataset (about 5,000 photos, 1,280
//! features, 30 labels) a step is a few milliseconds.
//!
//! Why toward the old head and not toward zero: the old head was trained on
//! augmented photos (scenes, crops, blur) that the cached, plain features do
//! not reproduce. L2-SP keeps what it learnt there, and moves it only as far
//! as the corrections and the dataset ask.

use super::graph::LinearHead;
use ndarray::{Array1, Array2, Axis};

/// The recipe of one fit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitSettings {
    /// Full-batch Adam steps.
    pub steps: usize,
    pub learning_rate: f32,
    /// Strength of the pull toward the starting head.
    pub l2sp: f32,
    /// Weight of each corrected photo against one dataset photo.
    pub correction_weight: f32,
    /// Label smoothing of the corrections' labels (and the dataset's, when taught its labels).
    pub label_smoothing: f32,
    /// Teach the dataset's photos the old model's own answers instead of
    /// their labels ("learning without forgetting", Li and Hoiem 2016): the
    /// dataset then only holds the head where it was, and the corrections
    /// alone move it. Taught their labels, the head also drifts toward the
    /// studio photos of the dataset (which the old head was trained away
    /// from with augmentation), and loses photos from elsewhere.
    #[serde(default)]
    pub distill: bool,
}

impl Default for FitSettings {
    fn default() -> Self {
        FitSettings {
            steps: 300,
            learning_rate: 0.001,
            l2sp: 0.01,
            correction_weight: 10.0,
            label_smoothing: 0.1,
            distill: true,
        }
    }
}

/// What the head is fitted on: `features [n, d]`, a fixed additive `prior
/// [n, c]` (the ImageNet expert's `w · ln q`, zero without one), the target
/// distribution `[n, c]` and a weight per photo.
pub(crate) struct Problem {
    pub(crate) features: Array2<f32>,
    pub(crate) prior: Array2<f32>,
    pub(crate) targets: Array2<f32>,
    pub(crate) weights: Array1<f32>,
}

/// Adam's moments for one parameter.
struct Moments {
    m: Array2<f32>,
    v: Array2<f32>,
}

impl Moments {
    fn new(shape: (usize, usize)) -> Moments {
        Moments { m: Array2::zeros(shape), v: Array2::zeros(shape) }
    }

    /// One Adam step on `param` with gradient `grad` (step `t` counts from 1).
    fn step(&mut self, param: &mut Array2<f32>, grad: &Array2<f32>, lr: f32, t: i32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.m.zip_mut_with(grad, |m, g| *m = B1 * *m + (1.0 - B1) * g);
        self.v.zip_mut_with(grad, |v, g| *v = B2 * *v + (1.0 - B2) * g * g);
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        ndarray::Zip::from(param).and(&self.m).and(&self.v).for_each(|p, m, v| {
            *p -= lr * (m / c1) / ((v / c2).sqrt() + 1e-8);
        });
    }
}

/// Fits a head on `problem` from `start`; `on_step(step, loss)` after each step.
pub(crate) fn fit(
    problem: &Problem,
    start: &LinearHead,
    settings: &FitSettings,
    on_step: &mut dyn FnMut(usize, f32),
) -> LinearHead {
    let (c, d) = (start.outputs, start.inputs);
    let w0 = Array2::from_shape_vec((c, d), start.weight.clone()).expect("weight is outputs x inputs");
    let b0 = Array2::from_shape_vec((1, c), start.bias.clone()).expect("one bias per output");
    let (mut w, mut b) = (w0.clone(), b0.clone());
    let (mut mw, mut mb) = (Moments::new((c, d)), Moments::new((1, c)));
    let total_weight = problem.weights.sum().max(f32::MIN_POSITIVE);
    for step in 1..=settings.steps {
        let (grad_logits, loss) = logit_gradient(problem, &w, &b, total_weight);
        let mut gw = grad_logits.t().dot(&problem.features);
        gw.scaled_add(settings.l2sp, &(&w - &w0));
        let mut gb = grad_logits.sum_axis(Axis(0)).insert_axis(Axis(0));
        gb.scaled_add(settings.l2sp, &(&b - &b0));
        mw.step(&mut w, &gw, settings.learning_rate, step as i32);
        mb.step(&mut b, &gb, settings.learning_rate, step as i32);
        let pull = 0.5 * settings.l2sp * ((&w - &w0).mapv(|x| x * x).sum() + (&b - &b0).mapv(|x| x * x).sum());
        on_step(step, loss + pull);
    }
    LinearHead { outputs: c, inputs: d, weight: w.into_raw_vec_and_offset().0, bias: b.into_raw_vec_and_offset().0 }
}

/// The gradient of the weighted mean cross-entropy with respect to the
/// logits, and the cross-entropy itself.
fn logit_gradient(problem: &Problem, w: &Array2<f32>, b: &Array2<f32>, total_weight: f32) -> (Array2<f32>, f32) {
    let mut logits = problem.features.dot(&w.t()) + b + &problem.prior;
    let mut loss = 0.0f32;
    for ((mut row, target), &weight) in
        logits.axis_iter_mut(Axis(0)).zip(problem.targets.axis_iter(Axis(0))).zip(&problem.weights)
    {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let log_sum = row.mapv(|v| (v - max).exp()).sum().ln() + max;
        loss += weight * target.iter().zip(row.iter()).map(|(t, z)| -t * (z - log_sum)).sum::<f32>();
        // d(cross-entropy)/d(logit) = softmax - target, weighted.
        let scale = weight / total_weight;
        row.iter_mut().zip(target).for_each(|(z, t)| *z = scale * ((*z - log_sum).exp() - t));
    }
    (logits, loss / total_weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_fit_learns_a_label_the_start_gets_wrong_and_stays_near_it_elsewhere() {
        // Two features, two labels; the starting head calls everything label 0.
        let start = LinearHead { outputs: 2, inputs: 2, weight: vec![1.0, 1.0, 0.0, 0.0], bias: vec![0.0, 0.0] };
        let problem = Problem {
            features: array![[1.0, 0.0], [0.0, 1.0]],
            prior: Array2::zeros((2, 2)),
            targets: array![[1.0, 0.0], [0.0, 1.0]],
            weights: array![1.0, 1.0],
        };
        let settings = FitSettings { steps: 400, learning_rate: 0.05, l2sp: 0.01, ..FitSettings::default() };
        let mut losses = Vec::new();
        let head = fit(&problem, &start, &settings, &mut |_, l| losses.push(l));
        let w = Array2::from_shape_vec((2, 2), head.weight.clone()).unwrap();
        let logits = problem.features.dot(&w.t()) + Array1::from(head.bias.clone());
        assert!(logits[[1, 1]] > logits[[1, 0]], "photo 2 is now label 1: {logits:?}");
        assert!(logits[[0, 0]] > logits[[0, 1]], "photo 1 is still label 0: {logits:?}");
        assert!(losses.last().unwrap() < &losses[0], "the loss fell: {} -> {}", losses[0], losses.last().unwrap());
    }

    #[test]
    fn the_logit_gradient_matches_finite_differences() {
        let problem = Problem {
            features: array![[0.5, -1.0], [2.0, 0.3]],
            prior: array![[0.1, -0.2], [0.0, 0.4]],
            targets: array![[0.9, 0.1], [0.5, 0.5]],
            weights: array![1.0, 3.0],
        };
        let w = array![[0.2, -0.1], [0.4, 0.3]];
        let b = array![[0.05, -0.05]];
        let (grad, _) = logit_gradient(&problem, &w, &b, 4.0);
        let analytic = grad.t().dot(&problem.features);
        let eps = 1e-3;
        for i in 0..2 {
            for j in 0..2 {
                let (mut up, mut down) = (w.clone(), w.clone());
                up[[i, j]] += eps;
                down[[i, j]] -= eps;
                let numeric = (logit_gradient(&problem, &up, &b, 4.0).1 - logit_gradient(&problem, &down, &b, 4.0).1)
                    / (2.0 * eps);
                assert!((numeric - analytic[[i, j]]).abs() < 1e-3, "{i},{j}: {numeric} vs {}", analytic[[i, j]]);
            }
        }
    }
}
