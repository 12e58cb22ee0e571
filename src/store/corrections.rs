//! Corrections: a person's label for a photo, which wins over every model's.
//!
//! A correction is keyed by content hash, like predictions: it holds for every
//! copy of the photo, survives the file being renamed, moved or reclassified
//! by another model, and is what retraining learns from. The label shown on
//! the files rows follows it through the triggers of schema version 4, so
//! `query`, `stats` and the report need no extra join.

use super::{Store, StoreError, now, path_text};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Correction {
    pub content_hash: String,
    /// The person's label (`none`: no instrument).
    pub label: String,
    /// What the model had said when the correction was made.
    pub model_label: Option<String>,
    pub model_sha256: Option<String>,
    /// Where the person saw the photo.
    pub path: String,
    pub corrected_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CorrectionError {
    #[error("{0} is not in the database (is it in the watched folder, and has the daemon seen it yet?)")]
    NotInDatabase(String),
    #[error("{path} has no result to correct: it is {status}{reason}")]
    NotClassified { path: String, status: String, reason: String },
    #[error("'{label}' is not a label of the model that classified {path}; its labels are: {known}")]
    UnknownLabel { label: String, path: String, known: String },
    #[error("{0} has no correction to withdraw")]
    NothingToWithdraw(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for CorrectionError {
    fn from(e: rusqlite::Error) -> Self {
        CorrectionError::Store(StoreError::Sql(e))
    }
}

/// The row a correction is made on: a live, classified file.
struct Target {
    path: String,
    content_hash: String,
    model_label: Option<String>,
    model_sha256: Option<String>,
    /// The labels the model that classified it can give, `none` included if it has one.
    known_labels: Vec<String>,
}

fn target(store: &Store, path: &str) -> Result<Target, CorrectionError> {
    let row = store
        .conn()
        .query_row(
            "SELECT f.status, f.content_hash, f.error, p.label, p.model_sha256, m.labels, m.metadata
             FROM files AS f
             LEFT JOIN predictions AS p ON p.id = f.prediction_id
             LEFT JOIN models AS m ON m.sha256 = p.model_sha256
             WHERE f.path = ?1",
            [path],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| CorrectionError::NotInDatabase(path.to_string()))?;
    let (status, content_hash, error, model_label, model_sha256, labels, metadata) = row;
    let (Some(content_hash), "ok") = (content_hash, status.as_str()) else {
        let reason = error.map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(CorrectionError::NotClassified { path: path.to_string(), status, reason });
    };
    Ok(Target {
        path: path.to_string(),
        content_hash,
        model_label,
        model_sha256,
        known_labels: model_labels(labels.as_deref(), metadata.as_deref()),
    })
}

/// A model's labels as the models table records them, with `none` when the
/// model has the open-world rule that gives it.
fn model_labels(labels: Option<&str>, metadata: Option<&str>) -> Vec<String> {
    let mut all: Vec<String> = labels.and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    let metadata: serde_json::Map<String, serde_json::Value> =
        metadata.and_then(|m| serde_json::from_str(m).ok()).unwrap_or_default();
    if metadata.contains_key(instrument_model::open_world::KEY) {
        all.push(instrument_model::open_world::NONE.to_string());
    }
    all
}

/// The labels a person can choose from: those of the newest model the
/// database has seen, `none` included if it gives one.
pub fn labels_to_choose(store: &Store) -> Result<Vec<String>, StoreError> {
    let row: Option<(String, String)> = store
        .conn()
        .query_row("SELECT labels, metadata FROM models ORDER BY first_used_at DESC, rowid DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    Ok(row.map(|(l, m)| model_labels(Some(&l), Some(&m))).unwrap_or_default())
}

/// Records that the photo at `path` shows `label`. Correcting again replaces
/// the earlier correction. Returns what was recorded.
pub fn correct(store: &Store, path: &Path, label: &str) -> Result<Correction, CorrectionError> {
    let t = target(store, &path_text(path))?;
    if !t.known_labels.iter().any(|l| l == label) {
        return Err(CorrectionError::UnknownLabel {
            label: label.to_string(),
            path: t.path,
            known: t.known_labels.join(", "),
        });
    }
    let c = Correction {
        content_hash: t.content_hash,
        label: label.to_string(),
        model_label: t.model_label,
        model_sha256: t.model_sha256,
        path: t.path,
        corrected_at: now(),
    };
    // A person's correction is not redone by the next scan the way a
    // prediction is, so it is synced to disk before this returns, not only
    // made safe from a crash of the process (the store's NORMAL).
    store.conn().execute_batch("PRAGMA synchronous = FULL")?;
    store.conn().execute(
        "INSERT INTO corrections (content_hash, label, model_label, model_sha256, path, corrected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (content_hash) DO UPDATE SET label = excluded.label, path = excluded.path,
            corrected_at = excluded.corrected_at",
        params![c.content_hash, c.label, c.model_label, c.model_sha256, c.path, c.corrected_at],
    )?;
    Ok(c)
}

/// Withdraws the correction of the photo at `path`: it shows its model's answer again.
pub fn withdraw(store: &Store, path: &Path) -> Result<Correction, CorrectionError> {
    let text = path_text(path);
    let hash: Option<String> = store
        .conn()
        .query_row("SELECT content_hash FROM files WHERE path = ?1", [&text], |r| r.get(0))
        .optional()?
        .ok_or_else(|| CorrectionError::NotInDatabase(text.clone()))?;
    let existing = match hash {
        Some(h) => of_content(store, &h)?,
        None => None,
    };
    let Some(existing) = existing else { return Err(CorrectionError::NothingToWithdraw(text)) };
    store.conn().execute_batch("PRAGMA synchronous = FULL")?;
    store.conn().execute("DELETE FROM corrections WHERE content_hash = ?1", [&existing.content_hash])?;
    Ok(existing)
}

fn of_content(store: &Store, content_hash: &str) -> Result<Option<Correction>, CorrectionError> {
    let mut stmt = store.conn().prepare_cached(
        "SELECT content_hash, label, model_label, model_sha256, path, corrected_at FROM corrections
         WHERE content_hash = ?1",
    )?;
    Ok(stmt.query_row([content_hash], read).optional()?)
}

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Correction> {
    Ok(Correction {
        content_hash: r.get(0)?,
        label: r.get(1)?,
        model_label: r.get(2)?,
        model_sha256: r.get(3)?,
        path: r.get(4)?,
        corrected_at: r.get(5)?,
    })
}

/// Every correction, oldest first.
pub fn all(store: &Store) -> Result<Vec<Correction>, StoreError> {
    let mut stmt = store.conn().prepare(
        "SELECT content_hash, label, model_label, model_sha256, path, corrected_at FROM corrections
         ORDER BY corrected_at, content_hash",
    )?;
    let rows = stmt.query_map([], read)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Outcome;
    use crate::store::query::{self, Filter};
    use crate::store::testing::{classified, meta};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_rw(&dir.path().join("t.db")).unwrap();
        let open_world = serde_json::json!({ instrument_model::open_world::KEY: "{}" }).to_string();
        for (m, metadata) in [("m1", open_world.as_str()), ("m2", "{}")] {
            store
                .conn()
                .execute(
                    "INSERT INTO models (sha256, name, labels, metadata, first_used_at)
                     VALUES (?1, ?1, '[\"violin\",\"harp\",\"guitar\"]', ?2, 'now')",
                    [m, metadata],
                )
                .unwrap();
        }
        (dir, store)
    }

    fn shown(store: &Store) -> Vec<(String, Option<String>, Option<f64>, bool)> {
        let rows = query::results(store, &Filter { min_confidence: Some(0.9), ..Filter::default() }).unwrap();
        rows.into_iter().map(|r| (r.path, r.label, r.confidence, r.corrected)).collect()
    }

    #[test]
    fn a_correction_wins_for_every_copy_survives_reclassification_and_can_be_withdrawn() {
        let (_dir, mut store) = store();
        store.commit(&[classified("h", "m1", "violin", &["/w/a.jpg", "/w/b.jpg"])]).unwrap();
        store.commit(&[classified("g", "m1", "harp", &["/w/c.jpg"])]).unwrap();
        let c = correct(&store, Path::new("/w/a.jpg"), "guitar").unwrap();
        assert_eq!((c.label.as_str(), c.model_label.as_deref()), ("guitar", Some("violin")));
        let guitar = |p: &str| (p.to_string(), Some("guitar".to_string()), Some(1.0), true);
        let unknown = (String::from("/w/c.jpg"), Some("unknown".to_string()), Some(0.5), false);
        // Both copies show it, above any confidence threshold; the other photo is untouched.
        assert_eq!(shown(&store), [guitar("/w/a.jpg"), guitar("/w/b.jpg"), unknown.clone()]);
        // A new copy, and a newer prediction by another model, keep it.
        store.commit(&[Outcome::Known { content_hash: "h".into(), file: meta("/w/d.jpg") }]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.commit(&[classified("h", "m2", "harp", &["/w/a.jpg"])]).unwrap();
        assert_eq!(shown(&store), [guitar("/w/a.jpg"), guitar("/w/b.jpg"), unknown.clone(), guitar("/w/d.jpg")]);
        let s = query::summary(&store, None).unwrap();
        assert_eq!(s.labels, [("guitar".to_string(), 3), ("harp".to_string(), 1)]);
        assert_eq!(s.corrections, 1);
        // Withdrawn: every copy shows the newest model's answer again.
        withdraw(&store, Path::new("/w/b.jpg")).unwrap();
        let harp = |p: &str| (p.to_string(), Some("unknown".to_string()), Some(0.5), false);
        assert_eq!(shown(&store), [harp("/w/a.jpg"), harp("/w/b.jpg"), unknown, harp("/w/d.jpg")]);
        assert!(matches!(withdraw(&store, Path::new("/w/b.jpg")), Err(CorrectionError::NothingToWithdraw(_))));
    }

    #[test]
    fn a_correction_is_refused_for_unknown_paths_failed_files_and_labels_the_model_lacks() {
        let (_dir, mut store) = store();
        store
            .commit(&[classified("h", "m1", "violin", &["/w/a.jpg"]), classified("g", "m2", "harp", &["/w/g.jpg"])])
            .unwrap();
        store
            .commit(&[Outcome::Failed {
                file: meta("/w/bad.jpg"),
                content_hash: None,
                kind: crate::store::FailureKind::Unreadable,
                message: "permission denied".into(),
            }])
            .unwrap();
        let err = |p: &str, l: &str| correct(&store, Path::new(p), l).unwrap_err().to_string();
        assert!(err("/w/nope.jpg", "harp").contains("not in the database"), "{}", err("/w/nope.jpg", "harp"));
        assert!(err("/w/bad.jpg", "harp").contains("permission denied"), "{}", err("/w/bad.jpg", "harp"));
        let e = err("/w/a.jpg", "banjo");
        assert!(e.contains("violin, harp, guitar, none"), "{e}");
        // `none` only where the model has the open-world rule.
        assert!(correct(&store, Path::new("/w/a.jpg"), "none").is_ok());
        assert!(
            err("/w/g.jpg", "none").ends_with("its labels are: violin, harp, guitar"),
            "{}",
            err("/w/g.jpg", "none")
        );
        assert_eq!(all(&store).unwrap().len(), 1);
        assert_eq!(store.live_copy("h").unwrap().as_deref(), Some("/w/a.jpg"));
    }
}
