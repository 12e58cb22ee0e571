//! The local web page: browse the results, search them, correct them.
//!
//! Served by `watch --ui ADDR` beside the daemon, or alone by `serve`. It is
//! a reader of the database like `query` (each request opens its own
//! read-only connection, so it never waits on the daemon's writer), plus the
//! writes a person asks for: a correction, and a retrain on the corrections
//! ([`retrain`]: one background job, whose progress the page polls). The page is one static HTML file
//! ([`page.html`](page.html)) that asks the JSON API for one page of results
//! at a time, by key, so 100,000 results cost what 60 do.
//!
//! There is no login. So the server binds loopback unless told otherwise, and
//! guards the two ways another site in the same browser could reach it:
//! requests whose `Host` is not this server's own name are refused (DNS
//! rebinding), and a correction must be JSON from this page's own origin (a
//! cross-site form cannot send either).

mod api;
mod retrain;

pub use retrain::RetrainSetup;

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct UiConfig {
    pub addr: SocketAddr,
    pub db: PathBuf,
    /// Thumbnails, made once per content and kept here.
    pub thumbs: PathBuf,
    /// Serve on an address other than loopback (anyone who can reach it can
    /// read the library and correct it).
    pub allow_remote: bool,
    /// What the "Retrain" button needs, or why it is off.
    pub retrain: Result<RetrainSetup, String>,
}

impl UiConfig {
    /// The thumbnail folder beside a database: `instruments.db` → `instruments.thumbs/`.
    pub fn thumbs_beside(db: &std::path::Path) -> PathBuf {
        db.with_extension("thumbs")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(
        "{0} is not a loopback address; the page has no login, so anyone who can reach it could read and \
         correct the library. Pass --allow-remote if you mean it"
    )]
    NotLoopback(SocketAddr),
}

/// Binds `cfg.addr` and serves until `cancel` fires. Returns the address
/// bound (port 0 picks a free one) through `bound` once it listens.
pub async fn serve(
    cfg: UiConfig,
    cancel: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    if !cfg.addr.ip().is_loopback() {
        if !cfg.allow_remote {
            return Err(UiError::NotLoopback(cfg.addr).into());
        }
        tracing::warn!(
            "the page is served on {} with no login: anyone who can reach it can read and correct the library",
            cfg.addr
        );
    }
    std::fs::create_dir_all(&cfg.thumbs)
        .with_context(|| format!("cannot create the thumbnail folder {}", cfg.thumbs.display()))?;
    let listener =
        tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("cannot listen on {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!("page at http://{addr}/");
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    let app = api::router(api::Shared::new(cfg, addr));
    axum::serve(listener, app).with_graceful_shutdown(async move { cancel.cancelled().await }).await?;
    Ok(())
}
