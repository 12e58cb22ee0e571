//! After training: the checked ONNX export, then every final number measured
//! on that exported file through the daemon's engine (ONNX Runtime, else
//! tract): temperature on valid, hard-valid detail, test once, reports.

use super::context::Ctx;
use super::report::{self, FinalReport, NoneReport, TestNumbers, ValidNumbers};
use crate::data::{HARD_VARIANTS, Mode, Sample};
use crate::eval::{Predictions, Scorer};
use crate::export::{export_checked, meta_keys, real_inputs, run_metadata};
use crate::nets::Network;
use anyhow::Result;
use instrument_model::engine::{self, BackendChoice, Classifier, EngineOptions};
use instrument_model::model::LoadedModel;
use instrument_model::open_world::OpenWorld;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Exports (unless --no-export), measures, rewrites the model's metadata and
/// writes report.md. `started`: when the run began, for `train_seconds`.
pub(crate) fn finish(
    ctx: &Ctx,
    net: &Network,
    best_epoch: usize,
    started: Instant,
) -> Result<FinalReport> {
    let out = &ctx.args.out;
    let model_path = out.join("model.onnx");
    let (parity, mut engine_clf) = if ctx.args.no_export {
        (Vec::new(), None)
    } else {
        let parity = export(ctx, net, &model_path)?;
        (parity, open_engine(&model_path)?)
    };
    let measured_on = match &engine_clf {
        Some(c) => format!("{} on the exported model.onnx", c.backend()),
        None => "tch".to_string(),
    };
    let mut scorer = match engine_clf.as_mut() {
        Some(c) => Scorer::Engine(c.as_mut()),
        None => Scorer::Tch(net),
    };
    eprintln!("final numbers measured with {measured_on}");
    let valid = measure_valid(ctx, &mut scorer)?;
    let test = measure_test(ctx, &mut scorer, valid.temperature)?;
    let none = match &ctx.open_world {
        Some(ow) => Some(none_report(
            ctx,
            &mut scorer,
            ow,
            &valid.predictions,
            test.called_none,
        )?),
        None => None,
    };
    if model_path.is_file() && !ctx.args.no_export {
        record_calibration(&model_path, &valid, test.acc)?;
    }
    if let Some(base) = &ctx.args.no_worse_than
        && model_path.is_file()
    {
        guard(ctx, &model_path, base)?;
    }
    let report_md = report::markdown(best_epoch, &measured_on, &valid, &test, none.as_ref());
    std::fs::write(out.join("report.md"), &report_md)?;
    eprintln!("{report_md}");
    let train_seconds = started.elapsed().as_secs_f64();
    Ok(FinalReport::new(
        best_epoch,
        valid,
        test,
        parity,
        none,
        train_seconds,
    ))
}

/// The checked export to `model_path`; returns the parity lines.
fn export(ctx: &Ctx, net: &Network, model_path: &Path) -> Result<Vec<String>> {
    let mut extra = run_metadata(
        &ctx.args.dataset_name,
        serde_json::to_string(&ctx.args)?,
        ctx.open_world.as_ref().map(OpenWorld::to_metadata),
    );
    // Lineage: a model that learnt from a person's corrections says so.
    if let (Some(added), Some(dir)) = (ctx.corrections, &ctx.args.corrections) {
        extra.insert(
            meta_keys::CORRECTIONS.to_string(),
            format!(
                "{} photos from {} ({}x each)",
                added.photos,
                dir.display(),
                ctx.args.corrections_repeat.max(1)
            ),
        );
    }
    let inputs = real_inputs(&ctx.ds.valid, &ctx.spec, 4)?;
    let parity = export_checked(net, &ctx.spec, &ctx.ds.classes, &extra, &inputs, model_path)?;
    for x in &parity {
        eprintln!("export parity: {x}");
    }
    Ok(parity.iter().map(|x| x.to_string()).collect())
}

/// Keeps `model.onnx` only if it answers at most one valid image fewer than
/// `base`; otherwise renames it `model.refused.onnx` and fails the run.
fn guard(ctx: &Ctx, model_path: &Path, base: &Path) -> Result<()> {
    let seed = ctx.args.seed;
    let valid = &ctx.ds.valid;
    let before = crate::evaluate::correct_on(base, valid, &ctx.ds.classes, seed)?;
    let after = crate::evaluate::correct_on(model_path, valid, &ctx.ds.classes, seed)?;
    let n = valid.len();
    if after + 1 < before {
        let refused = model_path.with_file_name("model.refused.onnx");
        std::fs::rename(model_path, &refused)?;
        anyhow::bail!(
            "refused: the new model answers {after}/{n} valid images right, {} fewer than {} ({before}/{n}); \
             more than one lost, so it is left as {} and not as model.onnx",
            before - after,
            base.display(),
            refused.display()
        );
    }
    eprintln!(
        "kept: valid {after}/{n} against {before}/{n} for {}",
        base.display()
    );
    Ok(())
}

