//! Walking the watched folder: which names count, and the reconcile scan that
//! finds what events missed (at start-up, every `--reconcile`, after lost
//! events, for a folder moved in, and as the whole of `--poll` mode).

use super::intake::IntakeMsg;
use super::walk::{Found, Walk};
use super::watcher::Watches;
use super::writer::Item;
use crate::store::cursor::{KnownFile, RowsUnder};
use crate::store::{FileMeta, FileState, FileStatus, Store, path_from_text, path_text};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Hidden and temporary names are never taken: `.*`, `~*`, `*.part`, `*.tmp`,
/// `*.crdownload`, `*.partial`, `*.swp` (browsers, editors, rsync, office suites and copy tools write under
/// such names and rename when done).
pub(crate) fn is_ignored_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b[0] == b'.' || b[0] == b'~' {
        return true;
    }
    let lower = b.to_ascii_lowercase();
    [&b".part"[..], b".tmp", b".crdownload", b".partial", b".swp"].iter().any(|s| lower.ends_with(s))
}

/// A path's metadata, through a symlink only with `--follow-symlinks`.
pub(crate) fn stat(path: &Path, follow_symlinks: bool) -> std::io::Result<std::fs::Metadata> {
    if follow_symlinks { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) }
}

/// Whether `p` lies in an ignored folder below `root` (`root/.cache/x.jpg`).
pub(crate) fn in_ignored_dir(root: &Path, p: &Path) -> bool {
    p.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.parent())
        .is_some_and(|parent| parent.components().any(|c| is_ignored_name(c.as_os_str())))
}

/// One scan's orders.
pub(crate) struct Scan {
    /// The folder to walk (the watched folder, or a folder moved in).
    pub(crate) dir: PathBuf,
    pub(crate) db: PathBuf,
    pub(crate) follow_symlinks: bool,
    /// Where to add a watch for each folder walked, before it is read.
    pub(crate) watches: Option<Arc<Watches>>,
    /// Also record as deleted the rows under `dir` whose file is gone (a
    /// full reconcile; a folder moved in has nothing to delete).
    pub(crate) check_deleted: bool,
}

#[derive(Default)]
struct Tally {
    files: u64,
    offered: u64,
    symlinks: u64,
    problems: u64,
    deleted: u64,
    /// Walked files the rows did not hold next, each looked up on its own:
    /// the new ones, plus any whose stored name sorts out of step.
    looked_up: u64,
}

/// Walks `scan.dir`, offering every file the database does not already hold
/// as it is now (same size and mtime) and, if asked, recording as deleted the
/// rows under it whose file is gone. Stops early when `stop` fires or the
/// intake has gone.
///
/// The walk and the rows are merged in one pass, like two sorted lists: the
/// walk ([`Walk`]) visits names in the byte order the database keeps paths in, so an
/// unchanged library costs one stat per file and one sequential read of the
/// table, never a query per file nor a second pass to find deletions.
pub(crate) fn reconcile(
    scan: &Scan,
    intake: &mpsc::Sender<IntakeMsg>,
    writes: &crossbeam_channel::Sender<Vec<Item>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(tally) = merge_walk(scan, intake, writes, stop)? {
        tracing::info!(
            folder = %scan.dir.display(),
            files = tally.files, new_or_changed = tally.offered, deleted = tally.deleted,
            looked_up = tally.looked_up, symlinks_skipped = tally.symlinks, problems = tally.problems,
            ms = started.elapsed().as_millis() as u64,
            "scan finished"
        );
    }
    Ok(())
}

