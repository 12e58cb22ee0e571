//! The writer: one SQLite connection, one transaction per gathered batch of
//! results, and the one place where a path's flight ends with a row.
//!
//! Results of files dispatched early wait in a [`GateHold`] until their
//! settle interval has passed, and are committed only if a second look finds
//! the file as it was read. On a write failure (disk full, a lock held too
//! long) the batch is kept and retried, and the bounded queues upstream make
//! the whole pipeline wait. The writer stops once every sender has gone and
//! the held results are due.

use super::Shared;
use super::ledger::{Expanded, Waiter};
use super::organize::Organizer;
use super::settle::{Gate, Observation};
use crate::store::{Outcome, Store, path_text};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One result for the writer: the outcome, the paths it releases, and the
/// gate it must pass first (if its file was dispatched early).
pub(crate) struct Item {
    pub(crate) outcome: Outcome,
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) gate: Option<Gate>,
}

impl Item {
    pub(crate) fn deleted(path: String) -> Item {
        Item { outcome: Outcome::Deleted { path }, paths: Vec::new(), gate: None }
    }

    /// The content hash this item's path claimed in the ledger, if any (a
    /// `Known` lookup claims nothing).
    fn claimed_hash(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Classified { prediction, .. } => Some(&prediction.content_hash),
            Outcome::Failed { content_hash, .. } => content_hash.as_deref(),
            _ => None,
        }
    }
}

/// At most this many results go into one transaction.
const MAX_ITEMS_PER_COMMIT: usize = 256;

/// How long a transaction waits after its first result for more to join it.
/// Why: each commit writes every page it touched to the WAL, and the indexes
/// keyed by content hash take their inserts at random pages, so a commit of a
/// few rows costs nearly as much as one of hundreds, more so as the library
/// grows. Committing whatever had arrived gave 7 rows per transaction on a
/// 100k library and a rate that fell with its size. A person never sees
/// 20 ms; the settle interval before it is 1 s by default.
const GROUP_COMMIT_WAIT: Duration = Duration::from_millis(20);

