//! The notify adapter: file events become intake messages.
//!
//! The callback runs on notify's own thread and never blocks: when the intake
//! is full, or the kernel says events were lost, it asks for a rescan instead.

use super::intake::{IntakeInbox, IntakeMsg, POLL_FALLBACK};
use anyhow::Context;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const INOTIFY_HINT: &str = "the system ran out of inotify watches (one is needed per folder); raise the limit with \
`sudo sysctl fs.inotify.max_user_watches=524288` (persist it in /etc/sysctl.d/), or run with --poll SECS";

/// What an event means for the intake.
fn messages(event: notify::Event) -> Vec<IntakeMsg> {
    match event.kind {
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            event.paths.into_iter().map(IntakeMsg::Gone).collect()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut it = event.paths.into_iter();
            let from = it.next().map(IntakeMsg::Gone);
            from.into_iter().chain(it.map(IntakeMsg::Candidate)).collect()
        }
        // A writer closed the file, or it was renamed into place: the moment
        // it most likely became complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            event.paths.into_iter().map(IntakeMsg::Written).collect()
        }
        EventKind::Access(_) => Vec::new(),
        _ => event.paths.into_iter().map(IntakeMsg::Candidate).collect(),
    }
}

/// The folders being watched: one non-recursive inotify watch per folder,
/// added by the scans as they walk, each just before the folder is read (so a
/// file made after the read raises an event, and one made before is read).
/// A folder created or moved in later is scanned, and so watched, the same way.
///
/// Why not notify's recursive mode: to find the folders it stats every file of
/// the tree by its full path, a second walk of the whole library at every
/// start (300 ms of an 850 ms restart of a 100k library), before the scan
/// walks it again.
pub(crate) struct Watches {
    /// `None` once stopped.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    inbox: Arc<IntakeInbox>,
}

impl Watches {
    /// Starts the watcher and watches `root` itself; the first scan adds the
    /// folders below it.
    pub(crate) fn start(root: &Path, inbox: Arc<IntakeInbox>) -> anyhow::Result<Watches> {
        let mut watcher =
            notify::recommended_watcher(handler(inbox.clone())).context("cannot start the file watcher")?;
        watcher.watch(root, RecursiveMode::NonRecursive).map_err(|e| {
            if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                anyhow::anyhow!("{INOTIFY_HINT}")
            } else {
                anyhow::anyhow!("cannot watch {}: {e}", root.display())
            }
        })?;
        Ok(Watches { watcher: Mutex::new(Some(watcher)), inbox })
    }

    /// Watches `dir` (again: a folder already watched keeps its one watch).
    /// Once the system's watches have run out, the intake polls and this
    /// does nothing.
    pub(crate) fn add(&self, dir: &Path) {
        if self.inbox.watches_exhausted() {
            return;
        }
        let mut watcher = self.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(w) = watcher.as_mut() else { return };
        match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {}
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => report_watches_ran_out(&self.inbox),
            // Gone between being listed and being watched: nothing to watch.
            Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => {}
            Err(e) => tracing::warn!("cannot watch {}: {e}; its changes are found by the next scan", dir.display()),
        }
    }

    /// Stops all events (at shutdown).
    pub(crate) fn stop(&self) {
        drop(self.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }
}

/// The callback on notify's thread: events become intake messages.
fn handler(inbox: Arc<IntakeInbox>) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    move |res| match res {
        Ok(event) => {
            if event.need_rescan() {
                inbox.ask_rescan();
            }
            for m in messages(event) {
                inbox.offer(m);
            }
        }
        Err(e) => {
            if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                report_watches_ran_out(&inbox);
            } else {
                tracing::warn!("file watcher error: {e}; rescanning");
            }
            inbox.ask_rescan();
        }
    }
}

/// Once: from now on the intake polls.
fn report_watches_ran_out(inbox: &IntakeInbox) {
    if inbox.watches_ran_out() {
        tracing::error!(
            "{INOTIFY_HINT}; new folders are no longer watched, polling every {}s from now on",
            POLL_FALLBACK.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    fn names(msgs: Vec<IntakeMsg>) -> Vec<String> {
        msgs.into_iter().map(|m| format!("{m:?}")).collect()
    }

    #[test]
    fn events_map_to_what_the_intake_must_do() {
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(names(messages(event(closed, &["/w/a.jpg"]))), ["Written(\"/w/a.jpg\")"]);
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert_eq!(names(messages(event(both, &["/w/old", "/w/new"]))), ["Gone(\"/w/old\")", "Candidate(\"/w/new\")"]);
        let removed = EventKind::Remove(notify::event::RemoveKind::Folder);
        assert_eq!(names(messages(event(removed, &["/w/sub"]))), ["Gone(\"/w/sub\")"]);
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Read));
        assert!(messages(event(opened, &["/w/a.jpg"])).is_empty(), "reading a file is not a change");
        let created = EventKind::Create(notify::event::CreateKind::File);
        assert_eq!(names(messages(event(created, &["/w/b.jpg"]))), ["Candidate(\"/w/b.jpg\")"]);
    }
}