/// The scan itself; its tally, or `None` if it was stopped.
fn merge_walk(
    scan: &Scan,
    intake: &mpsc::Sender<IntakeMsg>,
    writes: &crossbeam_channel::Sender<Vec<Item>>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Tally>> {
    let store = Store::open_ro(&scan.db)?;
    let mut merge = Merge {
        scan,
        store: &store,
        rows: RowsUnder::new(&store, &path_text(&scan.dir)),
        gone: Vec::new(),
        stopped: false,
        writes,
        stop,
        tally: Tally::default(),
    };
    Ok(merge.run(intake)?.then_some(merge.tally))
}

/// Deletions are sent to the writer in batches of this many.
const GONE_BATCH: usize = 256;

/// One scan's walk and the database's rows under the same folder, in step.
struct Merge<'a> {
    scan: &'a Scan,
    store: &'a Store,
    rows: RowsUnder<'a>,
    /// Deletions found and not yet sent.
    gone: Vec<Item>,
    /// The writer would take no more deletions: the daemon is stopping.
    stopped: bool,
    writes: &'a crossbeam_channel::Sender<Vec<Item>>,
    stop: &'a CancellationToken,
    tally: Tally,
}

impl Merge<'_> {
    /// The whole scan; `false` if it was stopped.
    fn run(&mut self, intake: &mpsc::Sender<IntakeMsg>) -> anyhow::Result<bool> {
        let watch = |dir: &Path| {
            if let Some(w) = &self.scan.watches {
                w.add(dir);
            }
        };
        for found in Walk::new(&self.scan.dir, self.scan.follow_symlinks, watch) {
            if self.stop.is_cancelled() || self.stopped {
                return Ok(false);
            }
            let Some((path, file)) = self.regular_file(found) else { continue };
            if self.known_state(&file.path)?.is_some_and(|s| s.is_current(&file)) {
                continue;
            }
            self.tally.offered += 1;
            if intake.blocking_send(IntakeMsg::Candidate(path)).is_err() {
                return Ok(false);
            }
        }
        // Rows after the last file walked were not seen either.
        while let Some(row) = self.rows.take()? {
            if self.stop.is_cancelled() || self.stopped {
                return Ok(false);
            }
            self.not_walked(row);
        }
        Ok(self.flush_gone())
    }

    /// A walked entry that is a regular file, with its identity; anything
    /// else is counted and skipped.
    fn regular_file(&mut self, found: Found) -> Option<(PathBuf, FileMeta)> {
        match found {
            Found::File { path, meta } => {
                self.tally.files += 1;
                let file = FileMeta::of(&path, &meta);
                Some((path, file))
            }
            Found::Symlink(path) => {
                self.tally.symlinks += 1;
                tracing::debug!("{}: symlink not followed (use --follow-symlinks)", path_text(&path));
                None
            }
            Found::Problem { path, error } => {
                self.tally.problems += 1;
                tracing::warn!("while scanning {}: {error}", path_text(&path));
                None
            }
        }
    }

    /// What the database holds for a walked path. Rows sorting before it were
    /// passed by the walk without their file being seen. A path the rows do
    /// not hold next is looked up on its own: it is new, or (a name whose
    /// stored form sorts differently from its bytes) out of step.
    fn known_state(&mut self, path: &str) -> anyhow::Result<Option<FileState>> {
        while self.rows.peek()?.is_some_and(|row| row.path.as_str() < path) {
            let row = self.rows.take()?.expect("peeked");
            self.not_walked(row);
        }
        if self.rows.peek()?.is_some_and(|row| row.path == path) {
            return Ok(self.rows.take()?.map(|row| row.state));
        }
        self.tally.looked_up += 1;
        Ok(self.store.file_state(path)?)
    }

    /// A live row the walk did not meet is a deletion if its file is really
    /// gone (the stat also keeps a file the walk skipped, in an ignored
    /// folder or out of step, from being taken for one).
    fn not_walked(&mut self, row: KnownFile) {
        if !self.scan.check_deleted || row.state.status == FileStatus::Deleted {
            return;
        }
        if std::fs::symlink_metadata(path_from_text(&row.path)).is_err() {
            self.tally.deleted += 1;
            self.gone.push(Item::deleted(row.path));
            if self.gone.len() >= GONE_BATCH {
                self.stopped |= !self.flush_gone();
            }
        }
    }

    /// Sends the deletions found so far; `false` if the daemon is stopping.
    fn flush_gone(&mut self) -> bool {
        self.gone.is_empty() || send_unless_stopped(self.writes, std::mem::take(&mut self.gone), self.stop)
    }
}

