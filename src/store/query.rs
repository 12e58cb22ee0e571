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
    /// Only paths that contain this text (the page's "folder or name" search).
    pub path_contains: Option<String>,
    /// Only results at this confidence or above, and below this one (the
    /// page's search; a correction counts as confidence 1).
    pub confidence_at_least: Option<f64>,
    pub confidence_below: Option<f64>,
    /// Only paths after this one: the next page of a listing, found by key
    /// rather than by OFFSET, so page 1,000 costs what page 1 does.
    pub after: Option<String>,
    pub limit: Option<u64>,
    /// Leave out what only the prediction row holds (`top5`, `model_sha256`,
    /// `backend`), for output that does not show it: each row then costs one
    /// read of the files table instead of two random reads.
    pub without_prediction_details: bool,
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
    /// The label is a person's correction, not the model's.
    pub corrected: bool,
    /// What the model said, when a correction overrides it (not read with
    /// `without_prediction_details`).
    pub model_label: Option<String>,
}

pub fn results(store: &Store, f: &Filter) -> Result<Vec<ResultRow>, StoreError> {
    // The files rows carry each one's current result; the `results` view adds
    // its prediction's details. `time` is the result's time in either.
    let (select, time) = if f.without_prediction_details {
        (
            "SELECT path, status, label, confidence, NULL, error_kind, error, NULL, NULL, result_at, content_hash, size,
                    corrected, NULL
             FROM files WHERE status <> 'deleted'",
            "result_at",
        )
    } else {
        (
            "SELECT path, status, label, confidence, top5, error_kind, error, model_sha256, backend, classified_at, content_hash, size,
                    corrected, CASE WHEN corrected THEN model_label END
             FROM results WHERE 1 = 1",
            "classified_at",
        )
    };
    let mut sql = String::from(select);
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
        sql.push_str(&format!(" AND {time} >= ?"));
        args.push(Value::Text(s.as_str().to_string()));
    }
    if let Some(text) = &f.path_contains {
        sql.push_str(" AND instr(path, ?) > 0");
        args.push(Value::Text(text.clone()));
    }
    if let Some(c) = f.confidence_at_least {
        sql.push_str(" AND confidence >= ?");
        args.push(Value::Real(c));
    }
    if let Some(c) = f.confidence_below {
        sql.push_str(" AND confidence < ?");
        args.push(Value::Real(c));
    }
    if let Some(after) = &f.after {
        sql.push_str(" AND path > ?");
        args.push(Value::Text(after.clone()));
    }
    if let Some(g) = &f.path_glob {
        // A relative pattern matches anywhere below the folder.
        sql.push_str(" AND (path GLOB ? OR path GLOB '*/' || ?)");
        args.push(Value::Text(g.clone()));
        args.push(Value::Text(g.clone()));
    }
    // `+path` keeps SQLite from walking the whole table in path order to
    // avoid a sort: a time filter usually keeps few rows, so it reads them
    // through `files_by_result_at` and sorts those. A label's index is
    // already in path order.
    sql.push_str(if f.since.is_some() && f.label.is_none() { " ORDER BY +path" } else { " ORDER BY path" });
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
            corrected: r.get(12)?,
            model_label: r.get(13)?,
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
    /// Contents a person has labelled (whether or not a copy is still present).
    pub corrections: u64,
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
    // One pass over the status index rather than four counts.
    let by_status = pairs("SELECT status, count(*) FROM files GROUP BY status", &[])?;
    let status_count = |s: &str| by_status.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    // `label` is set on ok rows only (schema version 2), so both forms read
    // the label index; without a threshold it is all they read.
    let labels = match min_confidence {
        None => label_counts(store)?,
        Some(min) => pairs(
            "SELECT CASE WHEN confidence >= ?1 THEN label ELSE 'unknown' END AS l, count(*)
             FROM files WHERE label IS NOT NULL GROUP BY l ORDER BY count(*) DESC, l",
            &[&min],
        )?,
    };
    Ok(Summary {
        files: status_count("ok") + status_count("error"),
        ok: status_count("ok"),
        errors: status_count("error"),
        deleted: status_count("deleted"),
        distinct_contents: one("SELECT count(DISTINCT content_hash) FROM files WHERE status = 'ok'")?,
        corrections: one("SELECT count(*) FROM corrections")?,
        labels,
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

/// Photos per label, most first: the label index alone (`label` is set on
/// `ok` rows only, since schema version 2).
fn label_counts(store: &Store) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = store
        .conn()
        .prepare("SELECT label, count(*) FROM files WHERE label IS NOT NULL GROUP BY label ORDER BY 2 DESC, 1")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the page shows while the daemon works, polled every few seconds:
/// only what the status and label indexes answer alone (no distinct count,
/// no scan of the predictions), so it stays cheap at a million rows.
#[derive(Debug, Clone, Serialize)]
pub struct LiveCounts {
    pub ok: u64,
    pub errors: u64,
    pub corrections: u64,
    pub labels: Vec<(String, u64)>,
    /// Every model the database has seen: (sha256, file name).
    pub models: Vec<(String, String)>,
}

pub fn live_counts(store: &Store) -> Result<LiveCounts, StoreError> {
    let c = store.conn();
    let count =
        |sql: &str| -> Result<u64, rusqlite::Error> { c.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|v| v as u64) };
    let mut models = c.prepare("SELECT sha256, name FROM models ORDER BY first_used_at")?;
    let models = models.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    Ok(LiveCounts {
        ok: count("SELECT count(*) FROM files WHERE status = 'ok'")?,
        errors: count("SELECT count(*) FROM files WHERE status = 'error'")?,
        corrections: count("SELECT count(*) FROM corrections")?,
        labels: label_counts(store)?,
        models: models.collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Outcome;
    use crate::store::testing::{classified, meta};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_rw(&dir.path().join("t.db")).unwrap();
        for m in ["m1", "m2"] {
            store
                .conn()
                .execute(
                    "INSERT INTO models (sha256, name, labels, metadata, first_used_at) VALUES (?1, ?1, '[]', '{}', 'now')",
                    [m],
                )
                .unwrap();
        }
        (dir, store)
    }

    fn labels(store: &Store) -> Vec<(String, Option<String>)> {
        let rows = |f: &Filter| -> Vec<_> {
            results(store, f).unwrap().into_iter().map(|r| (r.path, r.label, r.confidence, r.classified_at)).collect()
        };
        let full = rows(&Filter::default());
        let lean = rows(&Filter { without_prediction_details: true, ..Filter::default() });
        assert_eq!(full, lean, "the files rows alone give the same results");
        let since = Filter { since: Some("2000-01-01".into()), label: Some("harp".into()), ..Filter::default() };
        assert_eq!(rows(&since), rows(&Filter { without_prediction_details: true, ..since.clone() }));
        full.into_iter().map(|(path, label, ..)| (path, label)).collect()
    }

    #[test]
    fn every_file_shows_the_newest_prediction_of_its_content_and_a_deleted_one_none() {
        let (_dir, mut store) = store();
        store.commit(&[classified("h", "m1", "violin", &["/w/a.jpg"])]).unwrap();
        // A later copy of the content takes the existing result.
        store.commit(&[Outcome::Known { content_hash: "h".into(), file: meta("/w/b.jpg") }]).unwrap();
        assert_eq!(
            labels(&store),
            [("/w/a.jpg".into(), Some("violin".into())), ("/w/b.jpg".into(), Some("violin".into()))]
        );
        // Another model's newer prediction becomes every copy's result.
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.commit(&[classified("h", "m2", "harp", &["/w/a.jpg"])]).unwrap();
        assert_eq!(
            labels(&store),
            [("/w/a.jpg".into(), Some("harp".into())), ("/w/b.jpg".into(), Some("harp".into()))]
        );
        // A file that became unreadable shows no label, and a deleted one is gone.
        store
            .commit(&[
                Outcome::Failed {
                    file: meta("/w/a.jpg"),
                    content_hash: None,
                    kind: crate::store::FailureKind::Unreadable,
                    message: "gone bad".into(),
                },
                Outcome::Deleted { path: "/w/b.jpg".into() },
            ])
            .unwrap();
        assert_eq!(labels(&store), [("/w/a.jpg".into(), None)]);
        let label_col: Option<String> =
            store.conn().query_row("SELECT label FROM files WHERE path = '/w/b.jpg'", [], |r| r.get(0)).unwrap();
        assert_eq!(label_col, None, "a deleted row keeps no label for stats to count");
        let s = summary(&store, None).unwrap();
        assert_eq!((s.files, s.ok, s.errors, s.deleted), (1, 0, 1, 1));
        assert!(s.labels.is_empty());
    }

    #[test]
    fn label_and_time_filters_and_stats_read_indexes_not_the_whole_table() {
        let (_dir, store) = store();
        let plan = |sql: &str| -> String {
            let mut stmt = store.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let by_label = plan("SELECT path FROM results WHERE label = 'violin' ORDER BY path LIMIT 50");
        assert!(by_label.contains("USING INDEX files_by_label"), "{by_label}");
        assert!(!by_label.contains("TEMP B-TREE"), "no sort: the index is in path order: {by_label}");
        let since = plan("SELECT path FROM results WHERE classified_at >= '2026-01-01' ORDER BY +path");
        assert!(since.contains("files_by_result_at"), "{since}");
        let stats = plan("SELECT label, count(*) FROM files WHERE label IS NOT NULL GROUP BY label");
        assert!(stats.contains("COVERING INDEX files_by_label"), "{stats}");
    }
}
