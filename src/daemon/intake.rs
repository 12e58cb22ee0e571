//! The intake: takes candidate paths from file events, scans and the pipeline
//! itself, holds each until it has settled, and dispatches it to the workers.
//!
//! It runs on tokio and never blocks: it sleeps until the next candidate is
//! due (see [`Settler`]), a message arrives, or the housekeeping tick (scans,
//! the queue gauge). It is the pipeline's source: cancelling it is how the
//! daemon stops, and dropping it closes the work queue behind it.

use super::Shared;
use super::config::WatchConfig;
use super::ledger::Ledger;
use super::scan::{self, Scan};
use super::settle::{self, Gate, Settler};
use super::supervise;
use super::watcher::Watches;
use super::worker::Work;
use super::writer::Item;
use crate::store::path_text;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages into the intake.
#[derive(Debug)]
pub(crate) enum IntakeMsg {
    /// A path that may be a new or changed file.
    Candidate(PathBuf),
    /// A path whose writer just closed it, or that was renamed into place:
    /// most likely complete, so it is dispatched at once, with a [`Gate`].
    Written(PathBuf),
    /// A path that may have disappeared (a file, or a whole folder).
    Gone(PathBuf),
}

/// How the rest of the daemon talks back to the intake without blocking.
pub(crate) struct IntakeInbox {
    tx: mpsc::Sender<IntakeMsg>,
    /// Set when events may have been lost; the intake then rescans.
    rescan: AtomicBool,
    /// Set when the watcher ran out of inotify watches at run time: events
    /// no longer cover every folder, so the intake polls from then on.
    watches_exhausted: AtomicBool,
}

impl IntakeInbox {
    pub(crate) fn new(tx: mpsc::Sender<IntakeMsg>) -> Self {
        IntakeInbox { tx, rescan: AtomicBool::new(false), watches_exhausted: AtomicBool::new(false) }
    }

    pub(crate) fn sender(&self) -> mpsc::Sender<IntakeMsg> {
        self.tx.clone()
    }

    /// Sends `msg`; if the intake is full, asks for a rescan instead (which
    /// finds the same path).
    pub(crate) fn offer(&self, msg: IntakeMsg) {
        if self.tx.try_send(msg).is_err() {
            self.ask_rescan();
        }
    }

    /// Sends a path back to settle again.
    pub(crate) fn requeue(&self, path: &Path) {
        self.offer(IntakeMsg::Candidate(path.to_path_buf()));
    }

    pub(crate) fn ask_rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
    }

    /// Records that inotify watches ran out; `true` the first time.
    pub(crate) fn watches_ran_out(&self) -> bool {
        !self.watches_exhausted.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn watches_exhausted(&self) -> bool {
        self.watches_exhausted.load(Ordering::SeqCst)
    }
}

/// How often the folder is scanned when file events cannot be relied on.
pub(crate) const POLL_FALLBACK: Duration = Duration::from_secs(10);

/// Scans run one at a time on the blocking pool; others wait their turn here.
struct Scans {
    running: Arc<AtomicBool>,
    /// A full reconcile of the root is owed.
    full: bool,
    /// Folders moved in, to walk (covered by a full reconcile when one is owed).
    folders: BTreeSet<PathBuf>,
    /// Scan (and, in `--poll` mode, poll) every so often.
    every: Duration,
    next_full: Instant,
}

pub(crate) struct Intake {
    pub(crate) root: PathBuf,
    pub(crate) cfg: WatchConfig,
    pub(crate) shared: Arc<Shared>,
    /// The only sender of the work queue: the queue closes when the intake ends.
    pub(crate) work_tx: crossbeam_channel::Sender<Work>,
    pub(crate) write_tx: crossbeam_channel::Sender<Vec<Item>>,
    pub(crate) poll: Option<Duration>,
    /// The folders watched, which scans add to; `None` when polling.
    pub(crate) watches: Option<Arc<Watches>>,
    pub(crate) stop: CancellationToken,
}

