//! The reconcile scan's walk: every entry under a folder, in the byte order of
//! the full paths, which is the order the database keeps its rows in (so the
//! scan can merge the two like sorted lists), each file with its metadata.
//!
//! Why not `walkdir`: it stats each file by its full path, so the kernel
//! resolves every folder above the file again for each of them; a
//! `std::fs::DirEntry` stats relative to the folder it was read from
//! (`fstatat`). On a 100k library that path resolution was the largest cost
//! of a restart (BENCHMARKS.md, "Large libraries").

use super::scan::is_ignored_name;
use std::ffi::OsString;
use std::fs::{FileType, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One thing the walk met.
#[derive(Debug)]
pub(crate) enum Found {
    /// A regular file (or, with `follow_symlinks`, a link to one).
    File { path: PathBuf, meta: Metadata },
    /// A symlink not followed.
    Symlink(PathBuf),
    /// A folder or file that could not be read; the walk goes on.
    Problem { path: PathBuf, error: std::io::Error },
}

/// An entry of a folder already read, waiting its turn.
struct Entry {
    name: OsString,
    kind: Kind,
}

enum Kind {
    Dir,
    File(Metadata),
    Symlink,
    /// Sockets, fifos, devices; and entries gone before they were looked at.
    Other,
}

/// A folder being walked: its path, its identity (device, inode: only kept
/// when symlinks are followed, to refuse loops) and its entries still to
/// visit, the next one last.
struct Level {
    path: PathBuf,
    id: Option<(u64, u64)>,
    rest: Vec<Entry>,
}

/// The walk, as an iterator of [`Found`]. Hidden and temporary names
/// ([`is_ignored_name`]) are skipped, folders included. `on_folder` is called
/// with each folder just before it is read (the scan adds its watch there).
pub(crate) struct Walk<F: FnMut(&Path)> {
    levels: Vec<Level>,
    follow_symlinks: bool,
    on_folder: F,
    /// Found while entering a folder (one that could not be read).
    pending: Option<Found>,
}

impl<F: FnMut(&Path)> Walk<F> {
    pub(crate) fn new(root: &Path, follow_symlinks: bool, on_folder: F) -> Self {
        let mut walk = Walk { levels: Vec::new(), follow_symlinks, on_folder, pending: None };
        // The root is followed if it is a link: it is the folder asked for.
        match std::fs::metadata(root) {
            Ok(meta) => walk.enter(root.to_path_buf(), Some((meta.dev(), meta.ino()))),
            Err(error) => walk.pending = Some(Found::Problem { path: root.to_path_buf(), error }),
        }
        walk
    }

    /// Reads a folder and pushes its entries, sorted so that popping from the
    /// end visits them in path order.
    fn enter(&mut self, path: PathBuf, id: Option<(u64, u64)>) {
        (self.on_folder)(&path);
        let mut rest = match read_entries(&path, self.follow_symlinks) {
            Ok(entries) => entries,
            Err(error) => {
                self.pending = Some(Found::Problem { path, error });
                return;
            }
        };
        rest.sort_unstable_by(|a, b| path_order(b).cmp(path_order(a)));
        self.levels.push(Level { path, id, rest });
    }

    /// Whether the folder `id` is already being walked above (a symlink loop).
    fn is_ancestor(&self, id: (u64, u64)) -> bool {
        self.levels.iter().any(|l| l.id == Some(id))
    }
}

impl<F: FnMut(&Path)> Iterator for Walk<F> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        loop {
            if let Some(found) = self.pending.take() {
                return Some(found);
            }
            let level = self.levels.last_mut()?;
            let Some(entry) = level.rest.pop() else {
                self.levels.pop();
                continue;
            };
            let path = level.path.join(&entry.name);
            match entry.kind {
                Kind::File(meta) => return Some(Found::File { path, meta }),
                Kind::Symlink => return Some(Found::Symlink(path)),
                Kind::Other => {}
                // Not following links, a folder is never entered twice: no
                // identity is needed, and no stat.
                Kind::Dir if !self.follow_symlinks => self.enter(path, None),
                Kind::Dir => match std::fs::metadata(&path) {
                    Ok(meta) if self.is_ancestor((meta.dev(), meta.ino())) => {
                        let error = std::io::Error::other("a symlink loops back to a folder above it; not followed");
                        return Some(Found::Problem { path, error });
                    }
                    Ok(meta) => self.enter(path, Some((meta.dev(), meta.ino()))),
                    Err(error) => return Some(Found::Problem { path, error }),
                },
            }
        }
    }
}

