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
}

impl Organizer {
    pub(crate) fn new(root: PathBuf) -> Self {
        Organizer { root }
    }

    /// Places every newly recorded ok file: a new content under its top
    /// label, and a path whose content was already known (a rename, a second
    /// copy) under that content's label, which `label_of` looks up.
    pub(crate) fn place(&mut self, committed: &[Outcome], label_of: impl Fn(&str) -> Option<String>) {
        for o in committed {
            match o {
                Outcome::Classified { prediction, files } => {
                    let Some(top) = prediction.top5.first() else { continue };
                    for f in files {
                        self.link(&path_from_text(&f.path), &top.label, &prediction.content_hash);
                    }
                }
                Outcome::Known { content_hash, file } => {
                    if let Some(label) = label_of(content_hash) {
                        self.link(&path_from_text(&file.path), &label, content_hash);
                    }
                }
                Outcome::Failed { .. } | Outcome::Deleted { .. } => {}
            }
        }
    }

    fn link(&self, src: &Path, label: &str, hash: &str) {
        // Labels come from a model's metadata (and a hot swap may bring new
        // ones): whatever they are, each must be one plain path component.
        if !is_plain_component(label) {
            tracing::warn!("--organize: label {label:?} cannot be a folder name; {} not placed", src.display());
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

/// A name that stays one folder inside the organize root: not empty, no
/// separator or NUL, not hidden and not `.`/`..`.
fn is_plain_component(label: &str) -> bool {
    !label.is_empty() && !label.starts_with('.') && !label.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_become_folders() {
        for ok in ["violin", "steel drum", "none", "E-Gitarre"] {
            assert!(is_plain_component(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../up", "a\\b", "nul\0"] {
            assert!(!is_plain_component(bad), "{bad:?}");
        }
    }
}
