//! The page's routes: the HTML, the JSON API, thumbnails and previews.
//!
//! Every database or image call runs on the blocking pool: SQLite and the
//! decoders block, and the daemon's runtime has two threads.

use super::UiConfig;
use crate::store::corrections::{self, CorrectionError};
use crate::store::query::{self, Filter};
use crate::store::{FileStatus, Store, StoreError, path_from_text};
use crate::thumbnail::{self, PREVIEW};
use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// The page itself: static, all data comes from the API.
const PAGE: &str = include_str!("page.html");

/// Most results one request returns.
const MAX_PAGE: u64 = 500;

pub(super) struct Shared {
    cfg: UiConfig,
    /// The `Host` values this server answers to.
    hosts: Vec<String>,
    retrain: super::retrain::Job,
}

impl Shared {
    pub(super) fn new(cfg: UiConfig, bound: SocketAddr) -> Arc<Shared> {
        let port = bound.port();
        let mut hosts = vec![bound.to_string(), format!("localhost:{port}")];
        if bound.ip().is_loopback() {
            hosts.extend([format!("127.0.0.1:{port}"), format!("[::1]:{port}")]);
        }
        let retrain = super::retrain::Job::new(cfg.retrain.clone(), cfg.db.clone());
        Arc::new(Shared { cfg, hosts, retrain })
    }

    fn open(&self) -> Result<Store, ApiError> {
        Ok(Store::open_ro(&self.cfg.db)?)
    }
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/counts", get(counts))
        .route("/api/results", get(results))
        .route("/api/labels", get(labels))
        .route("/api/corrections", post(correct))
        .route("/api/corrections/withdraw", post(withdraw))
        .route("/api/retrain", get(retrain_state).post(retrain_start))
        .route("/thumb/{hash}", get(thumb))
        .route("/preview/{hash}", get(preview))
        .layer(middleware::from_fn_with_state(shared.clone(), only_our_host))
        .with_state(shared)
}

/// An answer other than success: a status and a sentence for the page to show.
#[derive(Debug)]
pub(super) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::Missing(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<CorrectionError> for ApiError {
    fn from(e: CorrectionError) -> Self {
        match e {
            CorrectionError::Store(s) => s.into(),
            CorrectionError::NotInDatabase(_) | CorrectionError::NothingToWithdraw(_) => {
                ApiError(StatusCode::NOT_FOUND, e.to_string())
            }
            CorrectionError::NotClassified { .. } | CorrectionError::UnknownLabel { .. } => {
                ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("request failed: {e}")))?
}

/// Refuses requests for another host name (a page elsewhere that rebinds its
/// name to 127.0.0.1), and writes that are not JSON sent by this page.
async fn only_our_host(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !shared.hosts.iter().any(|h| h == host) {
        return ApiError(StatusCode::FORBIDDEN, format!("this server does not answer to the host name '{host}'"))
            .into_response();
    }
    if request.method() == axum::http::Method::POST {
        let json = headers.get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let same_origin = origin.is_none_or(|o| o.strip_prefix("http://").is_some_and(|h| h == host));
        if !json || !same_origin {
            return ApiError(StatusCode::FORBIDDEN, "changes are accepted from this server's own page only".into())
                .into_response();
        }
    }
    next.run(request).await
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            // The page runs its own script and nothing else.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"),
            ),
        ],
        PAGE,
    )
}

async fn counts(State(shared): State<Arc<Shared>>) -> Result<Json<query::LiveCounts>, ApiError> {
    Ok(Json(blocking(move || Ok(query::live_counts(&shared.open()?)?)).await?))
}

async fn labels(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(blocking(move || Ok(corrections::labels_to_choose(&shared.open()?)?)).await?))
}

/// The page's search: every field optional.
#[derive(Debug, Deserialize)]
pub(super) struct Search {
    label: Option<String>,
    /// `ok` or `error`.
    status: Option<String>,
    /// Text the path contains.
    path: Option<String>,
    /// RFC 3339 lower bound on the result's time.
    since: Option<String>,
    min_confidence: Option<f64>,
    max_confidence: Option<f64>,
    /// The last path of the previous page.
    after: Option<String>,
    limit: Option<u64>,
}

