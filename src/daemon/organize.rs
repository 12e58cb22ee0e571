//! `--organize DIR`: a sorted view of the photos, `DIR/<label>/<name>`.
//!
//! Hard links cost no space and leave the original untouched; where linking
//! fails for any reason (across file systems, on a file system without hard
//! links, over a link-count limit) the photo is copied instead. The
//! original is never moved or altered. Name clashes get a short content-hash suffix.

use crate::store::{Outcome, path_from_text};
use std::path::{Path, PathBuf};

pub(crate) struct Organizer {
    root: PathBuf,
    labels: Vec<String>,
}

impl Organizer {
    pub(crate) fn new(root: PathBuf, labels: Vec<String>) -> Self {
        Organizer { root, labels }
    }

    /// Places every newly recorded ok file.
    pub(crate) fn place(&mut self, committed: &[Outcome]) {
        for o in committed {
            match o {
                Outcome::Classified { prediction, files } => {
                    let Some(top) = prediction.top5.first() else { continue };
                    for f in files {
                        self.link(&path_from_text(&f.path), &top.label, &prediction.content_hash);
                    }
                }
                Outcome::Known { .. } | Outcome::Failed { .. } | Outcome::Deleted { .. } => {}
            }
        }
    }

    fn link(&self, src: &Path, label: &str, hash: &str) {
        // Labels come from the model's metadata; keep them to one safe path component.
        if !self.labels.iter().any(|l| l == label) || label.contains('/') || label.starts_with('.') {
            return;
        }
        let dir = self.root.join(label);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("--organize: cannot create {}: {e}", dir.display());
            return;
        }
        let Some(name) = src.file_name() else { return };
        let mut dst = dir.join(name);
        if dst.exists() {
            let mut n = name.to_os_string();
            n.push(format!(".{}", &hash[..8.min(hash.len())]));
            dst = dir.join(n);
            if dst.exists() {
                return; // already placed
            }
        }
        if std::fs::hard_link(src, &dst).is_err()
            && let Err(e) = std::fs::copy(src, &dst)
        {
            tracing::warn!("--organize: cannot link or copy {} to {}: {e}", src.display(), dst.display());
        }
    }
}