/// The daemon's engine on the exported file: ONNX Runtime, else tract.
/// `None`: neither opens it, and the numbers come from tch.
fn open_engine(model_path: &Path) -> Result<Option<Box<dyn Classifier>>> {
    let model = LoadedModel::load(model_path)?;
    for choice in [BackendChoice::OrtCpu, BackendChoice::Tract] {
        if let Ok((c, _)) = engine::open(&model, choice, &EngineOptions::default()) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Valid and hard valid, and the temperature fitted on them.
fn measure_valid(ctx: &Ctx, scorer: &mut Scorer) -> Result<ValidNumbers> {
    let valid = Arc::new(ctx.ds.valid.clone());
    let vp = ctx.evaluate(scorer, &valid, Mode::Plain)?;
    if !ctx.args.hard_valid {
        return Ok(ValidNumbers {
            temperature: vp.fit_temperature(),
            predictions: vp,
            hard_acc: None,
            per_variant: BTreeMap::new(),
        });
    }
    let hard_mode = Mode::Hard {
        variants: HARD_VARIANTS.len(),
    };
    let hp = ctx.evaluate(scorer, &valid, hard_mode)?;
    let per_variant = HARD_VARIANTS
        .iter()
        .map(|s| s.to_string())
        .zip(hp.per_variant(HARD_VARIANTS.len()))
        .collect();
    Ok(ValidNumbers {
        // Valid alone is nearly all right, so a temperature fitted on it
        // alone is overconfident for the world; the hard variants are not.
        temperature: vp.joined(&hp).fit_temperature(),
        predictions: vp,
        hard_acc: Some(hp.accuracy()),
        per_variant,
    })
}

/// The test split, once, at temperature `t`; draws confusion.png.
fn measure_test(ctx: &Ctx, scorer: &mut Scorer, t: f64) -> Result<TestNumbers> {
    let test = Arc::new(ctx.ds.test.clone());
    if test.is_empty() {
        return Ok(TestNumbers::no_split());
    }
    let tp = ctx.evaluate(scorer, &test, Mode::Plain)?;
    let called_none = count(&tp.called_none(ctx.open_world.as_ref()));
    let cm = tp.confusion(ctx.ds.classes.len());
    crate::plot::confusion(&ctx.args.out.join("confusion.png"), &cm)?;
    Ok(TestNumbers {
        acc: tp.accuracy(),
        correct: tp.correct(),
        total: test.len(),
        ece: tp.ece(t),
        called_none,
        per_class_md: report::per_class_markdown(&cm, &ctx.ds.classes),
    })
}

/// Records the temperature and the accuracies in the exported model's
/// metadata (the weights untouched).
fn record_calibration(model_path: &Path, valid: &ValidNumbers, test_acc: f64) -> Result<()> {
    let t = valid.temperature;
    let model = LoadedModel::load(model_path)?;
    let mut spec = model.spec.clone();
    // Four decimals are plenty, and keep the metadata readable.
    spec.temperature = ((t * 1e4).round() / 1e4) as f32;
    spec.metadata.insert(
        meta_keys::ACCURACY.to_string(),
        serde_json::json!({
            "valid": valid.predictions.accuracy(),
            "hard_valid": valid.hard_acc,
            "test": test_acc
        })
        .to_string(),
    );
    let mut proto = (*model.proto).clone();
    instrument_model::onnx::set_metadata(&mut proto, &spec.to_metadata());
    std::fs::write(model_path, instrument_model::onnx::encode(&proto))?;
    LoadedModel::load(model_path)?;
    eprintln!("wrote {} (temperature {t:.3})", model_path.display());
    Ok(())
}

fn count(flags: &[bool]) -> usize {
    flags.iter().filter(|&&f| f).count()
}

/// Runs the `none` rule on valid, test and `--negatives`.
fn none_report(
    ctx: &Ctx,
    scorer: &mut Scorer,
    ow: &OpenWorld,
    vp: &Predictions,
    test_called_none: usize,
) -> Result<NoneReport> {
    let (mut negatives_called_none, mut negatives_total) = (0, 0);
    if let Some(dir) = &ctx.args.negatives {
        let paths = crate::data::images_under(dir)?;
        let samples: Vec<Sample> = paths
            .into_iter()
            .map(|path| Sample { path, label: 0 })
            .collect();
        negatives_total = samples.len();
        let np = ctx.evaluate(scorer, &Arc::new(samples), Mode::Plain)?;
        negatives_called_none = count(&np.called_none(Some(ow)));
    }
    Ok(NoneReport {
        valid_called_none: count(&vp.called_none(Some(ow))),
        valid_total: vp.labels.len(),
        test_called_none,
        test_total: ctx.ds.test.len(),
        negatives_called_none,
        negatives_total,
    })
}