impl Search {
    fn filter(self) -> Result<Filter, ApiError> {
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some("ok") => Some(FileStatus::Ok),
            Some("error") => Some(FileStatus::Error),
            Some(other) => return Err(bad_request(format!("status must be ok or error, not '{other}'"))),
        };
        for c in [self.min_confidence, self.max_confidence].into_iter().flatten() {
            if !(0.0..=1.0).contains(&c) {
                return Err(bad_request(format!("a confidence is between 0 and 1, not {c}")));
            }
        }
        let since = match self.since.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| bad_request(format!("since '{s}' is not an RFC 3339 time: {e}")))?
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Ok(Filter {
            label: nonempty(self.label),
            status,
            path_contains: nonempty(self.path),
            since,
            // Bounds of a search here, not the `unknown` relabelling that
            // `query --min-confidence` does.
            confidence_at_least: self.min_confidence,
            confidence_below: self.max_confidence,
            after: nonempty(self.after),
            limit: Some(self.limit.unwrap_or(60).clamp(1, MAX_PAGE)),
            ..Filter::default()
        })
    }
}

async fn results(
    State(shared): State<Arc<Shared>>,
    Query(search): Query<Search>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = search.filter()?;
    let rows = blocking(move || Ok(query::results(&shared.open()?, &filter)?)).await?;
    // The page asks for the next page after the last path it was given.
    let next = rows.last().map(|r| r.path.clone());
    Ok(Json(serde_json::json!({ "results": rows, "next": next })))
}

#[derive(Debug, Deserialize)]
pub(super) struct CorrectionRequest {
    path: String,
    label: Option<String>,
}

async fn correct(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<CorrectionRequest>,
) -> Result<Json<corrections::Correction>, ApiError> {
    let label = req.label.filter(|l| !l.is_empty()).ok_or_else(|| bad_request("a label is needed"))?;
    let path = path_from_text(&req.path);
    Ok(Json(
        blocking(move || {
            let store = Store::open_rw(&shared.cfg.db)?;
            Ok(corrections::correct(&store, &path, &label)?)
        })
        .await?,
    ))
}

async fn withdraw(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<CorrectionRequest>,
) -> Result<Json<corrections::Correction>, ApiError> {
    let path = path_from_text(&req.path);
    Ok(Json(
        blocking(move || {
            let store = Store::open_rw(&shared.cfg.db)?;
            Ok(corrections::withdraw(&store, &path)?)
        })
        .await?,
    ))
}

/// A content hash as the URL gives it: hex, as stored.
fn checked_hash(hash: &str) -> Result<&str, ApiError> {
    let hex = hash.len() >= 16 && hash.len() <= 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    if hex { Ok(hash) } else { Err(bad_request("not a content hash")) }
}

/// A path that holds the content now, or 404.
fn source_of(shared: &Shared, hash: &str) -> Result<std::path::PathBuf, ApiError> {
    let path = shared
        .open()?
        .live_copy(hash)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no file holds this photo any more".into()))?;
    Ok(path_from_text(&path))
}

fn jpeg(bytes: Vec<u8>) -> Response {
    let headers: HeaderMap = [
        (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
        // Named by content: it never changes.
        (header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=86400, immutable")),
    ]
    .into_iter()
    .collect();
    (headers, bytes).into_response()
}

async fn thumb(State(shared): State<Arc<Shared>>, UrlPath(hash): UrlPath<String>) -> Result<Response, ApiError> {
    let hash = checked_hash(&hash)?.to_string();
    let bytes = blocking(move || {
        let file = shared.cfg.thumbs.join(thumbnail::file_name(&hash));
        if let Ok(bytes) = std::fs::read(&file) {
            return Ok(bytes);
        }
        let src = source_of(&shared, &hash)?;
        thumbnail::make(&src, &file).map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        std::fs::read(&file).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    })
    .await?;
    Ok(jpeg(bytes))
}

async fn preview(State(shared): State<Arc<Shared>>, UrlPath(hash): UrlPath<String>) -> Result<Response, ApiError> {
    let hash = checked_hash(&hash)?.to_string();
    let bytes = blocking(move || {
        let src = source_of(&shared, &hash)?;
        thumbnail::render(&src, PREVIEW).map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    })
    .await?;
    Ok(jpeg(bytes))
}

async fn retrain_state(State(shared): State<Arc<Shared>>) -> Json<super::retrain::JobState> {
    Json(shared.retrain.state())
}

/// Starts a retrain; 409 while one runs, 422 when the page cannot retrain.
async fn retrain_start(State(shared): State<Arc<Shared>>) -> Result<Json<super::retrain::JobState>, ApiError> {
    if let Err(why) = shared.retrain.start() {
        let status =
            if shared.retrain.state().running { StatusCode::CONFLICT } else { StatusCode::UNPROCESSABLE_ENTITY };
        return Err(ApiError(status, why));
    }
    Ok(Json(shared.retrain.state()))
}
