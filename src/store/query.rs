//! Read-side queries: what `query`, `stats` and the report show.

use super::{FailureKind, FileStatus, Scored, Store, StoreError};
use rusqlite::types::Value;
use serde::Serialize;

/// Filters of `instrument-detector query`. All optional; all bound as parameters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub label: Option<String>,
    /// Results below this confidence read as `unknown`.
    pub min_confidence: Option<f64>,
    /// RFC 3339 UTC lower bound on `classified_at`.
    pub since: Option<String>,
    pub path_glob: Option<String>,
    pub status: Option<FileStatus>,
    pub limit: Option<u64>,
}

/// The label shown for low-confidence results.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    pub path: String,
    pub status: FileStatus,
    pub label: Option<String>,
    pub confidence: Option<f64>,
    pub top5: Vec<Scored>,
    pub error_kind: Option<FailureKind>,
    pub error: Option<String>,
    pub model_sha256: Option<String>,
    pub backend: Option<String>,
    pub classified_at: Option<String>,
    pub content_hash: Option<String>,
    pub size: Option<i64>,
}

pub fn results(store: &Store, f: &Filter) -> Result<Vec<ResultRow>, StoreError> {
    let mut sql = String::from(
        "SELECT path, status, label, confidence, top5, error_kind, error, model_sha256, backend, classified_at, content_hash, size
         FROM results WHERE 1 = 1",
    );
    let mut args: Vec<Value> = Vec::new();
    if let Some(s) = &f.status {
        sql.push_str(" AND status = ?");
        args.push(Value::Text(s.as_str().to_string()));
    }
    match (&f.label, f.min_confidence) {
        (Some(l), Some(c)) if l == UNKNOWN => {
            sql.push_str(" AND status = 'ok' AND confidence < ?");
            args.push(Value::Real(c));
        }
        (Some(l), Some(c)) => {
            sql.push_str(" AND label = ? AND confidence >= ?");
            args.push(Value::Text(l.clone()));
            args.push(Value::Real(c));
        }
        (Some(l), None) => {
            sql.push_str(" AND label = ?");
            args.push(Value::Text(l.clone()));
        }
        (None, _) => {}
    }
    if let Some(s) = &f.since {
        sql.push_str(" AND classified_at >= ?");
        args.push(Value::Text(s.as_str().to_string()));
    }
    if let Some(g) = &f.path_glob {
        // A relative pattern matches anywhere below the folder.
        sql.push_str(" AND (path GLOB ? OR path GLOB '*/' || ?)");
        args.push(Value::Text(g.clone()));
        args.push(Value::Text(g.clone()));
    }
    sql.push_str(" ORDER BY path");
    if let Some(n) = f.limit {
        sql.push_str(" LIMIT ?");
        args.push(Value::Integer(n.min(i64::MAX as u64) as i64));
    }
    let mut stmt = store.conn().prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        let top5: Option<String> = r.get(4)?;
        let mut row = ResultRow {
            path: r.get(0)?,
            status: r.get(1)?,
            label: r.get(2)?,
            confidence: r.get(3)?,
            top5: top5.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
            error_kind: r.get(5)?,
            error: r.get(6)?,
            model_sha256: r.get(7)?,
            backend: r.get(8)?,
            classified_at: r.get(9)?,
            content_hash: r.get(10)?,
            size: r.get(11)?,
        };
        if let (Some(min), Some(c)) = (f.min_confidence, row.confidence)
            && c < min
        {
            row.label = Some(UNKNOWN.to_string());
        }
        Ok(row)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub files: u64,
    pub ok: u64,
    pub errors: u64,
    pub deleted: u64,
    pub distinct_contents: u64,
    pub labels: Vec<(String, u64)>,
    /// As stored, so that `stats` reports whatever a database holds (an
    /// error row without a kind counts as `unknown`) rather than refusing it.
    pub error_kinds: Vec<(String, u64)>,
    pub models: Vec<ModelUse>,
    pub backends: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelUse {
    pub sha256: String,
    pub name: String,
    pub predictions: u64,
    pub first_used_at: String,
}

pub fn summary(store: &Store, min_confidence: Option<f64>) -> Result<Summary, StoreError> {
    let c = store.conn();
    let one =
        |sql: &str| -> Result<u64, rusqlite::Error> { c.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|v| v as u64) };
    let pairs = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<Vec<(String, u64)>, rusqlite::Error> {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt.query_map(args, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    };
    let min = min_confidence.unwrap_or(0.0);
    Ok(Summary {
        files: one("SELECT count(*) FROM files WHERE status <> 'deleted'")?,
        ok: one("SELECT count(*) FROM files WHERE status = 'ok'")?,
        errors: one("SELECT count(*) FROM files WHERE status = 'error'")?,
        deleted: one("SELECT count(*) FROM files WHERE status = 'deleted'")?,
        distinct_contents: one("SELECT count(DISTINCT content_hash) FROM files WHERE status = 'ok'")?,
        labels: pairs(
            "SELECT CASE WHEN confidence >= ?1 THEN label ELSE 'unknown' END AS l, count(*)
             FROM results WHERE status = 'ok' AND label IS NOT NULL GROUP BY l ORDER BY count(*) DESC, l",
            &[&min],
        )?,
        error_kinds: pairs(
            "SELECT coalesce(error_kind, 'unknown'), count(*) FROM files WHERE status = 'error'
             GROUP BY 1 ORDER BY 2 DESC, 1",
            &[],
        )?,
        models: {
            let mut stmt = c.prepare(
                "SELECT m.sha256, m.name, m.first_used_at, (SELECT count(*) FROM predictions p WHERE p.model_sha256 = m.sha256)
                 FROM models m ORDER BY m.first_used_at",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ModelUse {
                    sha256: r.get(0)?,
                    name: r.get(1)?,
                    first_used_at: r.get(2)?,
                    predictions: r.get::<_, i64>(3)? as u64,
                })
            })?;
            rows.collect::<Result<_, _>>()?
        },
        backends: pairs("SELECT backend, count(*) FROM predictions GROUP BY backend ORDER BY 2 DESC", &[])?,
    })
}
