//! The notify adapter: file events become intake messages.
//!
//! The callback runs on notify's own thread and never blocks: when the intake
//! is full, or the kernel says events were lost, it asks for a rescan instead.

use super::intake::{IntakeInbox, IntakeMsg, POLL_FALLBACK};
use anyhow::Context;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::Arc;

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

/// Sets up the recursive watcher on `dir`; events go to `inbox`.
pub(crate) fn start(dir: &Path, inbox: Arc<IntakeInbox>) -> anyhow::Result<notify::RecommendedWatcher> {
    let handler = move |res: notify::Result<notify::Event>| match res {
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
                // Once: from now on the intake polls.
                if inbox.watches_ran_out() {
                    tracing::error!(
                        "{INOTIFY_HINT}; new folders are no longer watched, polling every {}s from now on",
                        POLL_FALLBACK.as_secs()
                    );
                }
            } else {
                tracing::warn!("file watcher error: {e}; rescanning");
            }
            inbox.ask_rescan();
        }
    };
    let mut watcher = notify::recommended_watcher(handler).context("cannot start the file watcher")?;
    watcher.watch(dir, RecursiveMode::Recursive).map_err(|e| {
        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            anyhow::anyhow!("{INOTIFY_HINT}")
        } else {
            anyhow::anyhow!("cannot watch {}: {e}", dir.display())
        }
    })?;
    Ok(watcher)
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
