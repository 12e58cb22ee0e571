//! The page's "Retrain" button: one background job at a time that retrains
//! the library's model on its corrections ([`crate::retrain`]), puts it in
//! use (a daemon beside the page swaps to it), then redoes the library with
//! it ([`crate::reclassify`]), with its progress for the page to poll.
//!
//! The job runs on a thread of its own, not the async runtime: it is minutes
//! of CPU at worst, and the runtime has two threads that serve the page.

use crate::engine::{BackendChoice, EngineOptions};
use crate::model::LoadedModel;
use crate::reclassify::{self, Selection};
use crate::retrain::{self as library, LibraryRetrain};
use crate::store::Store;
use instrument_model::retrain::{FitSettings, Progress};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the page needs to retrain: the dataset and the shipped model the
/// library starts from (the library's retrained model, once it has one,
/// wins over it, as it does for the daemon).
#[derive(Debug, Clone)]
pub struct RetrainSetup {
    pub data: PathBuf,
    pub shipped: PathBuf,
    pub backend: BackendChoice,
    pub engine: EngineOptions,
    pub settings: FitSettings,
}

/// Where the job is, as the page shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub(super) struct JobState {
    /// Why the button is off (no dataset given, the daemon runs a model chosen with --model).
    pub(super) unavailable: Option<String>,
    pub(super) running: bool,
    /// `features`, `fitting`, `checking`, `reclassifying`, then `done`, `refused` or `failed`.
    pub(super) stage: String,
    pub(super) done: usize,
    pub(super) total: usize,
    /// One sentence: what happened, or what is happening.
    pub(super) message: String,
}

/// The one job of a page, and its state.
pub(super) struct Job {
    setup: Result<RetrainSetup, String>,
    db: PathBuf,
    state: Arc<Mutex<JobState>>,
}

impl Job {
    pub(super) fn new(setup: Result<RetrainSetup, String>, db: PathBuf) -> Job {
        let unavailable = setup.as_ref().err().cloned();
        Job { setup, db, state: Arc::new(Mutex::new(JobState { unavailable, ..JobState::default() })) }
    }

    pub(super) fn state(&self) -> JobState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the job, or says why not (off, or already running).
    pub(super) fn start(&self) -> Result<(), String> {
        let setup = self.setup.clone()?;
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.running {
                return Err("a retrain is already running".into());
            }
            *s = JobState { running: true, stage: "starting".into(), ..JobState::default() };
        }
        let (state, db) = (self.state.clone(), self.db.clone());
        std::thread::Builder::new()
            .name("retrain".into())
            .spawn(move || {
                // A panic inside (a decoder, say) must not leave the job
                // "running" for ever: it ends as failed, with the reason.
                let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&setup, &db, &state)))
                    .unwrap_or_else(|panic| Err(("failed", format!("the retrain stopped: {}", panic_text(&panic)))));
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.running = false;
                match ended {
                    Ok(message) => (s.stage, s.message) = ("done".into(), message),
                    Err((stage, message)) => {
                        tracing::warn!("retrain from the page: {message}");
                        (s.stage, s.message) = (stage.into(), message);
                    }
                }
            })
            .map_err(|e| format!("cannot start the retrain: {e}"))?;
        Ok(())
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic".into(),
    }
}

/// Sets the stage and its progress.
fn report(state: &Mutex<JobState>, stage: &str, done: usize, total: usize) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    (s.stage, s.done, s.total) = (stage.into(), done, total);
}

/// The job: retrain, then reclassify. `Err((stage, why))` where it stopped.
fn run(setup: &RetrainSetup, db: &std::path::Path, state: &Mutex<JobState>) -> Result<String, (&'static str, String)> {
    let job = LibraryRetrain {
        db: db.to_path_buf(),
        base: library::model_for(None, db, setup.shipped.clone()),
        data: setup.data.clone(),
        out: None,
        settings: setup.settings,
        cache: None,
        backend: setup.backend,
        engine: setup.engine.clone(),
    };
    let retrained = library::run(&job, &mut |p| match p {
        Progress::Features { done, total } => report(state, "features", done, total),
        Progress::Fitting { step, steps, .. } => report(state, "fitting", step, steps),
        Progress::Checking => report(state, "checking", 0, 0),
    })
    .map_err(|e| match e {
        library::RetrainError::Refused { .. } => ("refused", e.to_string()),
        e => ("failed", e.to_string()),
    })?;
    let r = &retrained.report;
    let learnt = format!(
        "retrained on {} corrections ({} of them now answered right by the model itself); valid {} of {} right, was {}",
        r.corrections, r.corrections_right_after, r.valid_right_after, r.valid_photos, r.valid_right_before
    );
    let failed = |e: String| ("failed", format!("{learnt}; but reclassifying the library failed: {e}"));
    let model = LoadedModel::load(&library::current(db)).map_err(|e| failed(e.to_string()))?;
    let (mut engine, _) =
        crate::engine::open(&model, library::local(setup.backend), &setup.engine).map_err(|e| failed(e.to_string()))?;
    let mut store = Store::open_rw(db).map_err(|e| failed(e.to_string()))?;
    let batch = engine.preferred_batch();
    let selection = Selection { stale: true, ..Selection::default() };
    let done = reclassify::run(&mut store, &model, engine.as_mut(), &selection, batch, &mut |done, total| {
        report(state, "reclassifying", done, total)
    })
    .map_err(|e| failed(e.to_string()))?;
    Ok(format!("{learnt}; {} photos reclassified with it", done.reclassified))
}
