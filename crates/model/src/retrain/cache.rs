//! The backbone's features of every photo a retrain has seen, kept on disk.
//!
//! Computing the features is the only slow part of a retrain (a backbone pass
//! per photo); fitting the head on them takes seconds. So they are kept, one
//! file per backbone (named by the sha256 of the backbone graph, which a
//! retrained model shares with its parent), one record per photo content
//! (sha256 of the file's bytes): a photo renamed, or the same dataset in
//! another folder, is not computed again.
//!
//! The file is append-only: `IDFEAT1\n`, the feature width as a little-endian
//! u32, then records of 32 key bytes and `width` little-endian f32. A record
//! cut short by a crash is dropped (and the file trimmed) when it is next opened.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"IDFEAT1\n";
const HEADER: usize = MAGIC.len() + 4;

/// A photo's identity in the cache: the sha256 of its bytes.
pub(crate) type Key = [u8; 32];

pub(crate) struct FeatureCache {
    path: PathBuf,
    dim: usize,
    features: HashMap<Key, Vec<f32>>,
    appender: BufWriter<File>,
}

impl FeatureCache {
    /// Opens (or creates) `dir/<backbone>.features` for features of width `dim`.
    pub(crate) fn open(dir: &Path, backbone: &str, dim: usize) -> std::io::Result<FeatureCache> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{backbone}.features"));
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        // Held while the cache lives: two retrains sharing a cache folder
        // take turns rather than interleave records (or trim each other's).
        file.lock()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let features = if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            // New, or not ours (an interrupted first write): start it again.
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.write_all(&(dim as u32).to_le_bytes())?;
            HashMap::new()
        } else {
            let width = u32::from_le_bytes(bytes[MAGIC.len()..HEADER].try_into().expect("4 bytes")) as usize;
            if width != dim {
                return Err(std::io::Error::other(format!(
                    "{} holds features of width {width}, this backbone makes {dim}",
                    path.display()
                )));
            }
            let (features, whole) = read_records(&bytes[HEADER..], dim);
            file.set_len((HEADER + whole) as u64)?;
            features
        };
        file.seek(SeekFrom::End(0))?;
        Ok(FeatureCache { path, dim, features, appender: BufWriter::new(file) })
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&[f32]> {
        self.features.get(key).map(Vec::as_slice)
    }

    /// Keeps one photo's features (written on the next [`FeatureCache::flush`]).
    pub(crate) fn put(&mut self, key: Key, features: Vec<f32>) -> std::io::Result<()> {
        assert_eq!(features.len(), self.dim, "features of the wrong width");
        self.appender.write_all(&key)?;
        for v in &features {
            self.appender.write_all(&v.to_le_bytes())?;
        }
        self.features.insert(key, features);
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.appender.flush()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The whole records in `bytes`, and how many bytes they take.
fn read_records(bytes: &[u8], dim: usize) -> (HashMap<Key, Vec<f32>>, usize) {
    let record = 32 + 4 * dim;
    let mut features = HashMap::new();
    let whole = bytes.len() / record * record;
    for r in bytes[..whole].chunks_exact(record) {
        let key: Key = r[..32].try_into().expect("32 bytes");
        let values = r[32..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        features.insert(key, values);
    }
    (features, whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_survive_reopening_and_a_cut_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = FeatureCache::open(dir.path(), "b", 2).unwrap();
        cache.put([1; 32], vec![1.0, 2.0]).unwrap();
        cache.put([2; 32], vec![3.0, 4.0]).unwrap();
        cache.flush().unwrap();
        let path = cache.path().to_path_buf();
        drop(cache);
        // A crash in the middle of the second record.
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();

        let mut cache = FeatureCache::open(dir.path(), "b", 2).unwrap();
        assert_eq!(cache.get(&[1; 32]), Some(&[1.0, 2.0][..]));
        assert_eq!(cache.get(&[2; 32]), None, "the cut record is gone");
        cache.put([3; 32], vec![5.0, 6.0]).unwrap();
        cache.flush().unwrap();
        drop(cache);
        let cache = FeatureCache::open(dir.path(), "b", 2).unwrap();
        assert_eq!(cache.get(&[3; 32]), Some(&[5.0, 6.0][..]), "appended after the trim, aligned");
        drop(cache); // it holds the file's lock
        assert!(FeatureCache::open(dir.path(), "b", 3).is_err(), "another width is refused");
    }
}