/// A folder's entries, each classified; files stat'ed relative to the folder.
fn read_entries(dir: &Path, follow_symlinks: bool) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_ignored_name(&name) {
            continue;
        }
        let kind = match entry.file_type() {
            Ok(t) if t.is_symlink() && follow_symlinks => followed(&entry.path()),
            Ok(t) => kind_of(t, || entry.metadata()),
            Err(_) => Kind::Other,
        };
        out.push(Entry { name, kind });
    }
    Ok(out)
}

/// What a symlink leads to, when links are followed.
fn followed(path: &Path) -> Kind {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Kind::Dir,
        Ok(meta) if meta.is_file() => Kind::File(meta),
        _ => Kind::Other,
    }
}

fn kind_of(t: FileType, meta: impl FnOnce() -> std::io::Result<Metadata>) -> Kind {
    if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        meta().map_or(Kind::Other, Kind::File)
    } else {
        Kind::Other
    }
}

/// The bytes an entry's full paths start with below its folder: its name,
/// and for a folder the `/` every path inside it continues with. Sorting
/// siblings by this sorts their full paths (`a.jpg` < `a/x.jpg` < `a0.jpg`).
fn path_order(e: &Entry) -> impl Iterator<Item = &u8> {
    let slash: &[u8] = if matches!(e.kind, Kind::Dir) { b"/" } else { b"" };
    e.name.as_bytes().iter().chain(slash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(walk: Walk<impl FnMut(&Path)>, root: &Path) -> Vec<String> {
        walk.filter_map(|f| match f {
            Found::File { path, .. } => Some(path.strip_prefix(root).unwrap().to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
    }

    #[test]
    fn files_come_in_the_byte_order_of_their_full_paths_without_ignored_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for n in ["b.jpg", "a0.jpg", "a/y.jpg", "a/x/z.jpg", "a.jpg", "A.jpg", ".hidden/k.jpg", "c.jpg.part", "a b.jpg"]
        {
            let p = root.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, n).unwrap();
        }
        let mut folders = Vec::new();
        let got = files(Walk::new(root, false, |d: &Path| folders.push(d.to_path_buf())), root);
        assert_eq!(
            folders,
            [root.to_path_buf(), root.join("a"), root.join("a/x")],
            "each folder once, before its files"
        );
        let mut want: Vec<String> =
            ["b.jpg", "a0.jpg", "a/y.jpg", "a/x/z.jpg", "a.jpg", "A.jpg", "a b.jpg"].map(String::from).into();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn symlinks_are_reported_or_followed_and_a_loop_is_a_problem_not_a_hang() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f.jpg"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("d/f.jpg"), root.join("link.jpg")).unwrap();
        std::os::unix::fs::symlink(root, root.join("d/up")).unwrap();

        let found: Vec<Found> = Walk::new(root, false, |_: &Path| {}).collect();
        assert!(matches!(&found[..], [Found::File { .. }, Found::Symlink(_), Found::Symlink(_)]), "{found:?}");

        let followed: Vec<Found> = Walk::new(root, true, |_: &Path| {}).collect();
        let problems = followed.iter().filter(|f| matches!(f, Found::Problem { .. })).count();
        assert_eq!(files(Walk::new(root, true, |_: &Path| {}), root), ["d/f.jpg", "link.jpg"]);
        assert_eq!(problems, 1, "the loop back to the root: {followed:?}");
    }

    #[test]
    fn a_missing_root_is_one_problem() {
        let found: Vec<Found> =
            Walk::new(Path::new("/nonexistent/instrument-detector"), false, |_: &Path| {}).collect();
        assert!(matches!(&found[..], [Found::Problem { .. }]), "{found:?}");
    }
}
