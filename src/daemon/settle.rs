//! The settle rule: a file is taken only once its size and mtime are unchanged
//! across two looks a settle interval apart.
//!
//! Why: cameras, phone syncs and network copies write files in pieces; reading
//! one half-written gives a truncated image and a wrong result (PhotoPrism
//! dropped its watcher over exactly this). Events only say "something changed",
//! so the settler keeps looking until nothing does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// What the settle rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub size: u64,
    pub mtime: SystemTime,
}

/// Looks at a file; `None` if it is gone or not a regular file.
pub fn observe(path: &Path) -> Option<Observation> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(Observation { size: meta.len(), mtime: meta.modified().ok()? })
}

#[derive(Debug)]
struct Pending {
    last: Observation,
    looked_at: Instant,
}

/// Candidates waiting to settle. Bounded: callers stop offering at `capacity`.
#[derive(Debug)]
pub struct Settler {
    interval: Duration,
    capacity: usize,
    pending: HashMap<PathBuf, Pending>,
}

impl Settler {
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Settler { interval, capacity, pending: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// Starts watching `path` with its first look. A path already pending keeps
    /// its timer: the next look decides.
    pub fn offer(&mut self, path: PathBuf, first: Option<Observation>, now: Instant) {
        if self.pending.contains_key(&path) {
            return;
        }
        if let Some(last) = first {
            self.pending.insert(path, Pending { last, looked_at: now });
        }
    }

    /// Takes a second look at every candidate whose last look is at least one
    /// interval old; returns those that did not change. `look` is injected so
    /// tests can drive time and file state by hand.
    pub fn poll(&mut self, now: Instant, mut look: impl FnMut(&Path) -> Option<Observation>) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        let interval = self.interval;
        self.pending.retain(|path, p| {
            if now.duration_since(p.looked_at) < interval {
                return true;
            }
            match look(path) {
                None => false, // gone (or became a directory): nothing to do
                Some(obs) if obs == p.last => {
                    ready.push(path.clone());
                    false
                }
                Some(obs) => {
                    p.last = obs;
                    p.looked_at = now;
                    true
                }
            }
        });
        ready.sort();
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(size: u64, secs: u64) -> Option<Observation> {
        Some(Observation { size, mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(secs) })
    }

    #[test]
    fn a_file_is_ready_only_after_an_unchanged_second_look() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(500);
        let mut s = Settler::new(iv, 10);
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
        let mut s = Settler::new(iv, 10);
        s.offer("a".into(), obs(10, 1), t0);
        assert!(s.poll(t0 + iv, |_| obs(10, 2)).is_empty());
        assert_eq!(s.poll(t0 + 2 * iv, |_| obs(10, 2)).len(), 1);
    }

    #[test]
    fn vanished_files_are_dropped_and_duplicates_coalesce() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(10);
        let mut s = Settler::new(iv, 2);
        s.offer("a".into(), obs(1, 1), t0);
        s.offer("a".into(), obs(2, 2), t0 + iv); // keeps the first look
        s.offer("b".into(), obs(1, 1), t0);
        assert!(s.is_full());
        s.offer("c".into(), None, t0); // unreadable at first look: never pending
        let ready = s.poll(t0 + iv, |p| if p == Path::new("a") { obs(1, 1) } else { None });
        assert_eq!(ready, vec![PathBuf::from("a")]);
        assert!(s.is_empty());
    }
}
