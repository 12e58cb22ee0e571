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
    // 1 -> 2: every file row carries its current result, kept by triggers, so
    // that `query --label`, `query --since` and `stats` read an index instead
    // of computing every file's newest prediction (a full scan, 1 s or more
    // at a million rows). The current result of a content is its most
    // recently written prediction, whichever model wrote it.
    r#"
ALTER TABLE files ADD COLUMN prediction_id INTEGER; -- predictions.id of the current result; NULL unless ok
ALTER TABLE files ADD COLUMN label TEXT;            -- that prediction's top-1, copied for the index
ALTER TABLE files ADD COLUMN confidence REAL;       -- and its confidence
ALTER TABLE files ADD COLUMN result_at TEXT;        -- when the result shown was made: the prediction's time, else classified_at

-- A prediction written (new, or redone by reclassify) is the result of every
-- live copy of its content.
CREATE TRIGGER prediction_inserted_is_current AFTER INSERT ON predictions BEGIN
    UPDATE files SET prediction_id = NEW.id, label = NEW.label, confidence = NEW.confidence, result_at = NEW.classified_at
    WHERE content_hash = NEW.content_hash AND status = 'ok';
END;
CREATE TRIGGER prediction_updated_is_current AFTER UPDATE ON predictions BEGIN
    UPDATE files SET prediction_id = NEW.id, label = NEW.label, confidence = NEW.confidence, result_at = NEW.classified_at
    WHERE content_hash = NEW.content_hash AND status = 'ok';
END;

-- A file row written: its result is its content's newest prediction if it is
-- ok, none otherwise. (These updates touch none of the columns the triggers
-- watch, so they do not fire them again.)
CREATE TRIGGER file_inserted_takes_its_result AFTER INSERT ON files BEGIN
    UPDATE files SET prediction_id = CASE WHEN NEW.status = 'ok' THEN (
        SELECT q.id FROM predictions AS q WHERE q.content_hash = NEW.content_hash
        ORDER BY q.classified_at DESC, q.id DESC LIMIT 1) END
    WHERE rowid = NEW.rowid;
    UPDATE files SET label = (SELECT q.label FROM predictions AS q WHERE q.id = files.prediction_id),
        confidence = (SELECT q.confidence FROM predictions AS q WHERE q.id = files.prediction_id),
        result_at = coalesce((SELECT q.classified_at FROM predictions AS q WHERE q.id = files.prediction_id), classified_at)
    WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER file_updated_takes_its_result AFTER UPDATE OF content_hash, status, classified_at ON files BEGIN
    UPDATE files SET prediction_id = CASE WHEN NEW.status = 'ok' THEN (
        SELECT q.id FROM predictions AS q WHERE q.content_hash = NEW.content_hash
        ORDER BY q.classified_at DESC, q.id DESC LIMIT 1) END
    WHERE rowid = NEW.rowid;
    UPDATE files SET label = (SELECT q.label FROM predictions AS q WHERE q.id = files.prediction_id),
        confidence = (SELECT q.confidence FROM predictions AS q WHERE q.id = files.prediction_id),
        result_at = coalesce((SELECT q.classified_at FROM predictions AS q WHERE q.id = files.prediction_id), classified_at)
    WHERE rowid = NEW.rowid;
END;

-- What the existing rows show today, so the upgrade changes no answer.
UPDATE files SET prediction_id = CASE WHEN status = 'ok' THEN (
    SELECT q.id FROM predictions AS q WHERE q.content_hash = files.content_hash
    ORDER BY q.id DESC LIMIT 1) END;
UPDATE files SET label = (SELECT q.label FROM predictions AS q WHERE q.id = files.prediction_id),
    confidence = (SELECT q.confidence FROM predictions AS q WHERE q.id = files.prediction_id),
    result_at = coalesce((SELECT q.classified_at FROM predictions AS q WHERE q.id = files.prediction_id), classified_at);

-- `query --label L` in path order; `stats` counts labels from this index alone.
CREATE INDEX files_by_label ON files (label, path);
-- `query --since`.
CREATE INDEX files_by_result_at ON files (result_at);
-- `stats`' predictions per model and per backend.
CREATE INDEX predictions_by_model ON predictions (model_sha256, backend);

DROP VIEW results;
CREATE VIEW results AS
SELECT f.path, f.status, f.content_hash, f.size, f.mtime_ns,
       f.error_kind, f.error,
       f.label, f.confidence, p.top5, p.model_sha256, p.backend, p.inference_ms,
       f.result_at AS classified_at,
       f.first_seen_at
FROM files AS f
LEFT JOIN predictions AS p ON p.id = f.prediction_id
WHERE f.status <> 'deleted';
"#,
    // 3: the indexes on predictions by label and by time served the view of
    // version 1; since version 2 the files rows carry the result and their own
    // indexes answer those filters. Kept, they only cost: each prediction
    // inserted at a random place in both (measured on a 100k library).
    r#"
DROP INDEX predictions_by_label;
DROP INDEX predictions_by_time;
"#,
    // 3 -> 4: corrections. A person's label for a content wins over every
    // model's, now and after any reclassification: the files rows carry
    // `corrected` and show the correction's label (at confidence 1, so no
    // threshold turns it into `unknown`), and the triggers that copy a
    // prediction onto the rows leave a corrected row's label alone.
    r#"