/// Sends `items` to the writer, waiting for room, but gives up (`false`) once
/// the daemon is stopping or the writer is gone: a plain blocking send would
/// hang this scan, and the shutdown behind it, if the writer died with a full
/// queue (the metrics monitor's receiver keeps the queue open).
fn send_unless_stopped(
    writes: &crossbeam_channel::Sender<Vec<Item>>,
    mut items: Vec<Item>,
    stop: &CancellationToken,
) -> bool {
    loop {
        match writes.send_timeout(items, std::time::Duration::from_millis(100)) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(back)) if !stop.is_cancelled() => items = back,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_stuck_on_a_full_write_queue_gives_up_when_the_daemon_stops() {
        // A queue of one, filled, whose receiver is alive but never reads:
        // a dead writer behind a live gauge.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Item>>(1);
        tx.send(Vec::new()).unwrap();
        let stop = CancellationToken::new();
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                stop.cancel();
            })
        };
        assert!(!send_unless_stopped(&tx, vec![Item::deleted("/w/a".into())], &stop));
        stopper.join().unwrap();
        assert_eq!(rx.len(), 1, "nothing was squeezed in");
        // With room, it sends.
        rx.recv().unwrap();
        assert!(send_unless_stopped(&tx, vec![Item::deleted("/w/a".into())], &CancellationToken::new()));
    }

    /// What one reconcile of `dir` against `db` offered and recorded as gone.
    fn reconcile_once(dir: &Path, db: &Path, check_deleted: bool) -> (Vec<PathBuf>, Vec<String>, Tally) {
        let (intake_tx, mut intake_rx) = mpsc::channel(1024);
        let (write_tx, write_rx) = crossbeam_channel::unbounded();
        let scan =
            Scan { dir: dir.to_path_buf(), db: db.to_path_buf(), follow_symlinks: false, watches: None, check_deleted };
        let tally = merge_walk(&scan, &intake_tx, &write_tx, &CancellationToken::new()).unwrap().expect("not stopped");
        let mut offered = Vec::new();
        while let Ok(IntakeMsg::Candidate(p)) = intake_rx.try_recv() {
            offered.push(p);
        }
        let gone = write_rx
            .try_iter()
            .flatten()
            .map(|item| match item.outcome {
                crate::store::Outcome::Deleted { path } => path,
                other => panic!("a scan writes only deletions, not {other:?}"),
            })
            .collect();
        (offered, gone, tally)
    }

    #[test]
    fn the_merge_walk_offers_only_new_and_changed_files_and_finds_every_deletion() {
        use crate::store::Outcome;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("w");
        // Names whose byte order differs from a naive per-folder order
        // (`a.jpg` < `a/` < `a0.jpg`), a space, and an ignored folder.
        let names = ["a.jpg", "a/x.jpg", "a/y/z.jpg", "a0.jpg", "ab/c.jpg", "b b.jpg", ".cache/k.jpg", "z.jpg"];
        for n in names {
            let p = root.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, n).unwrap();
        }
        let db = tmp.path().join("t.db");
        let mut store = Store::open_rw(&db).unwrap();
        let known = |p: PathBuf, size: i64| {
            let file = FileMeta { size, ..FileMeta::of(&p, &std::fs::metadata(&p).unwrap()) };
            Outcome::Known { content_hash: "h".into(), file }
        };
        // Everything but `a0.jpg` (new) is known; `ab/c.jpg` with another
        // size (changed); the ignored folder's file too (left alone).
        let mut rows: Vec<Outcome> = names
            .iter()
            .filter(|n| **n != "a0.jpg")
            .map(|n| known(root.join(n), if *n == "ab/c.jpg" { 1 } else { n.len() as i64 }))
            .collect();
        // Rows whose files are gone: before, between and after the walked
        // names, one already recorded as deleted, and one outside the folder.
        let gone = ["a/gone.jpg", "a1/gone.jpg", "zz.jpg", "already.jpg"].map(|n| root.join(n));
        for p in &gone {
            let file = FileMeta { path: path_text(p), size: 1, mtime_ns: 1 };
            rows.push(Outcome::Known { content_hash: "h".into(), file });
        }
        rows.push(Outcome::Known {
            content_hash: "h".into(),
            file: FileMeta { path: format!("{}0/else.jpg", path_text(&root)), size: 1, mtime_ns: 1 },
        });
        store.commit(&rows).unwrap();
        store.commit(&[Outcome::Deleted { path: path_text(&gone[3]) }]).unwrap();

        let (offered, deleted, tally) = reconcile_once(&root, &db, true);
        assert_eq!(offered, [root.join("a0.jpg"), root.join("ab/c.jpg")]);
        assert_eq!(deleted, gone[..3].iter().map(|p| path_text(p)).collect::<Vec<_>>());
        assert_eq!(tally.looked_up, 1, "only the new file cost a query of its own: the walk kept step with the rows");
        // A folder moved in is only walked: nothing under it is deleted.
        let (offered, deleted, tally) = reconcile_once(&root.join("a"), &db, false);
        assert!(offered.is_empty() && deleted.is_empty(), "{offered:?} {deleted:?}");
        assert_eq!((tally.files, tally.looked_up), (2, 0));
    }

    #[test]
    fn names_whose_stored_form_sorts_out_of_step_are_neither_offered_nor_deleted() {
        use crate::store::Outcome;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("w");
        std::fs::create_dir_all(root.join("d")).unwrap();
        // A byte that is not UTF-8 is stored as `\xNN`, a backslash doubled:
        // both sort differently as stored text than as the bytes walked.
        let odd = [OsStr::from_bytes(b"caf\xe9.jpg"), OsStr::new("a\\b.jpg"), OsStr::from_bytes(b"d/\xff\xfe.jpg")];
        let plain = [OsStr::new("a.jpg"), OsStr::new("b.jpg"), OsStr::new("d/z.jpg")];
        let paths: Vec<PathBuf> = odd.iter().chain(&plain).map(|n| root.join(n)).collect();
        let mut rows = Vec::new();
        for p in &paths {
            std::fs::write(p, p.as_os_str().as_bytes()).unwrap();
            let file = FileMeta::of(p, &std::fs::metadata(p).unwrap());
            rows.push(Outcome::Known { content_hash: "h".into(), file });
        }
        let db = tmp.path().join("t.db");
        Store::open_rw(&db).unwrap().commit(&rows).unwrap();

        let (offered, deleted, tally) = reconcile_once(&root, &db, true);
        assert!(offered.is_empty() && deleted.is_empty(), "{offered:?} {deleted:?}");
        assert_eq!(tally.files, 6);
        assert!(tally.looked_up <= 3, "only the odd names may need a lookup of their own: {}", tally.looked_up);
    }

    #[test]
    fn temporary_and_hidden_names_are_ignored() {
        for n in [".hidden.jpg", "~lock.jpg", "a.jpg.part", "b.TMP", "c.jpg.crdownload", ".", ""] {
            assert!(is_ignored_name(OsStr::new(n)), "{n}");
        }
        for n in ["violin.jpg", "my photo.png", "part.jpg", "tmp", "a.jpeg"] {
            assert!(!is_ignored_name(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn files_in_hidden_folders_are_ignored_but_the_root_itself_may_be_hidden() {
        let root = Path::new("/home/me/.photos");
        assert!(!in_ignored_dir(root, Path::new("/home/me/.photos/a/violin.jpg")));
        assert!(in_ignored_dir(root, Path::new("/home/me/.photos/.cache/violin.jpg")));
        assert!(in_ignored_dir(root, Path::new("/home/me/.photos/a/~tmp/b/violin.jpg")));
    }
}
