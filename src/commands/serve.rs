//! `instrument-detector serve`: the local web page alone, on a database the
//! daemon writes (or wrote). `watch --ui ADDR` serves the same page beside
//! the daemon.

use anyhow::Result;
use instrument_detector::web::{self, RetrainSetup, UiConfig};
use instrument_model::retrain::FitSettings;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to serve the page on (loopback unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:8380", value_name = "ADDR")]
    addr: SocketAddr,
    #[arg(long, default_value = "instruments.db", value_name = "FILE")]
    db: PathBuf,
    #[command(flatten)]
    page: PageArgs,
    /// The engine the page's retrain and reclassification run on.
    #[command(flatten)]
    model: crate::ModelArgs,
}

/// What `serve` and `watch --ui` share.
#[derive(clap::Args, Debug, Clone)]
pub struct PageArgs {
    /// Thumbnail folder (made once per photo). Default: beside the database,
    /// `instruments.thumbs/` for `instruments.db`.
    #[arg(long, value_name = "DIR")]
    thumbs: Option<PathBuf>,
    /// Serve on an address that is not loopback. The page has no login:
    /// anyone who can reach it can browse and correct the library.
    #[arg(long)]
    allow_remote: bool,
    /// The dataset the model was trained on (train/ and valid/, each
    /// <label>/<photo>): turns on the page's "Retrain" button.
    #[arg(long, value_name = "DIR")]
    train_data: Option<PathBuf>,
    /// The page's retrain: full-batch optimisation steps (as `retrain --steps`).
    #[arg(long, default_value_t = FitSettings::default().steps, value_name = "N")]
    retrain_steps: usize,
    /// The page's retrain: its learning rate (as `retrain --learning-rate`).
    #[arg(long, default_value_t = FitSettings::default().learning_rate, value_name = "LR")]
    retrain_learning_rate: f32,
}

impl PageArgs {
    /// The page's configuration; `model` is how the daemon beside it was told
    /// which model to run (`serve`: the library's own, as with no --model).
    pub fn config(&self, addr: SocketAddr, db: PathBuf, model: &crate::ModelArgs) -> UiConfig {
        let thumbs = self.thumbs.clone().unwrap_or_else(|| UiConfig::thumbs_beside(&db));
        let retrain = match (&self.train_data, &model.model) {
            (None, _) => Err("to retrain from this page, start it with --train-data DIR (the dataset the model \
                              was trained on, e.g. ../shared/data/instruments)"
                .to_string()),
            (Some(_), Some(chosen)) => Err(format!(
                "the daemon runs {}, chosen with --model; the page retrains the library's own model, which a \
                 daemon started without --model uses",
                chosen.display()
            )),
            (Some(data), None) => Ok(RetrainSetup {
                data: data.clone(),
                shipped: crate::commands::default_model_path(),
                backend: model.backend,
                engine: model.engine_options(),
                settings: FitSettings {
                    steps: self.retrain_steps,
                    learning_rate: self.retrain_learning_rate,
                    ..FitSettings::default()
                },
            }),
        };
        UiConfig { addr, db, thumbs, allow_remote: self.allow_remote, retrain }
    }
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    if !a.db.exists() {
        return Err(instrument_detector::store::StoreError::Missing(a.db.clone()).into());
    }
    let cfg = a.page.config(a.addr, a.db, &a.model);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        web::serve(cfg, cancel, None).await
    })?;
    Ok(ExitCode::SUCCESS)
}
