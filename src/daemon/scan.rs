//! Walking the watched folder: which names count, and the reconcile scan.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Hidden and temporary names are never taken: `.*`, `~*`, `*.part`, `*.tmp`,
/// `*.crdownload` (browsers, rsync, office suites and copy tools write under
/// such names and rename when done).
pub fn is_ignored_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b[0] == b'.' || b[0] == b'~' {
        return true;
    }
    let lower = b.to_ascii_lowercase();
    [&b".part"[..], b".tmp", b".crdownload", b".partial", b".swp"].iter().any(|s| lower.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_and_hidden_names_are_ignored() {
        for n in [".hidden.jpg", "~lock.jpg", "a.jpg.part", "b.TMP", "c.jpg.crdownload", ".", ""] {
            assert!(is_ignored_name(OsStr::new(n)), "{n}");
        }
        for n in ["violin.jpg", "my photo.png", "part.jpg", "tmp", "a.jpeg"] {
            assert!(!is_ignored_name(OsStr::new(n)), "{n}");
        }
    }
}