CREATE TABLE corrections (
    content_hash  TEXT PRIMARY KEY,          -- the content corrected, wherever its copies live
    label         TEXT NOT NULL,             -- the person's label (`none`: no instrument)
    model_label   TEXT,                      -- what the model had said, for the record
    model_sha256  TEXT,                      -- and which model said it
    path          TEXT NOT NULL,             -- where the person saw it; retraining reads a live copy first
    corrected_at  TEXT NOT NULL
);
ALTER TABLE files ADD COLUMN corrected INTEGER NOT NULL DEFAULT 0; -- 1: label is a person's correction

DROP TRIGGER prediction_inserted_is_current;
DROP TRIGGER prediction_updated_is_current;
DROP TRIGGER file_inserted_takes_its_result;
DROP TRIGGER file_updated_takes_its_result;

-- As in version 2, except that a corrected row keeps its label.
CREATE TRIGGER prediction_inserted_is_current AFTER INSERT ON predictions BEGIN
    UPDATE files SET prediction_id = NEW.id,
        label = CASE WHEN corrected THEN label ELSE NEW.label END,
        confidence = CASE WHEN corrected THEN confidence ELSE NEW.confidence END,
        result_at = CASE WHEN corrected THEN result_at ELSE NEW.classified_at END
    WHERE content_hash = NEW.content_hash AND status = 'ok';
END;
CREATE TRIGGER prediction_updated_is_current AFTER UPDATE ON predictions BEGIN
    UPDATE files SET prediction_id = NEW.id,
        label = CASE WHEN corrected THEN label ELSE NEW.label END,
        confidence = CASE WHEN corrected THEN confidence ELSE NEW.confidence END,
        result_at = CASE WHEN corrected THEN result_at ELSE NEW.classified_at END
    WHERE content_hash = NEW.content_hash AND status = 'ok';
END;

-- As in version 2, then the content's correction, if any, on top.
CREATE TRIGGER file_inserted_takes_its_result AFTER INSERT ON files BEGIN
    UPDATE files SET prediction_id = CASE WHEN NEW.status = 'ok' THEN (
        SELECT q.id FROM predictions AS q WHERE q.content_hash = NEW.content_hash
        ORDER BY q.classified_at DESC, q.id DESC LIMIT 1) END
    WHERE rowid = NEW.rowid;
    UPDATE files SET label = (SELECT q.label FROM predictions AS q WHERE q.id = files.prediction_id),
        confidence = (SELECT q.confidence FROM predictions AS q WHERE q.id = files.prediction_id),
        result_at = coalesce((SELECT q.classified_at FROM predictions AS q WHERE q.id = files.prediction_id), classified_at),
        corrected = 0
    WHERE rowid = NEW.rowid;
    UPDATE files SET label = c.label, confidence = 1.0, result_at = c.corrected_at, corrected = 1
    FROM corrections AS c
    WHERE files.rowid = NEW.rowid AND NEW.status = 'ok' AND c.content_hash = NEW.content_hash;
END;
CREATE TRIGGER file_updated_takes_its_result AFTER UPDATE OF content_hash, status, classified_at ON files BEGIN
    UPDATE files SET prediction_id = CASE WHEN NEW.status = 'ok' THEN (
        SELECT q.id FROM predictions AS q WHERE q.content_hash = NEW.content_hash
        ORDER BY q.classified_at DESC, q.id DESC LIMIT 1) END
    WHERE rowid = NEW.rowid;
    UPDATE files SET label = (SELECT q.label FROM predictions AS q WHERE q.id = files.prediction_id),
        confidence = (SELECT q.confidence FROM predictions AS q WHERE q.id = files.prediction_id),
        result_at = coalesce((SELECT q.classified_at FROM predictions AS q WHERE q.id = files.prediction_id), classified_at),
        corrected = 0
    WHERE rowid = NEW.rowid;
    UPDATE files SET label = c.label, confidence = 1.0, result_at = c.corrected_at, corrected = 1
    FROM corrections AS c
    WHERE files.rowid = NEW.rowid AND NEW.status = 'ok' AND c.content_hash = NEW.content_hash;
END;

-- A correction made, changed or withdrawn: every live copy shows it, or
-- again its model's answer.
CREATE TRIGGER correction_made AFTER INSERT ON corrections BEGIN
    UPDATE files SET label = NEW.label, confidence = 1.0, result_at = NEW.corrected_at, corrected = 1
    WHERE content_hash = NEW.content_hash AND status = 'ok';
END;
CREATE TRIGGER correction_changed AFTER UPDATE ON corrections BEGIN
    UPDATE files SET label = NEW.label, confidence = 1.0, result_at = NEW.corrected_at, corrected = 1
    WHERE content_hash = NEW.content_hash AND status = 'ok';
END;
CREATE TRIGGER correction_withdrawn AFTER DELETE ON corrections BEGIN
    UPDATE files SET label = (SELECT q.label FROM predictions AS q WHERE q.id = files.prediction_id),
        confidence = (SELECT q.confidence FROM predictions AS q WHERE q.id = files.prediction_id),
        result_at = coalesce((SELECT q.classified_at FROM predictions AS q WHERE q.id = files.prediction_id), classified_at),
        corrected = 0
    WHERE content_hash = OLD.content_hash AND status = 'ok';
END;

-- The view adds whether a person set the label, and what the model said.
DROP VIEW results;
CREATE VIEW results AS
SELECT f.path, f.status, f.content_hash, f.size, f.mtime_ns,
       f.error_kind, f.error,
       f.label, f.confidence, p.top5, p.model_sha256, p.backend, p.inference_ms,
       f.result_at AS classified_at,
       f.first_seen_at,
       f.corrected, p.label AS model_label, p.confidence AS model_confidence
FROM files AS f
LEFT JOIN predictions AS p ON p.id = f.prediction_id
WHERE f.status <> 'deleted';
"#,
];

pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}
