//! The settle rule: a file is taken only once its size and mtime are unchanged
//! across two looks a settle interval apart.
//!
//! Why: cameras, phone syncs and network copies write files in pieces; reading
//! one half-written gives a truncated image and a wrong result (PhotoPrism
//! dropped its watcher over exactly this). Events only say "something changed",
//! so the settler keeps looking until nothing does.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What the settle rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) size: u64,
    pub(crate) mtime: SystemTime,
}

impl Observation {
    /// The look that `meta` gives (`None` if it has no modification time).
    pub(crate) fn of(meta: &std::fs::Metadata) -> Option<Observation> {
        Some(Observation { size: meta.len(), mtime: meta.modified().ok()? })
    }
}

/// The settle check still owed by a file that was dispatched early (on the
/// close of its writer): its row may be committed only at `due` or later, and
/// only if the file still looks like `look`, the look taken at that event.
/// The rule (two equal looks an interval apart, the content read in between)
/// is kept; decoding and inference just happen during the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gate {
    pub(crate) due: Instant,
    pub(crate) look: Observation,
}

/// Looks at a file; `None` if it is gone or not a regular file.
pub(crate) fn observe(path: &Path) -> Option<Observation> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Observation::of(&meta)
}

#[derive(Debug)]
struct Pending {
    last: Observation,
    /// One interval after the last look.
    due: Instant,
}

/// Candidates waiting to settle. The intake bounds how many (`--queue`).
///
/// Each candidate is due exactly one interval after its last look, and the
/// caller sleeps until [`Settler::next_due`], so a file is taken one settle
/// interval after it stopped changing, not at the next tick of a clock.
/// `due` holds (due time, path) in the order looks were taken, which is the
/// order they fall due; entries made stale by a newer look are skipped.
#[derive(Debug)]
pub(crate) struct Settler {
    interval: Duration,
    pending: HashMap<PathBuf, Pending>,
    due: VecDeque<(Instant, PathBuf)>,
}

impl Settler {
    pub(crate) fn new(interval: Duration) -> Self {
        Settler { interval, pending: HashMap::new(), due: VecDeque::new() }
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the earliest candidate is due for its second look.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    /// Offers `path` with a fresh look. A new path starts its timer now. For a
    /// path already pending (another event on it), a look that differs from
    /// the last one restarts the timer from now: the file is still being
    /// written, and it is due one interval after this change. An unchanged
    /// look keeps the timer.
    pub(crate) fn offer(&mut self, path: PathBuf, look: Option<Observation>, now: Instant) {
        let Some(obs) = look else { return };
        if let Some(p) = self.pending.get_mut(&path) {
            if p.last != obs {
                p.last = obs;
                p.due = now + self.interval;
                self.due.push_back((p.due, path));
            }
            return;
        }
        let due = now + self.interval;
        self.pending.insert(path.clone(), Pending { last: obs, due });
        self.due.push_back((due, path));
    }

    /// Forgets a pending candidate (it was dispatched another way); its entry
    /// in the due order is skipped when reached.
    pub(crate) fn remove(&mut self, path: &Path) {
        self.pending.remove(path);
    }

    /// Takes a second look at every candidate whose last look is at least one
    /// interval old; returns those that did not change. `look` is injected so
    /// tests can drive time and file state by hand.
    pub(crate) fn poll(&mut self, now: Instant, mut look: impl FnMut(&Path) -> Option<Observation>) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        while let Some((at, _)) = self.due.front() {
            if *at > now {
                break;
            }
            let (at, path) = self.due.pop_front().expect("front exists");
            let Some(p) = self.pending.get_mut(&path) else { continue };
            if p.due != at {
                continue; // a newer look superseded this entry
            }
            match look(&path) {
                None => {
                    self.pending.remove(&path); // gone (or became a directory): nothing to do
                }
                Some(obs) if obs == p.last => {
                    self.pending.remove(&path);
                    ready.push(path);
                }
                Some(obs) => {
                    p.last = obs;
                    p.due = now + self.interval;
                    self.due.push_back((p.due, path));
                }
            }
        }
        ready.sort();
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_with_a_changed_look_restarts_the_timer_from_the_event() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(200);
        let mut s = Settler::new(iv);
        s.offer("a.jpg".into(), obs(0, 1), t0); // created, still empty
        assert_eq!(s.next_due(), Some(t0 + iv));
        let closed = t0 + Duration::from_millis(30);
        s.offer("a.jpg".into(), obs(5000, 2), closed); // written and closed
        // The stale entry is skipped without a look; the file is not due yet.
        assert!(s.poll(t0 + iv, |_| panic!("looked at a superseded entry")).is_empty());
        assert_eq!(s.next_due(), Some(closed + iv));
        assert_eq!(s.poll(closed + iv, |_| obs(5000, 2)), vec![PathBuf::from("a.jpg")]);
        assert!(s.is_empty() && s.next_due().is_none());
    }

    #[test]
    fn candidates_fall_due_in_order_and_only_those_due_are_looked_at() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(100);
        let mut s = Settler::new(iv);
        for i in 0..10u64 {
            s.offer(format!("f{i}").into(), obs(i, 1), t0 + Duration::from_millis(10 * i));
        }
        let mut looked = 0;
        let ready = s.poll(t0 + Duration::from_millis(145), |p| {
            looked += 1;
            let i: u64 = p.to_str().unwrap()[1..].parse().unwrap();
            obs(i, 1)
        });
        assert_eq!(looked, 5, "f0..f4 are due at 100..140 ms, f5 at 150 ms");
        assert_eq!(ready.len(), 5);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_millis(150)));
    }

    fn obs(size: u64, secs: u64) -> Option<Observation> {
        Some(Observation { size, mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(secs) })
    }

    #[test]
    fn a_file_is_ready_only_after_an_unchanged_second_look() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(500);
        let mut s = Settler::new(iv);
        s.offer("a.jpg".into(), obs(10, 1), t0);
        // Too early: not even looked at.
        assert!(s.poll(t0 + Duration::from_millis(100), |_| panic!("looked too early")).is_empty());
        // Grew meanwhile: not ready, timer restarts.
        assert!(s.poll(t0 + iv, |_| obs(20, 2)).is_empty());
        assert_eq!(s.len(), 1);
        assert!(s.poll(t0 + iv + Duration::from_millis(100), |_| panic!("timer restarted")).is_empty());
        // Unchanged across a full interval: ready.
        assert_eq!(s.poll(t0 + 2 * iv, |_| obs(20, 2)), vec![PathBuf::from("a.jpg")]);
        assert!(s.is_empty());
    }

    #[test]
    fn mtime_alone_counts_as_a_change() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(10);
        let mut s = Settler::new(iv);
        s.offer("a".into(), obs(10, 1), t0);
        assert!(s.poll(t0 + iv, |_| obs(10, 2)).is_empty());
        assert_eq!(s.poll(t0 + 2 * iv, |_| obs(10, 2)).len(), 1);
    }

    #[test]
    fn vanished_files_are_dropped_and_duplicates_coalesce() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(10);
        let mut s = Settler::new(iv);
        s.offer("a".into(), obs(1, 1), t0);
        s.offer("a".into(), obs(1, 1), t0 + iv / 2); // same look: keeps its timer
        s.offer("b".into(), obs(1, 1), t0);
        assert_eq!(s.len(), 2);
        s.offer("c".into(), None, t0); // unreadable at first look: never pending
        let ready = s.poll(t0 + iv, |p| if p == Path::new("a") { obs(1, 1) } else { None });
        assert_eq!(ready, vec![PathBuf::from("a")]);
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }
}
