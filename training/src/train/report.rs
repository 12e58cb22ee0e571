//! What a finished run measured: [`FinalReport`] (final.json) and report.md.

use crate::eval::{Predictions, confused_pairs, per_class_table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a finished run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FinalReport {
    pub best_epoch: usize,
    pub valid_acc: f64,
    pub hard_valid_acc: Option<f64>,
    pub hard_valid_per_variant: BTreeMap<String, f64>,
    pub test_acc: f64,
    pub test_correct: usize,
    pub test_total: usize,
    pub temperature: f64,
    pub valid_ece_t1: f64,
    pub valid_ece: f64,
    pub test_ece: f64,
    pub train_seconds: f64,
    pub parity: Vec<String>,
    /// The `none` rule (open-world models): how many photos it called `none`.
    pub none: Option<NoneReport>,
}

/// What the `none` rule did on each set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoneReport {
    pub valid_called_none: usize,
    pub valid_total: usize,
    pub test_called_none: usize,
    pub test_total: usize,
    pub negatives_called_none: usize,
    pub negatives_total: usize,
}

/// Valid and hard valid, measured on the final model.
pub(crate) struct ValidNumbers {
    pub(crate) predictions: Predictions,
    pub(crate) temperature: f64,
    pub(crate) hard_acc: Option<f64>,
    /// Hard-valid accuracy per distortion, by name (empty without hard valid).
    pub(crate) per_variant: BTreeMap<String, f64>,
}

/// The test split, measured once.
pub(crate) struct TestNumbers {
    pub(crate) acc: f64,
    pub(crate) correct: usize,
    pub(crate) total: usize,
    /// At the fitted temperature.
    pub(crate) ece: f64,
    pub(crate) called_none: usize,
    /// The per-class table, the confused pairs and confusion.png's label order.
    pub(crate) per_class_md: String,
}

impl TestNumbers {
    /// A dataset without a test split.
    pub(crate) fn no_split() -> TestNumbers {
        TestNumbers {
            acc: f64::NAN,
            correct: 0,
            total: 0,
            ece: f64::NAN,
            called_none: 0,
            per_class_md: String::from("(no test split)\n"),
        }
    }
}

impl FinalReport {
    pub(crate) fn new(
        best_epoch: usize,
        valid: ValidNumbers,
        test: TestNumbers,
        parity: Vec<String>,
        none: Option<NoneReport>,
        train_seconds: f64,
    ) -> FinalReport {
        let (vp, t) = (&valid.predictions, valid.temperature);
        FinalReport {
            best_epoch,
            valid_acc: vp.accuracy(),
            hard_valid_acc: valid.hard_acc,
            test_acc: test.acc,
            test_correct: test.correct,
            test_total: test.total,
            temperature: t,
            valid_ece_t1: vp.ece(1.0),
            valid_ece: vp.ece(t),
            test_ece: test.ece,
            train_seconds,
            parity,
            none,
            hard_valid_per_variant: valid.per_variant,
        }
    }
}

/// The test section's Markdown, from the test confusion matrix.
pub(crate) fn per_class_markdown(confusion: &[Vec<usize>], classes: &[String]) -> String {
    let mut md = per_class_table(confusion, classes);
    let pairs = confused_pairs(confusion, classes);
    md += &format!(
        "\nConfused (true -> predicted): {}\n",
        if pairs.is_empty() {
            "none".into()
        } else {
            pairs.join(", ")
        }
    );
    md += "\nconfusion.png: rows = true class, columns = predicted, in this label order: ";
    md += &classes.join(", ");
    md += "\n";
    md
}

/// report.md.
pub(crate) fn markdown(
    best_epoch: usize,
    measured_on: &str,
    valid: &ValidNumbers,
    test: &TestNumbers,
    none: Option<&NoneReport>,
) -> String {
    let (vp, t, md) = (&valid.predictions, valid.temperature, &test.per_class_md);
    let report_md = format!(
        "# Run report\n\nbest epoch {best_epoch}; measured with {measured_on}\n\n| split | accuracy |\n|---|---:|\n| valid | {:.4} ({}/{}) |\n| hard valid | {} |\n| test | {:.4} ({}/{}) |\n\n\
         Temperature fitted on valid and hard valid: {t:.3}; ECE on valid {:.4} at T=1, {:.4} at T; ECE on test at T {:.4}\n\n\
         Hard valid per distortion: {}\n\n## Test, per class\n\n{md}",
        vp.accuracy(),
        vp.correct(),
        vp.labels.len(),
        valid.hard_acc.map_or("-".into(), |h| format!("{h:.4}")),
        test.acc,
        test.correct,
        test.total,
        vp.ece(1.0),
        vp.ece(t),
        test.ece,
        valid
            .per_variant
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    match none {
        Some(n) => format!(
            "{report_md}\n## The `none` rule\n\ncalled `none`: valid {}/{}, test {}/{}, negatives {}/{}\n",
            n.valid_called_none,
            n.valid_total,
            n.test_called_none,
            n.test_total,
            n.negatives_called_none,
            n.negatives_total
        ),
        None => report_md,
    }
}
