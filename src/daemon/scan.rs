//! Walking the watched folder: which names count, and the reconcile scan that
//! finds what events missed (at start-up, every `--reconcile`, after lost
//! events, for a folder moved in, and as the whole of `--poll` mode).

use super::intake::IntakeMsg;
use super::writer::Item;
use crate::store::{Store, path_from_text, path_text};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
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
    /// The watched folder.
    pub(crate) root: PathBuf,
    /// The folder to walk (the root, or a folder moved in).
    pub(crate) dir: PathBuf,
    pub(crate) db: PathBuf,
    pub(crate) follow_symlinks: bool,
    /// Also record as deleted the rows under `root` whose file is gone (a
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
}

/// Walks `scan.dir`, offering every file the database does not already hold
/// as it is now (same size and mtime); then, if asked, records as deleted the
/// rows under the root whose path is gone. Stops early when `stop` fires or
/// the intake has gone.
pub(crate) fn reconcile(
    scan: &Scan,
    intake: &mpsc::Sender<IntakeMsg>,
    writes: &crossbeam_channel::Sender<Vec<Item>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::open_ro(&scan.db)?;
    let started = Instant::now();
    let mut tally = Tally::default();
    let finished = offer_changed(scan, &store, intake, stop, &mut tally)?
        && (!scan.check_deleted || record_gone(scan, &store, writes, stop, &mut tally)?);
    if finished {
        tracing::info!(
            folder = %scan.dir.display(),
            files = tally.files, new_or_changed = tally.offered, deleted = tally.deleted,
            symlinks_skipped = tally.symlinks, problems = tally.problems,
            ms = started.elapsed().as_millis() as u64,
            "scan finished"
        );
    }
    Ok(())
}

/// The walk; `false` if it was stopped.
fn offer_changed(
    scan: &Scan,
    store: &Store,
    intake: &mpsc::Sender<IntakeMsg>,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> anyhow::Result<bool> {
    let walker = walkdir::WalkDir::new(&scan.dir)
        .follow_links(scan.follow_symlinks)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_ignored_name(e.file_name()));
    for entry in walker {
        if stop.is_cancelled() {
            return Ok(false);
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tally.problems += 1;
                tracing::warn!("while scanning: {e}");
                continue;
            }
        };
        let ft = entry.file_type();
        if ft.is_symlink() {
            tally.symlinks += 1;
            tracing::debug!("{}: symlink not followed (use --follow-symlinks)", path_text(entry.path()));
            continue;
        }
        if !ft.is_file() {
            continue;
        }
        tally.files += 1;
        let Ok(meta) = entry.metadata() else { continue };
        let file = crate::store::FileMeta {
            path: path_text(entry.path()),
            size: meta.len() as i64,
            mtime_ns: super::worker::mtime_ns(&meta),
        };
        if store.file_state(&file.path)?.is_some_and(|s| s.is_current(&file)) {
            continue;
        }
        tally.offered += 1;
        if intake.blocking_send(IntakeMsg::Candidate(entry.into_path())).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rows under the root whose file is gone become deletions; `false` if stopped.
fn record_gone(
    scan: &Scan,
    store: &Store,
    writes: &crossbeam_channel::Sender<Vec<Item>>,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> anyhow::Result<bool> {
    for text in store.live_paths_under(&path_text(&scan.root))? {
        if stop.is_cancelled() {
            return Ok(false);
        }
        if std::fs::symlink_metadata(path_from_text(&text)).is_err() {
            tally.deleted += 1;
            if !send_unless_stopped(writes, vec![Item::deleted(text)], stop) {
                return Ok(false);
            }
        }
    }
    Ok(true)
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
