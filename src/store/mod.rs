//! The SQLite store: one writer, many readers.
//!
//! Layout and example queries are documented in the README. Rules this module
//! keeps:
//! - WAL mode and a busy timeout, so `query` and `sqlite3` read while the
//!   daemon writes, and a writer waits for another's transaction instead of failing;
//! - a file's row is written in the same transaction as its prediction, so
//!   "done" is never recorded without a result;
//! - every statement binds its parameters; no SQL is built from user input.

pub mod corrections;
pub(crate) mod cursor;
pub mod query;
pub mod schema;
mod status;

pub use status::{FailureKind, FileStatus, UnknownValue};

use crate::model::LoadedModel;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error(
        "database {path} has schema version {found}, newer than this program understands ({supported}); upgrade instrument-detector"
    )]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error(
        "database {path} has schema version {found} and this program reads version {supported}; \
         upgrading it needs write access, which failed: {source}"
    )]
    CannotUpgrade { path: PathBuf, found: i64, supported: i64, source: Box<StoreError> },
    #[error("database {0} does not exist (has the daemon run yet? pass --db to point at another)")]
    Missing(PathBuf),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Current time as RFC 3339 UTC with milliseconds; sorts as text.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A path as stored and printed: UTF-8 as is, except that a backslash is
/// doubled and a byte that is not UTF-8 becomes `\xNN`. Lossless and
/// injective: [`path_from_text`] gives back the exact bytes, so a file with a
/// non-UTF-8 name can be opened again from its row (organize, report,
/// reclassify, the deletion check).
pub fn path_text(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The inverse of [`path_text`]. Text that is not such an escape (written by
/// hand, or by a version before backslashes were doubled) is taken as is.
pub fn path_from_text(text: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b'\\', Some(b'x')) if hex(i + 2).is_some() && hex(i + 3).is_some() => {
                out.push((hex(i + 2).unwrap_or(0) * 16 + hex(i + 3).unwrap_or(0)) as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// What the store knows about a path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileState {
    pub(crate) content_hash: Option<String>,
    pub(crate) size: Option<i64>,
    pub(crate) mtime_ns: Option<i64>,
    pub(crate) status: FileStatus,
}

impl FileState {
    /// Whether this row already records `file` as it is on disk now (same
    /// size and mtime, not deleted): then there is nothing to redo.
    pub(crate) fn is_current(&self, file: &FileMeta) -> bool {
        self.status != FileStatus::Deleted && self.size == Some(file.size) && self.mtime_ns == Some(file.mtime_ns)
    }
}

/// Identity of a file on disk at the moment it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct FileMeta {
    pub path: String,
    pub size: i64,
    pub mtime_ns: i64,
}

impl FileMeta {
    /// The identity that `meta`, just read for `path`, gives it.
    pub(crate) fn of(path: &Path, meta: &std::fs::Metadata) -> FileMeta {
        use std::os::unix::fs::MetadataExt;
        // Nanoseconds, as stored in `files.mtime_ns`.
        let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
        FileMeta { path: path_text(path), size: meta.len() as i64, mtime_ns }
    }
}

/// One of the top-k classes of a prediction; defined with top-k in the model crate.
pub use instrument_model::predict::Scored;

#[derive(Debug, Clone)]
pub struct PredictionRow {
    pub content_hash: String,
    pub model_sha256: String,
    pub top5: Vec<Scored>,
    pub backend: String,
    pub inference_ms: f64,
}

/// What the pipeline learnt about one or more files; the writer turns a batch
/// of these into one transaction.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Newly classified content, and every path that holds it.
    Classified { prediction: PredictionRow, files: Vec<FileMeta> },
    /// Content already classified by the current model, found under a path.
    Known { content_hash: String, file: FileMeta },
    /// The file could not be classified.
    Failed { file: FileMeta, content_hash: Option<String>, kind: FailureKind, message: String },
    /// The path no longer exists, nor anything under it (if it was a folder).
    Deleted { path: String },
}

/// One file's row: `ok` with no error, or `error` with its kind and message.
fn upsert(
    stmt: &mut rusqlite::CachedStatement<'_>,
    f: &FileMeta,
    content_hash: Option<&str>,
    error: Option<(FailureKind, &str)>,
    now: &str,
) -> rusqlite::Result<usize> {
    let status = if error.is_some() { FileStatus::Error } else { FileStatus::Ok };
    let (kind, message) = error.unzip();
    stmt.execute(params![f.path, content_hash, f.size, f.mtime_ns, status, kind, message, now])
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) for writing, and migrates the schema.
    pub fn open_rw(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        let mut store = Store { conn, path: path.to_path_buf() };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database read-only (for `query`, `stats`, the scanner).
    pub fn open_ro(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let store = Store { conn, path: path.to_path_buf() };
        let version: i64 = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > schema::latest_version() {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: schema::latest_version(),
            });
        }
        if version < schema::latest_version() {
            // Written by an older version (the daemon not restarted since an
            // upgrade): the read queries need the new columns, so migrate it
            // once through a writer, then read as asked.
            drop(store);
            Store::open_rw(path).map_err(|e| StoreError::CannotUpgrade {
                path: path.to_path_buf(),
                found: version,
                supported: schema::latest_version(),
                source: Box::new(e),
            })?;
            return Store::open_ro(path);
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    fn configure(&mut self) -> Result<(), StoreError> {
        // Wait (rather than fail) while another process holds a write lock.
        self.conn.busy_timeout(Duration::from_secs(60))?;
        let mode: String = self.conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!("database {} is in {mode} journal mode, not WAL", self.path.display());
        }
        // NORMAL is durable across process crashes in WAL mode; only an OS crash
        // can lose the last transactions, which the next scan then redoes.
        self.conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        // Checkpoint every 256 pages (1 MiB) rather than SQLite's 1000 (4 MiB),
        // and give the WAL's disk space back beyond 64 MiB after a checkpoint.
        // The WAL only restarts from its beginning after a checkpoint; on a disk
        // with little room left, a WAL waiting for 4 MiB can fill the disk before
        // it ever checkpoints, and then the checkpoint itself (which must grow
        // the main file) cannot run either. Found by the disk-full test.
        self.conn.execute_batch("PRAGMA wal_autocheckpoint = 256; PRAGMA journal_size_limit = 67108864;")?;
        // A 64 MiB page cache (SQLite's default is 2 MiB). The indexes keyed by
        // content hash take their inserts at random places; once they outgrow
        // the cache, every insert rereads pages through the kernel, and the
        // pipeline slows as the library grows. The cache fills only as pages
        // are used, so a small library costs no more memory than before.
        self.conn.execute_batch("PRAGMA cache_size = -65536;")?;
        // Statement journals in memory: each upsert fired by a commit (and
        // the triggers behind it) saves the pages it may have to roll back, and
        // in a temporary file that was a write() per page, 8% of the daemon's
        // time on a 100k library. They are small and live for one statement.
        self.conn.execute_batch("PRAGMA temp_store = MEMORY;")?;
        Ok(())
    }

    /// Copies the WAL into the main file and truncates the WAL to zero bytes.
    ///
    /// The automatic checkpoint only runs once the WAL holds
    /// `wal_autocheckpoint` pages (256, set above); on a nearly full disk it
    /// may never get there, and then every
    /// later commit appends to a WAL that has nowhere left to grow. The
    /// writer calls this after a failed commit, so that space freed on the
    /// disk is not simply eaten again by the WAL. Returns whether the
    /// checkpoint completed (false when a reader still needs old frames, or
    /// the main file could not grow).
    pub(crate) fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        let (busy, _log, _done): (i64, i64, i64) =
            self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(busy == 0)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let latest = schema::latest_version();
        if version > latest {
            return Err(StoreError::TooNew { path: self.path.clone(), found: version, supported: latest });
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            // PRAGMA takes no bound parameters; the value is our own integer.
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Records a model (idempotent).
    pub fn register_model(&self, model: &LoadedModel) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO models (sha256, name, labels, metadata, first_used_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (sha256) DO NOTHING",
            params![
                model.sha256,
                model.name(),
                serde_json::to_string(&model.spec.labels).unwrap_or_default(),
                serde_json::to_string(&model.spec.metadata).unwrap_or_default(),
                now()
            ],
        )?;
        Ok(())
    }

    pub(crate) fn file_state(&self, path: &str) -> Result<Option<FileState>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT content_hash, size, mtime_ns, status FROM files WHERE path = ?1")?;
        Ok(stmt
            .query_row([path], |r| {
                Ok(FileState { content_hash: r.get(0)?, size: r.get(1)?, mtime_ns: r.get(2)?, status: r.get(3)? })
            })
            .optional()?)
    }

    pub(crate) fn has_prediction(&self, content_hash: &str, model_sha256: &str) -> Result<bool, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT 1 FROM predictions WHERE content_hash = ?1 AND model_sha256 = ?2")?;
        Ok(stmt.exists(params![content_hash, model_sha256])?)
    }

    /// The label the `results` view shows for a content: its newest prediction's.
    pub(crate) fn label_of(&self, content_hash: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT label FROM predictions WHERE content_hash = ?1 ORDER BY classified_at DESC, rowid DESC LIMIT 1",
        )?;
        Ok(stmt.query_row([content_hash], |r| r.get(0)).optional()?)
    }

    /// A path that holds `content_hash` now, if any: the file the page's
    /// thumbnails and the export of corrections read.
    pub fn live_copy(&self, content_hash: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT path FROM files WHERE content_hash = ?1 AND status = 'ok' ORDER BY path LIMIT 1")?;
        Ok(stmt.query_row([content_hash], |r| r.get(0)).optional()?)
    }

    /// Writes a batch of outcomes in one transaction.
    pub fn commit(&mut self, outcomes: &[Outcome]) -> Result<(), StoreError> {
        let now = now();
        let tx = self.conn.transaction()?;
        {
            let mut upsert_file = tx.prepare_cached(
                "INSERT INTO files (path, content_hash, size, mtime_ns, status, error_kind, error, first_seen_at, classified_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT (path) DO UPDATE SET
                    content_hash = excluded.content_hash, size = excluded.size, mtime_ns = excluded.mtime_ns,
                    status = excluded.status, error_kind = excluded.error_kind, error = excluded.error,
                    classified_at = excluded.classified_at, deleted_at = NULL",
            )?;
            let mut insert_prediction = tx.prepare_cached(
                "INSERT INTO predictions (content_hash, model_sha256, label, confidence, top5, backend, inference_ms, classified_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (content_hash, model_sha256) DO UPDATE SET
                    label = excluded.label, confidence = excluded.confidence, top5 = excluded.top5,
                    backend = excluded.backend, inference_ms = excluded.inference_ms,
                    classified_at = excluded.classified_at",
            )?;
            let mut delete_file = tx.prepare_cached(
                "UPDATE files SET status = 'deleted', deleted_at = ?2 WHERE path = ?1 AND status <> 'deleted'",
            )?;
            // Everything under a path that went (a folder moved or deleted): one
            // range on the primary key, `P/` <= path < `P0` ('0' follows '/'),
            // never a walk of the folder or a scan of the table.
            let mut delete_tree = tx.prepare_cached(
                "UPDATE files SET status = 'deleted', deleted_at = ?3
                 WHERE path >= ?1 AND path < ?2 AND status <> 'deleted'",
            )?;
            for outcome in outcomes {
                match outcome {
                    Outcome::Classified { prediction, files } => {
                        let top = prediction
                            .top5
                            .first()
                            .cloned()
                            .unwrap_or(Scored { label: String::new(), confidence: 0.0 });
                        insert_prediction.execute(params![
                            prediction.content_hash,
                            prediction.model_sha256,
                            top.label,
                            top.confidence as f64,
                            serde_json::to_string(&prediction.top5).unwrap_or_default(),
                            prediction.backend,
                            prediction.inference_ms,
                            now
                        ])?;
                        for f in files {
                            upsert(&mut upsert_file, f, Some(&prediction.content_hash), None, &now)?;
                        }
                    }
                    Outcome::Known { content_hash, file } => {
                        upsert(&mut upsert_file, file, Some(content_hash), None, &now)?;
                    }
                    Outcome::Failed { file, content_hash, kind, message } => {
                        upsert(&mut upsert_file, file, content_hash.as_deref(), Some((*kind, message)), &now)?;
                    }
                    Outcome::Deleted { path } => {
                        delete_file.execute(params![path, now])?;
                        let folder = path.trim_end_matches('/');
                        delete_tree.execute(params![format!("{folder}/"), format!("{folder}0"), now])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Rows for the store's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{FileMeta, Outcome, PredictionRow, Scored};

    pub(crate) fn meta(path: &str) -> FileMeta {
        FileMeta { path: path.into(), size: 10, mtime_ns: 5 }
    }

    /// `hash` classified by `model` as `label` at confidence 0.5 (exact in
    /// f32 and f64, so tests compare it as is), under every one of `paths`.
    pub(crate) fn classified(hash: &str, model: &str, label: &str, paths: &[&str]) -> Outcome {
        Outcome::Classified {
            prediction: PredictionRow {
                content_hash: hash.into(),
                model_sha256: model.into(),
                top5: vec![Scored { label: label.into(), confidence: 0.5 }],
                backend: "tract".into(),
                inference_ms: 1.0,
            },
            files: paths.iter().map(|p| meta(p)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_paths_are_escaped_losslessly() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/w/caf\xe9 \xff.jpg"));
        assert_eq!(path_text(p), "/w/caf\\xe9 \\xff.jpg");
        assert_eq!(path_text(Path::new("/w/violin é.jpg")), "/w/violin é.jpg");
    }

    #[test]
    fn path_text_round_trips_every_name_and_never_collides() {
        use std::os::unix::ffi::OsStrExt;
        let names: [&[u8]; 6] =
            [b"/w/caf\xe9.jpg", b"/w/caf\\xe9.jpg", b"/w/a\\b.jpg", b"/w/\xff\\x41", b"/w/plain.jpg", b"/w/\xe2\x82"];
        let mut texts = std::collections::HashSet::new();
        for n in names {
            let p = Path::new(std::ffi::OsStr::from_bytes(n));
            let text = path_text(p);
            assert_eq!(path_from_text(&text), p, "{text}");
            assert!(texts.insert(text.clone()), "two names share {text}");
        }
        // A literal backslash-x in a UTF-8 name is not mistaken for an escape.
        assert_eq!(path_text(Path::new("/w/caf\\xe9.jpg")), "/w/caf\\\\xe9.jpg");
    }

    #[test]
    fn a_deleted_folder_takes_everything_under_it_and_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_rw(&dir.path().join("t.db")).unwrap();
        let known = |p: &str| Outcome::Known { content_hash: "h".into(), file: meta(p) };
        let paths = ["/w/a/1.jpg", "/w/a/b/2.jpg", "/w/a0.jpg", "/w/a.jpg", "/w/ab/3.jpg", "/w/b.jpg"];
        store.commit(&paths.map(known)).unwrap();
        store.commit(&[Outcome::Deleted { path: "/w/a".into() }]).unwrap();
        assert_eq!(live_under(&store, "/w"), ["/w/a.jpg", "/w/a0.jpg", "/w/ab/3.jpg", "/w/b.jpg"]);
        store.commit(&[Outcome::Deleted { path: "/w/b.jpg".into() }]).unwrap();
        assert_eq!(live_under(&store, "/w").len(), 3);
    }

    /// The paths under `folder` not recorded as deleted, in path order.
    fn live_under(store: &Store, folder: &str) -> Vec<String> {
        let mut rows = cursor::RowsUnder::new(store, folder);
        let mut live = Vec::new();
        while let Some(row) = rows.take().unwrap() {
            if row.state.status != FileStatus::Deleted {
                live.push(row.path);
            }
        }
        live
    }

    fn meta(path: &str) -> FileMeta {
        FileMeta { path: path.into(), size: 10, mtime_ns: 5 }
    }

    #[test]
    fn a_reader_upgrades_a_database_an_older_version_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("old.db");
        {
            let conn = Connection::open(&db).unwrap();
            for (i, sql) in schema::MIGRATIONS.iter().take(3).enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).unwrap();
            }
        }
        let store = Store::open_ro(&db).unwrap();
        assert!(query::results(&store, &query::Filter::default()).unwrap().is_empty());
        assert_eq!(query::live_counts(&store).unwrap().corrections, 0);
        let v: i64 = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, schema::latest_version());
    }

    #[test]
    fn migrations_and_the_results_view() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let mut store = Store::open_rw(&db).unwrap();
        store.conn.execute(
            "INSERT INTO models (sha256, name, labels, metadata, first_used_at) VALUES ('m', 'm.onnx', '[]', '{}', 'now')",
            [],
        ).unwrap();
        let pred = PredictionRow {
            content_hash: "h1".into(),
            model_sha256: "m".into(),
            top5: vec![Scored { label: "violin".into(), confidence: 0.9 }],
            backend: "tract".into(),
            inference_ms: 1.0,
        };
        store
            .commit(&[
                Outcome::Classified { prediction: pred, files: vec![meta("/w/a.jpg"), meta("/w/b.jpg")] },
                Outcome::Failed {
                    file: meta("/w/bad.jpg"),
                    content_hash: None,
                    kind: FailureKind::Decode(instrument_model::preprocess::DecodeFailure::Empty),
                    message: "the file is empty".into(),
                },
            ])
            .unwrap();
        store.commit(&[Outcome::Deleted { path: "/w/b.jpg".into() }]).unwrap();
        drop(store);
        // Reopening runs no migration twice.
        let store = Store::open_rw(&db).unwrap();
        let rows: Vec<(String, String, Option<String>)> = store
            .conn
            .prepare("SELECT path, status, label FROM results ORDER BY path")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![("/w/a.jpg".into(), "ok".into(), Some("violin".into())), ("/w/bad.jpg".into(), "error".into(), None)]
        );
        assert!(store.has_prediction("h1", "m").unwrap());
        assert_eq!(live_under(&store, "/w").len(), 2);
        let v: i64 = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, schema::latest_version());
    }
}
