//! The exactly-once bookkeeping: which paths and which contents are in flight.
//!
//! Two promises rest on it:
//! - a path is handed to the workers at most once at a time: it is claimed at
//!   dispatch and released when its row is committed (or the file is sent back
//!   to settle again);
//! - a content is classified at most once: the first path to bring a content
//!   hash claims it, and every other path with the same bytes waits on that
//!   claim and is committed in the same transaction as its result.
//!
//! Everything is behind **one** `std::sync::Mutex` so that the writer can hold
//! it across the commit: no worker can then see a content as "not in flight"
//! and "not in the database" at once. It is std's mutex, not tokio's, because
//! nothing awaits while holding it.

use crate::store::FileMeta;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A path that waits on a content claimed by another path.
pub(crate) type Waiter = (PathBuf, FileMeta);

#[derive(Default)]
struct State {
    /// Paths dispatched and not yet committed, with whether each went early
    /// (dispatched on close, with a gate still to pass).
    paths: HashMap<PathBuf, bool>,
    /// How many of `paths` went early: their results wait in the writer for
    /// their settle interval, so the intake caps them at `--queue`.
    early: usize,
    /// Content hashes being classified, with the other paths waiting on them.
    contents: HashMap<String, Vec<Waiter>>,
}

/// What [`Ledger::claim_content`] decided for a path's content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ContentClaim {
    /// This path classifies the content; the claim holds until committed or abandoned.
    Owner,
    /// Another path is classifying the same content; this one is committed with it.
    Waiting,
    /// Another path is classifying the same content, and this one went early
    /// (before its settle interval): a waiter is committed with its owner's
    /// result and gets no second look of its own, so it must settle first.
    /// Nothing was registered; the caller sends the path back.
    Busy,
    /// The database already has a result for it: nothing to classify.
    Known,
}

#[derive(Default)]
pub(crate) struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the maps half-updated (every update
        // is a single insert or remove), so a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `path` in flight; `false` if it already is (it is being processed:
    /// the caller looks at it again later).
    pub(crate) fn claim_path(&self, path: &Path, early: bool) -> bool {
        let mut s = self.lock();
        if s.paths.contains_key(path) {
            return false;
        }
        s.paths.insert(path.to_path_buf(), early);
        s.early += usize::from(early);
        true
    }

    /// Ends a path's flight (committed, skipped, or sent back to settle).
    pub(crate) fn release_path(&self, path: &Path) {
        let mut s = self.lock();
        if s.paths.remove(path) == Some(true) {
            s.early -= 1;
        }
    }

    /// How many paths in flight went early.
    pub(crate) fn early_in_flight(&self) -> usize {
        self.lock().early
    }

    #[cfg(test)]
    pub(crate) fn paths_in_flight(&self) -> usize {
        self.lock().paths.len()
    }

    /// Claims `hash` for `waiter`'s path. `known` asks the database whether it
    /// already holds a result; it runs under the lock, so a concurrent commit
    /// cannot slip between the two checks.
    pub(crate) fn claim_content<E>(
        &self,
        hash: &str,
        waiter: Waiter,
        known: impl FnOnce() -> Result<bool, E>,
    ) -> Result<ContentClaim, E> {
        let mut s = self.lock();
        let early = s.paths.get(&waiter.0) == Some(&true);
        if let Some(waiters) = s.contents.get_mut(hash) {
            if early {
                return Ok(ContentClaim::Busy);
            }
            waiters.push(waiter);
            return Ok(ContentClaim::Waiting);
        }
        if known()? {
            return Ok(ContentClaim::Known);
        }
        s.contents.insert(hash.to_string(), Vec::new());
        Ok(ContentClaim::Owner)
    }

    /// Gives up a content claim without a result (shutdown, a stale model, a
    /// file that changed): releases the owner's path and every waiter's, and
    /// returns all of them so the caller can send them back to settle.
    pub(crate) fn abandon(&self, owner: &Path, hash: Option<&str>) -> Vec<PathBuf> {
        let mut s = self.lock();
        let waiters = hash.and_then(|h| s.contents.remove(h)).unwrap_or_default();
        let mut paths = vec![owner.to_path_buf()];
        paths.extend(waiters.into_iter().map(|(p, _)| p));
        for p in &paths {
            if s.paths.remove(p) == Some(true) {
                s.early -= 1;
            }
        }
        paths
    }

    /// Commits under the lock. `expand` sees the waiters of each claimed hash
    /// and builds what to write; `commit` writes it. On success the hashes
    /// `expand` named are no longer in flight and every path it named is
    /// released; on failure nothing changes, so the caller can retry.
    pub(crate) fn commit_with<T, E>(
        &self,
        expand: impl FnOnce(&dyn Fn(&str) -> Vec<Waiter>) -> Expanded<T>,
        commit: impl FnOnce(&T) -> Result<(), E>,
    ) -> Result<T, E> {
        let mut s = self.lock();
        let waiters_of = |h: &str| s.contents.get(h).cloned().unwrap_or_default();
        let Expanded { value, hashes, paths } = expand(&waiters_of);
        commit(&value)?;
        for h in &hashes {
            s.contents.remove(h);
        }
        for p in &paths {
            if s.paths.remove(p) == Some(true) {
                s.early -= 1;
            }
        }
        Ok(value)
    }
}

