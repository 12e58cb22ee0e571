//! `instrument-detector serve`: the local web page alone, on a database the
//! daemon writes (or wrote). `watch --ui ADDR` serves the same page beside
//! the daemon.

use anyhow::Result;
use instrument_detector::web::{self, UiConfig};
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
}

impl PageArgs {
    pub fn config(&self, addr: SocketAddr, db: PathBuf) -> UiConfig {
        let thumbs = self.thumbs.clone().unwrap_or_else(|| UiConfig::thumbs_beside(&db));
        UiConfig { addr, db, thumbs, allow_remote: self.allow_remote }
    }
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    if !a.db.exists() {
        return Err(instrument_detector::store::StoreError::Missing(a.db.clone()).into());
    }
    let cfg = a.page.config(a.addr, a.db);
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