/// The writer thread.
pub(crate) fn run(
    shared: Arc<Shared>,
    mut store: Store,
    writes: Receiver<Vec<Item>>,
    mut organizer: Option<Organizer>,
) {
    let mut hold = GateHold::default();
    let mut open = true;
    while open || !hold.is_empty() {
        let mut items = Vec::new();
        match receive(&writes, open, hold.next_due()) {
            Ok(first) => {
                items.extend(first);
                open &= gather(&writes, &mut items, Instant::now() + GROUP_COMMIT_WAIT);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let (ready, changed) = hold.take_due(items, Instant::now(), super::settle::observe);
        for item in changed {
            resettle(&shared, item);
        }
        if ready.is_empty() {
            continue;
        }
        let committed = commit_with_retry(&shared, &mut store, ready);
        if let Some(org) = organizer.as_mut() {
            org.place(&committed, |hash| {
                store.label_of(hash).unwrap_or_else(|e| {
                    tracing::warn!("--organize: cannot look up the label of a known content: {e}");
                    None
                })
            });
        }
    }
}

/// Adds to `items` what arrives until `deadline` or until the transaction is
/// full; `false` once the queue has closed.
fn gather(writes: &Receiver<Vec<Item>>, items: &mut Vec<Item>, deadline: Instant) -> bool {
    while items.len() < MAX_ITEMS_PER_COMMIT {
        match writes.recv_deadline(deadline) {
            Ok(more) => items.extend(more),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    true
}

/// The next message, waiting no later than the next held gate is due. Once
/// the queue has closed, only waits for that gate.
fn receive(writes: &Receiver<Vec<Item>>, open: bool, next_due: Option<Instant>) -> Result<Vec<Item>, RecvTimeoutError> {
    match (open, next_due) {
        (true, None) => writes.recv().map_err(|_| RecvTimeoutError::Disconnected),
        (true, Some(due)) => writes.recv_deadline(due),
        (false, due) => {
            std::thread::sleep(due.map_or(Duration::ZERO, |d| d.saturating_duration_since(Instant::now())));
            Err(RecvTimeoutError::Timeout)
        }
    }
}

/// Results held until their gate is due. Pure: time and the second look are
/// passed in, so it is tested by hand like the settler.
#[derive(Default)]
pub(crate) struct GateHold {
    held: Vec<Item>,
}

impl GateHold {
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.held.iter().filter_map(|i| i.gate.map(|g| g.due)).min()
    }

    /// Adds `incoming`, then returns what may be committed now (no gate, or a
    /// due gate whose second look matches its first) and what changed during
    /// its settle interval (its result must be dropped). The rest is held.
    pub(crate) fn take_due(
        &mut self,
        incoming: Vec<Item>,
        now: Instant,
        mut look: impl FnMut(&Path) -> Option<Observation>,
    ) -> (Vec<Item>, Vec<Item>) {
        let mut all = std::mem::take(&mut self.held);
        all.extend(incoming);
        let (mut ready, mut changed) = (Vec::new(), Vec::new());
        for item in all {
            match item.gate {
                None => ready.push(item),
                Some(g) if g.due > now => self.held.push(item),
                Some(g) => match item.paths.first() {
                    Some(p) if look(p) != Some(g.look) => changed.push(item),
                    _ => ready.push(Item { gate: None, ..item }),
                },
            }
        }
        (ready, changed)
    }
}

/// An early result whose file changed: dropped, and the file (with any paths
/// that waited on its content) goes back to settle again.
fn resettle(shared: &Shared, item: Item) {
    if let Some(path) = item.paths.first() {
        tracing::debug!("{}: changed during its settle interval; its early result is dropped", path_text(path));
        shared.stats.resettled.fetch_add(1, Ordering::Relaxed);
        shared.send_back(path, item.claimed_hash());
    }
}

/// Adds the paths that waited on each item's content to what is written: a
/// classified content gets their file rows, a failed one an error row each.
fn expand(items: &[Item], waiters_of: &dyn Fn(&str) -> Vec<Waiter>) -> Expanded<Vec<Outcome>> {
    let mut out = Expanded { value: Vec::with_capacity(items.len()), hashes: Vec::new(), paths: Vec::new() };
    for item in items {
        out.paths.extend(item.paths.iter().cloned());
        let mut outcome = item.outcome.clone();
        if let Some(hash) = item.claimed_hash() {
            let waiters = waiters_of(hash);
            match &mut outcome {
                Outcome::Classified { files, .. } => files.extend(waiters.iter().map(|(_, f)| f.clone())),
                Outcome::Failed { content_hash, kind, message, .. } => {
                    out.value.extend(waiters.iter().map(|(_, f)| Outcome::Failed {
                        file: f.clone(),
                        content_hash: content_hash.clone(),
                        kind: *kind,
                        message: message.clone(),
                    }))
                }
                _ => {}
            }
            out.paths.extend(waiters.into_iter().map(|(p, _)| p));
            out.hashes.push(hash.to_string());
        }
        out.value.push(outcome);
    }
    out
}

/// Commits (retrying with back-off until it works) and returns what was
/// committed, waiters included.
fn commit_with_retry(shared: &Shared, store: &mut Store, items: Vec<Item>) -> Vec<Outcome> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match shared.ledger.commit_with(|waiters_of| expand(&items, waiters_of), |outcomes| store.commit(outcomes)) {
            Ok(outcomes) => {
                shared.stats.count_committed(&outcomes);
                if backoff > Duration::from_millis(200) {
                    tracing::info!("database writes work again; resuming");
                }
                return outcomes;
            }
            Err(e) => {
                tracing::error!(
                    "cannot write {} results to the database, keeping them and retrying in {backoff:?}: {e}",
                    items.len()
                );
                std::thread::sleep(backoff);
                checkpoint(store);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Space may have come back while the writer slept: the WAL is shrunk first,
/// or the retries would fill the freed space with WAL frames that no automatic
/// checkpoint copies out (SQLite's automatic checkpoint never truncates the file).
fn checkpoint(store: &Store) {
    match store.checkpoint_truncate() {
        Ok(true) => {
            tracing::info!("database checkpointed: the write-ahead log was copied into the database and truncated")
        }
        Ok(false) => tracing::warn!(
            "database checkpoint could not finish (a reader holds old frames); retrying the write anyway"
        ),
        Err(e) => tracing::warn!("database checkpoint failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::DecodeFailure;
    use crate::store::{FailureKind, FileMeta};
    use std::time::SystemTime;

    fn look(size: u64) -> Observation {
        Observation { size, mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(7) }
    }

    fn item(path: &str, gate: Option<Gate>) -> Item {
        let file = FileMeta { path: path.into(), size: 1, mtime_ns: 1 };
        let outcome = Outcome::Known { content_hash: "h".into(), file };
        Item { outcome, paths: vec![PathBuf::from(path)], gate }
    }

    fn names(items: &[Item]) -> Vec<String> {
        items.iter().map(|i| i.paths[0].display().to_string()).collect()
    }

    #[test]
    fn an_early_result_waits_for_its_gate_and_a_second_look() {
        let t0 = Instant::now();
        let gate = |ms, size| Some(Gate { due: t0 + Duration::from_millis(ms), look: look(size) });
        let mut hold = GateHold::default();
        let never = |_: &Path| -> Option<Observation> { panic!("looked before the gate was due") };
        let (ready, changed) =
            hold.take_due(vec![item("now", None), item("a", gate(100, 5)), item("b", gate(50, 9))], t0, never);
        assert_eq!((names(&ready), changed.len()), (vec!["now".to_string()], 0));
        assert_eq!(hold.next_due(), Some(t0 + Duration::from_millis(50)));

        // b is due and unchanged; a is not due yet.
        let (ready, changed) = hold.take_due(Vec::new(), t0 + Duration::from_millis(60), |_| Some(look(9)));
        assert_eq!((names(&ready), changed.len()), (vec!["b".to_string()], 0));
        assert!(ready[0].gate.is_none(), "a passed gate is cleared");

        // a is due but grew meanwhile (or went): its result is dropped.
        let (ready, changed) = hold.take_due(Vec::new(), t0 + Duration::from_millis(100), |_| Some(look(6)));
        assert_eq!((ready.len(), names(&changed)), (0, vec!["a".to_string()]));
        assert!(hold.is_empty() && hold.next_due().is_none());
    }

    #[test]
    fn a_failed_content_gives_each_waiter_its_own_error_row() {
        let file = |p: &str| FileMeta { path: p.into(), size: 1, mtime_ns: 1 };
        let failed = Item {
            outcome: Outcome::Failed {
                file: file("a"),
                content_hash: Some("h".into()),
                kind: FailureKind::Decode(DecodeFailure::Corrupt),
                message: "bad".into(),
            },
            paths: vec!["a".into()],
            gate: None,
        };
        let waiters = |h: &str| if h == "h" { vec![(PathBuf::from("b"), file("b"))] } else { Vec::new() };
        let e = expand(&[failed, Item::deleted("gone".into())], &waiters);
        let rows: Vec<String> = e
            .value
            .iter()
            .map(|o| match o {
                Outcome::Failed { file, .. } => format!("failed {}", file.path),
                Outcome::Deleted { path } => format!("deleted {path}"),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(rows, ["failed b", "failed a", "deleted gone"]);
        assert_eq!(e.hashes, ["h"]);
        assert_eq!(e.paths, [PathBuf::from("a"), PathBuf::from("b")]);
    }
}