/// What a commit writes, with the hashes it settles and the paths it releases.
pub(crate) struct Expanded<T> {
    pub(crate) value: T,
    pub(crate) hashes: Vec<String>,
    pub(crate) paths: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(p: &str) -> FileMeta {
        FileMeta { path: p.into(), size: 1, mtime_ns: 1 }
    }

    fn waiter(p: &str) -> Waiter {
        (PathBuf::from(p), meta(p))
    }

    fn never_known() -> Result<bool, ()> {
        Ok(false)
    }

    #[test]
    fn a_path_is_in_flight_once_until_released() {
        let l = Ledger::default();
        assert!(l.claim_path(Path::new("a"), false));
        assert!(!l.claim_path(Path::new("a"), true), "claimed twice");
        assert!(l.claim_path(Path::new("b"), true));
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (2, 1));
        l.release_path(Path::new("b"));
        l.release_path(Path::new("b")); // twice is harmless
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (1, 0));
        l.release_path(Path::new("a"));
        assert!(l.claim_path(Path::new("a"), false));
    }

    #[test]
    fn the_second_path_with_the_same_content_waits_and_is_committed_with_the_first() {
        let l = Ledger::default();
        for p in ["a", "b"] {
            assert!(l.claim_path(Path::new(p), false));
        }
        assert_eq!(l.claim_content("h", waiter("a"), never_known), Ok(ContentClaim::Owner));
        let asked = std::cell::Cell::new(false);
        let second = l.claim_content("h", waiter("b"), || {
            asked.set(true);
            Ok::<_, ()>(false)
        });
        assert_eq!(second, Ok(ContentClaim::Waiting));
        assert!(!asked.get(), "a content in flight needs no database lookup");

        let written = l
            .commit_with(
                |waiters_of| {
                    let mut paths = vec![PathBuf::from("a")];
                    paths.extend(waiters_of("h").into_iter().map(|(p, _)| p));
                    Expanded { value: paths.clone(), hashes: vec!["h".into()], paths }
                },
                |_| Ok::<_, ()>(()),
            )
            .unwrap();
        assert_eq!(written, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(l.paths_in_flight(), 0);
        // Settled: the next path with this content asks the database.
        assert_eq!(l.claim_content("h", waiter("c"), || Ok::<_, ()>(true)), Ok(ContentClaim::Known));
    }

    #[test]
    fn an_early_path_never_waits_on_another_content_claim() {
        let l = Ledger::default();
        l.claim_path(Path::new("a"), false);
        l.claim_path(Path::new("early"), true);
        assert_eq!(l.claim_content("h", waiter("a"), never_known), Ok(ContentClaim::Owner));
        assert_eq!(l.claim_content("h", waiter("early"), never_known), Ok(ContentClaim::Busy));
        // Nothing was registered for it: the owner's commit names no waiter.
        let mut seen = Vec::new();
        l.commit_with(
            |waiters_of| {
                seen = waiters_of("h");
                Expanded { value: (), hashes: vec!["h".into()], paths: vec![PathBuf::from("a")] }
            },
            |_| Ok::<_, ()>(()),
        )
        .unwrap();
        assert!(seen.is_empty(), "{seen:?}");
        // Its path is still its caller's to release (and send back to settle).
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (1, 1));
        l.release_path(Path::new("early"));
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (0, 0));
    }

    #[test]
    fn a_failed_commit_changes_nothing_and_can_be_retried() {
        let l = Ledger::default();
        l.claim_path(Path::new("a"), true);
        l.claim_content("h", waiter("a"), never_known).unwrap();
        let expand = |_: &dyn Fn(&str) -> Vec<Waiter>| Expanded {
            value: (),
            hashes: vec!["h".to_string()],
            paths: vec![PathBuf::from("a")],
        };
        assert_eq!(l.commit_with(expand, |_| Err("disk full")), Err("disk full"));
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (1, 1));
        assert_eq!(l.claim_content("h", waiter("b"), never_known), Ok(ContentClaim::Waiting));
        assert_eq!(l.commit_with(expand, |_| Ok::<_, ()>(())), Ok(()));
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (0, 0));
    }

    #[test]
    fn abandoning_a_claim_releases_its_waiters_for_another_try() {
        let l = Ledger::default();
        for p in ["a", "b", "c"] {
            l.claim_path(Path::new(p), p == "a");
        }
        l.claim_content("h", waiter("a"), never_known).unwrap();
        l.claim_content("h", waiter("b"), never_known).unwrap();
        let back = l.abandon(Path::new("a"), Some("h"));
        assert_eq!(back, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!((l.paths_in_flight(), l.early_in_flight()), (1, 0), "only c is left");
        // The content is free again: the next path owns it.
        assert_eq!(l.claim_content("h", waiter("c"), never_known), Ok(ContentClaim::Owner));
        // Abandoning without a hash releases only the path.
        assert_eq!(l.abandon(Path::new("c"), None), vec![PathBuf::from("c")]);
        assert_eq!(l.paths_in_flight(), 0);
    }

    #[test]
    fn the_database_lookup_is_not_made_for_a_waiter_and_its_error_is_returned() {
        let l = Ledger::default();
        assert_eq!(l.claim_content("h", waiter("a"), || Err::<bool, _>("locked")), Err("locked"));
        assert_eq!(l.claim_content("h", waiter("a"), never_known), Ok(ContentClaim::Owner), "an error claims nothing");
    }
}
