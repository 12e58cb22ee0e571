//! The closed sets a row's text columns hold: a file's status and, for an
//! error row, what kind of error. Code passes these enums; the text exists only
//! in the database and at the CLI's edge, so a typo is a compile error and a
//! value nothing writes cannot be asked for.

use instrument_model::preprocess::DecodeFailure;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Serialize, Serializer};
use std::fmt;

/// `files.status`: the schema's CHECK constraint allows exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileStatus {
    /// Classified (or its content was already classified under another path).
    Ok,
    /// Could not be classified; `error_kind` says why.
    Error,
    /// The path no longer exists.
    Deleted,
}

impl FileStatus {
    pub const ALL: [FileStatus; 3] = [FileStatus::Ok, FileStatus::Error, FileStatus::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Ok => "ok",
            FileStatus::Error => "error",
            FileStatus::Deleted => "deleted",
        }
    }
}

/// `files.error_kind`: why an error row is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The file could not be opened or read (permissions, I/O error, gone mid-read).
    Unreadable,
    /// The bytes are not an image this program can classify, or are too large.
    Decode(DecodeFailure),
    /// The engine failed on the batch that held this file.
    Inference,
}

impl FailureKind {
    /// Every kind, for parsing and tests.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Unreadable,
        FailureKind::Decode(DecodeFailure::Empty),
        FailureKind::Decode(DecodeFailure::NotImage),
        FailureKind::Decode(DecodeFailure::Unsupported),
        FailureKind::Decode(DecodeFailure::TooLarge),
        FailureKind::Decode(DecodeFailure::Truncated),
        FailureKind::Decode(DecodeFailure::Corrupt),
        FailureKind::Inference,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Unreadable => "unreadable",
            FailureKind::Decode(d) => d.as_str(),
            FailureKind::Inference => "inference",
        }
    }
}

impl From<DecodeFailure> for FailureKind {
    fn from(d: DecodeFailure) -> Self {
        FailureKind::Decode(d)
    }
}

/// Both sets are stored, printed and serialised as their text.
macro_rules! as_text {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownValue { what: $what, value: s.to_string() })
            }
        }

        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e: UnknownValue| FromSqlError::Other(Box::new(e)))
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

as_text!(FileStatus, "file status");
as_text!(FailureKind, "error kind");

/// A stored value outside the closed set: a database written by a newer
/// version, or edited by hand.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} '{value}' in the database (written by a newer instrument-detector?)")]
pub struct UnknownValue {
    what: &'static str,
    value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_its_text() {
        for s in FileStatus::ALL {
            assert_eq!(s.as_str().parse::<FileStatus>().unwrap(), s);
        }
        for k in FailureKind::ALL {
            assert_eq!(k.as_str().parse::<FailureKind>().unwrap(), k);
            assert_eq!(k.to_string(), k.as_str());
        }
        let texts: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        let mut unique = texts.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), texts.len(), "two kinds share a text: {texts:?}");
    }

    #[test]
    fn a_value_outside_the_set_is_an_error_that_names_it() {
        let e = "exploded".parse::<FailureKind>().unwrap_err().to_string();
        assert!(e.contains("error kind 'exploded'"), "{e}");
        assert!("OK".parse::<FileStatus>().is_err(), "the text is exact");
    }

    #[test]
    fn the_schema_allows_exactly_the_file_statuses() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::MIGRATIONS[0]).unwrap();
        let insert = |status: &str| {
            conn.execute(
                "INSERT INTO files (path, status, first_seen_at) VALUES (?1, ?2, 'now')",
                rusqlite::params![format!("/w/{status}"), status],
            )
        };
        for s in FileStatus::ALL {
            insert(s.as_str()).unwrap();
        }
        assert!(insert("gone").is_err(), "the CHECK constraint is the same closed set");
    }
}