/// The intake's own state, owned by its loop.
struct State {
    settler: Settler,
    /// Settled (or early) paths waiting for room in the work queue.
    ready: VecDeque<Work>,
    /// Paths gone, waiting for room in the write queue (sent as one message).
    gone: Vec<Item>,
    scans: Scans,
}

impl Intake {
    /// Runs until `stop` fires (a signal, or a failed stage).
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<IntakeMsg>) {
        let every = self.poll.unwrap_or(self.cfg.reconcile);
        let mut st = State {
            settler: Settler::new(self.cfg.settle),
            ready: VecDeque::new(),
            gone: Vec::new(),
            // The start-up reconcile is owed at once.
            scans: Scans {
                running: Arc::new(AtomicBool::new(false)),
                full: true,
                folders: BTreeSet::new(),
                every,
                next_full: Instant::now() + every,
            },
        };
        self.start_next_scan(&mut st.scans);
        // Housekeeping (scans, gauges) runs on a tick; settling and dispatch do
        // not: the loop sleeps until the next candidate is due, so a file is
        // taken one settle interval after it stopped changing.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepting = st.settler.len() + st.ready.len() < self.cfg.queue_bound();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                msg = rx.recv(), if accepting => match msg {
                    None => break,
                    Some(msg) => self.receive(msg, &mut st),
                },
                _ = tokio::time::sleep_until(self.wake(&st).into()) => {
                    let settled = st.settler.poll(Instant::now(), settle::observe);
                    st.ready.extend(settled.into_iter().map(|path| Work { path, gate: None }));
                    self.dispatch(&mut st);
                }
                _ = tick.tick() => self.housekeeping(&mut st),
            }
        }
    }

    /// While paths wait for room in the work queue, retry soon; otherwise
    /// sleep until the next candidate is due (or an hour when none is).
    fn wake(&self, st: &State) -> Instant {
        if st.ready.is_empty() {
            st.settler.next_due().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
        } else {
            Instant::now() + Duration::from_millis(5)
        }
    }

    fn receive(&self, msg: IntakeMsg, st: &mut State) {
        match msg {
            IntakeMsg::Candidate(p) => self.candidate(p, false, st),
            IntakeMsg::Written(p) => {
                self.candidate(p, true, st);
                self.dispatch(st);
            }
            IntakeMsg::Gone(p) => self.gone(p, st),
        }
    }

    fn housekeeping(&self, st: &mut State) {
        self.send_gone(st);
        let now = Instant::now();
        let inbox = &self.shared.intake;
        if st.scans.every > POLL_FALLBACK && inbox.watches_exhausted.load(Ordering::SeqCst) {
            st.scans.every = POLL_FALLBACK;
            st.scans.next_full = st.scans.next_full.min(now + POLL_FALLBACK);
        }
        self.shared.stats.intake_depth.store((st.settler.len() + st.ready.len()) as u64, Ordering::Relaxed);
        if inbox.rescan.swap(false, Ordering::SeqCst) {
            st.scans.full = true;
        }
        if now >= st.scans.next_full {
            st.scans.full = true;
            st.scans.next_full = now + st.scans.every;
        }
        self.start_next_scan(&mut st.scans);
    }

    /// Takes a path from an event or a scan. A `written` one (closed by its
    /// writer, or renamed into place) that is not empty goes straight to the
    /// workers with a gate; anything else waits out the settle interval first.
    fn candidate(&self, p: PathBuf, written: bool, st: &mut State) {
        if p.file_name().is_some_and(scan::is_ignored_name) || scan::in_ignored_dir(&self.root, &p) {
            return;
        }
        let Ok(meta) = scan::stat(&p, self.cfg.follow_symlinks) else { return };
        if meta.is_dir() {
            // A folder moved or copied in: its files may predate our watch on it.
            self.scan_folder(p, st);
            return;
        }
        if !meta.is_file() {
            tracing::debug!("{}: not a regular file (symlink or special), skipped", path_text(&p));
            return;
        }
        self.shared.stats.seen.fetch_add(1, Ordering::Relaxed);
        let (look, now) = (settle::observe(&p), Instant::now());
        let Some(look) = look.filter(|l| written && l.size > 0) else {
            st.settler.offer(p, look, now);
            return;
        };
        let early = self.shared.ledger.early_in_flight();
        if early + st.ready.len() < self.cfg.queue_bound() {
            st.settler.remove(&p);
            st.ready.push_back(Work { path: p, gate: Some(Gate { due: now + self.cfg.settle, look }) });
        } else {
            tracing::debug!(
                "{}: {early} files already wait for their settle interval (--queue): this one settles first",
                path_text(&p)
            );
            st.settler.offer(p, Some(look), now);
        }
    }

    /// A path went (deleted, or renamed away): its row, and the rows of
    /// everything under it if it was a folder, are recorded as deleted in one
    /// statement; nothing is walked. A folder renamed within the library
    /// arrives again as a candidate under its new name, and is scanned there.
    fn gone(&self, p: PathBuf, st: &mut State) {
        if std::fs::symlink_metadata(&p).is_ok() {
            // Renamed over, or recreated: treat as new content.
            self.candidate(p, false, st);
            return;
        }
        st.gone.push(Item::deleted(path_text(&p)));
        self.send_gone(st);
    }

    /// Hands the deletions to the writer without blocking the intake: while
    /// the write queue is full they wait here and go with the next try (every
    /// message and tick). Past the queue bound they are dropped for a full
    /// reconcile, whose deletion check finds them again.
    fn send_gone(&self, st: &mut State) {
        if st.gone.is_empty() {
            return;
        }
        match self.write_tx.try_send(std::mem::take(&mut st.gone)) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(items)) if items.len() < self.cfg.queue_bound() => {
                st.gone = items;
            }
            // Too many waiting, or the writer is gone (a stage failed).
            Err(_) => self.shared.intake.ask_rescan(),
        }
    }

    fn scan_folder(&self, dir: PathBuf, st: &mut State) {
        st.scans.folders.insert(dir);
        self.start_next_scan(&mut st.scans);
    }

    /// Hands ready paths to the workers without ever blocking the intake. A
    /// path still in flight (being processed) settles again and is looked at
    /// once that is committed.
    fn dispatch(&self, st: &mut State) {
        let ledger: &Ledger = &self.shared.ledger;
        let mut busy = Vec::new();
        while let Some(w) = st.ready.pop_front() {
            if !ledger.claim_path(&w.path, w.gate.is_some()) {
                busy.push(w.path);
                continue;
            }
            if let Err(e) = self.work_tx.try_send(w) {
                let w = e.into_inner();
                ledger.release_path(&w.path);
                st.ready.push_front(w);
                break;
            }
        }
        let now = Instant::now();
        for p in busy {
            let look = settle::observe(&p);
            st.settler.offer(p, look, now);
        }
    }

    /// Starts the next owed scan on the blocking pool, unless one is running.
    fn start_next_scan(&self, scans: &mut Scans) {
        if scans.running.load(Ordering::SeqCst) {
            return;
        }
        let (dir, check_deleted) = if scans.full {
            scans.full = false;
            scans.folders.clear(); // a full reconcile covers them
            (self.root.clone(), true)
        } else if let Some(dir) = scans.folders.pop_first() {
            (dir, false)
        } else {
            return;
        };
        scans.running.store(true, Ordering::SeqCst);
        let scan = Scan {
            dir,
            db: self.cfg.db.clone(),
            follow_symlinks: self.cfg.follow_symlinks,
            watches: self.watches.clone(),
            check_deleted,
        };
        let (running, intake, writes, stop) =
            (scans.running.clone(), self.shared.intake.sender(), self.write_tx.clone(), self.stop.clone());
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            // A panicking scan is a failed stage like any other: without the
            // supervision it would leave `running` set, and no scan (nor, with
            // --poll, anything at all) would run again while /healthz said ok.
            let outcome =
                supervise::run_supervised("scan", &shared.health, || scan::reconcile(&scan, &intake, &writes, &stop));
            if let Some(Err(e)) = outcome {
                tracing::warn!("scan of {} stopped: {e:#}", scan.dir.display());
            }
            running.store(false, Ordering::SeqCst);
        });
    }
}
