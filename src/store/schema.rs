//! The database schema, as forward migrations keyed by `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the schema from version `i` to `i + 1`.
//! Migrations only ever get appended; a database newer than this program is
//! refused rather than guessed at.

pub const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    r#"
CREATE TABLE models (
    sha256        TEXT PRIMARY KEY,          -- sha256 of the .onnx file
    name          TEXT NOT NULL,             -- file name when first used
    labels        TEXT NOT NULL,             -- JSON array, output order
    metadata      TEXT NOT NULL,             -- JSON object of the ONNX metadata_props
    first_used_at TEXT NOT NULL
);

CREATE TABLE files (
    path          TEXT PRIMARY KEY,          -- absolute path; non-UTF-8 bytes as \xNN
    content_hash  TEXT,                      -- BLAKE3 of the content; NULL if unreadable
    size          INTEGER,
    mtime_ns      INTEGER,
    status        TEXT NOT NULL CHECK (status IN ('ok', 'error', 'deleted')),
    error_kind    TEXT,                      -- empty, not_image, truncated, corrupt, too_large, unreadable, ...
    error         TEXT,                      -- a sentence for a person
    first_seen_at TEXT NOT NULL,
    classified_at TEXT,                      -- when this path's result was recorded
    deleted_at    TEXT
);
CREATE INDEX files_by_hash ON files (content_hash);
CREATE INDEX files_by_status ON files (status, error_kind);

CREATE TABLE predictions (
    id            INTEGER PRIMARY KEY,
    content_hash  TEXT NOT NULL,
    model_sha256  TEXT NOT NULL REFERENCES models (sha256),
    label         TEXT NOT NULL,             -- top-1
    confidence    REAL NOT NULL,             -- top-1 probability, 0..1
    top5          TEXT NOT NULL,             -- JSON [{"label": ..., "confidence": ...}, ...]
    backend       TEXT NOT NULL,             -- cuda, ort-cpu or tract
    inference_ms  REAL NOT NULL,             -- model time per image in its batch
    classified_at TEXT NOT NULL,
    UNIQUE (content_hash, model_sha256)
);
CREATE INDEX predictions_by_label ON predictions (label, confidence);
CREATE INDEX predictions_by_time ON predictions (classified_at);

-- The latest result of every file still present: what `query` reads.
CREATE VIEW results AS
SELECT f.path, f.status, f.content_hash, f.size, f.mtime_ns,
       f.error_kind, f.error,
       p.label, p.confidence, p.top5, p.model_sha256, p.backend, p.inference_ms,
       COALESCE(p.classified_at, f.classified_at) AS classified_at,
       f.first_seen_at
FROM files AS f
LEFT JOIN predictions AS p ON f.status = 'ok' AND p.id = (
    SELECT q.id FROM predictions AS q
    WHERE q.content_hash = f.content_hash
    ORDER BY q.id DESC LIMIT 1)
WHERE f.status <> 'deleted';
"#,
];

pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}
