//! The rows under one folder in path order, a page at a time: the database
//! side of the reconcile scan's merge walk (`daemon::scan`).
//!
//! Why pages by key and not one query: a single statement stepped through a
//! million rows holds one read transaction for the whole scan, and while it is
//! open no WAL checkpoint can finish, so the WAL grows with everything the
//! daemon writes meanwhile. Each page is its own short read; `path > last`
//! walks the primary key, never an OFFSET that would reread what came before.

use super::{FileState, Store, StoreError};
use std::collections::VecDeque;

/// Rows per page: big enough that the per-query cost vanishes, small enough
/// that a page is a few hundred kilobytes at most.
const PAGE_ROWS: i64 = 2048;

/// One row as the scan compares it with the disk.
#[derive(Debug)]
pub(crate) struct KnownFile {
    pub(crate) path: String,
    pub(crate) state: FileState,
}

/// The rows whose path starts with `folder/`, in byte order of the path (the
/// order SQLite's default collation keeps the primary key in), deleted ones
/// included: a file that is back on disk matches its old row instead of
/// costing a point query.
pub(crate) struct RowsUnder<'a> {
    store: &'a Store,
    /// Exclusive bounds: `after` starts as `folder/` (shorter than any path
    /// below it) and becomes the last path read; `before` is `folder0`, `'0'`
    /// being the byte after `'/'`.
    after: String,
    before: String,
    page: VecDeque<KnownFile>,
    exhausted: bool,
}

impl<'a> RowsUnder<'a> {
    pub(crate) fn new(store: &'a Store, folder: &str) -> Self {
        let folder = folder.trim_end_matches('/');
        RowsUnder {
            store,
            after: format!("{folder}/"),
            before: format!("{folder}0"),
            page: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The next row, without taking it.
    pub(crate) fn peek(&mut self) -> Result<Option<&KnownFile>, StoreError> {
        if self.page.is_empty() && !self.exhausted {
            self.read_page()?;
        }
        Ok(self.page.front())
    }

    /// Takes the next row.
    pub(crate) fn take(&mut self) -> Result<Option<KnownFile>, StoreError> {
        self.peek()?;
        Ok(self.page.pop_front())
    }

    fn read_page(&mut self) -> Result<(), StoreError> {
        let mut stmt = self.store.conn.prepare_cached(
            "SELECT path, content_hash, size, mtime_ns, status FROM files
             WHERE path > ?1 AND path < ?2 ORDER BY path LIMIT ?3",
        )?;
        let rows = stmt.query_map(rusqlite::params![self.after, self.before, PAGE_ROWS], |r| {
            Ok(KnownFile {
                path: r.get(0)?,
                state: FileState { content_hash: r.get(1)?, size: r.get(2)?, mtime_ns: r.get(3)?, status: r.get(4)? },
            })
        })?;
        for row in rows {
            self.page.push_back(row?);
        }
        self.exhausted = (self.page.len() as i64) < PAGE_ROWS;
        if let Some(last) = self.page.back() {
            self.after.clone_from(&last.path);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileMeta, Outcome};

    fn all_under(store: &Store, folder: &str) -> Vec<String> {
        let mut rows = RowsUnder::new(store, folder);
        let mut out = Vec::new();
        while let Some(row) = rows.take().unwrap() {
            out.push(row.path);
        }
        out
    }

    #[test]
    fn rows_come_in_path_order_across_pages_and_only_from_under_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_rw(&dir.path().join("t.db")).unwrap();
        let known =
            |p: String| Outcome::Known { content_hash: "h".into(), file: FileMeta { path: p, size: 1, mtime_ns: 1 } };
        // More than two pages under /w/a, and neighbours that sort just
        // outside it on both sides.
        let mut inside: Vec<String> = (0..PAGE_ROWS * 2 + 7).map(|i| format!("/w/a/{:05}/{i}.jpg", i % 97)).collect();
        let outside = ["/w/a.jpg", "/w/a0.jpg", "/w/ab/x.jpg", "/w/a", "/v/a/x.jpg"].map(String::from);
        store.commit(&inside.iter().cloned().chain(outside).map(known).collect::<Vec<_>>()).unwrap();
        store.commit(&[Outcome::Deleted { path: "/w/a/00003".into() }]).unwrap();
        inside.sort();
        assert_eq!(all_under(&store, "/w/a"), inside, "deleted rows included, outsiders not");
        assert_eq!(all_under(&store, "/w/a/"), inside, "a trailing slash changes nothing");
        assert!(all_under(&store, "/w/none").is_empty());
    }
}
