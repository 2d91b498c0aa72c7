//! Content addressing for plateflow: the [`Digest`] newtype, fast file hashing, and the
//! content-addressed [`BlobStore`] where every task output lives.
//!
//! Blobs are written atomically (temporary file, fsync, rename) and are never trusted blindly:
//! each stored blob carries a *stamp* (read-only mode and a fixed modification time set when it
//! was verified). A blob whose stamp is intact is known-good without reading it; any other blob
//! is re-hashed before use, and one whose content no longer matches its name is moved to
//! `quarantine/` and reported as corrupt so that the task that made it runs again.

mod digest;
mod hashing;

pub use digest::{Digest, DigestParseError};
pub use hashing::{hash_bytes, hash_file, hash_files_parallel, hash_reader, Sha256Writer};

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Modification time given to verified blobs. Any later write to the file changes it, so a
/// blob with a different time must be re-hashed before it is used.
const STAMP_MTIME_SECS: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} is missing from the store at {root}")]
    Missing { digest: Digest, root: PathBuf },
    #[error("blob {expected} is corrupt: its content hashes to {actual} (moved to {quarantined})")]
    Corrupt {
        expected: Digest,
        actual: Digest,
        quarantined: PathBuf,
    },
    #[error("received data for blob {expected} hashes to {actual}; the transfer is discarded")]
    Mismatch { expected: Digest, actual: Digest },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a fast check found about a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobState {
    Intact,
    Missing,
    /// The content did not match its digest; the file was moved aside.
    Corrupt {
        actual: Digest,
        quarantined: PathBuf,
    },
}

/// A directory of blobs named by their SHA-256: `ROOT/sha256/ab/abcdef...`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["sha256", "tmp", "quarantine"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        remove_abandoned(&root.join("tmp"), ABANDONED_AFTER);
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Cheap check: present, right size and stamped as verified. Blobs whose stamp was
    /// disturbed are re-hashed; corrupt ones are quarantined.
    pub fn check(&self, digest: &Digest) -> Result<BlobState, StoreError> {
        let path = self.path_of(digest);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BlobState::Missing),
            Err(e) => return Err(io_err(&path)(e)),
        };
        if meta.len() == digest.size() && is_stamped(&meta) {
            return Ok(BlobState::Intact);
        }
        let actual = hash_file(&path).map_err(io_err(&path))?;
        if actual == *digest {
            // The stamp only spares the next check a read. A blob another user owns (a
            // shared store) cannot be stamped by this one, and is intact all the same: an
            // error here made the coordinator forget a good cached result.
            let _ = stamp(&path);
            return Ok(BlobState::Intact);
        }
        let quarantined = self.quarantine(digest)?;
        Ok(BlobState::Corrupt {
            actual,
            quarantined,
        })
    }

    /// True when the blob is present and intact (corrupt blobs are quarantined on the way).
    pub fn has_intact(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.check(digest)? == BlobState::Intact)
    }

    fn quarantine(&self, digest: &Digest) -> Result<PathBuf, StoreError> {
        let from = self.path_of(digest);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let to = self
            .root
            .join("quarantine")
            .join(format!("{}.{nanos}", digest.hex()));
        fs::rename(&from, &to).map_err(io_err(&from))?;
        Ok(to)
    }

    /// Starts an atomic write of a new blob.
    pub fn writer(&self) -> Result<BlobWriter<'_>, StoreError> {
        let tmp_dir = self.root.join("tmp");
        let file = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        Ok(BlobWriter {
            store: self,
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256Writer::default(),
        })
    }

    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let mut w = self.writer()?;
        w.write_all(data).map_err(io_err(&self.root))?;
        w.commit(None)
    }

    /// Copies a file into the store (the source is left in place).
    pub fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
        let mut src = File::open(path).map_err(io_err(path))?;
        let mut w = self.writer()?;
        io::copy(&mut src, &mut w).map_err(io_err(path))?;
        w.commit(None)
    }

    /// Opens a blob for reading after checking it is intact.
    pub fn open_verified(&self, digest: &Digest) -> Result<File, StoreError> {
        match self.check(digest)? {
            BlobState::Intact => {
                let p = self.path_of(digest);
                File::open(&p).map_err(io_err(&p))
            }
            BlobState::Missing => Err(StoreError::Missing {
                digest: digest.clone(),
                root: self.root.clone(),
            }),
            BlobState::Corrupt {
                actual,
                quarantined,
            } => Err(StoreError::Corrupt {
                expected: digest.clone(),
                actual,
                quarantined,
            }),
        }
    }

    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut f = self.open_verified(digest)?;
        let mut buf = Vec::with_capacity(digest.size() as usize);
        f.read_to_end(&mut buf).map_err(io_err(&self.root))?;
        Ok(buf)
    }

    /// A task's private, read-only copy of a blob at `dest` (which must not exist), hashed on
    /// the way: the bytes a task reads are the bytes its digest names, and nothing the task
    /// does to its copy reaches the store (a hard link would share the stored file, and a
    /// root-owned task ignores read-only modes). A blob that does not hash to its name is
    /// quarantined and reported as corrupt.
    pub fn copy_verified(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        let path = self.path_of(digest);
        let mut src = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    digest: digest.clone(),
                    root: self.root.clone(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut out = File::create_new(dest).map_err(io_err(dest))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut h = Sha256Writer::default();
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(dest))?;
        }
        let actual = h.finish();
        if actual != *digest {
            drop(out);
            let _ = fs::remove_file(dest);
            let quarantined = self.quarantine(digest)?;
            return Err(StoreError::Corrupt {
                expected: digest.clone(),
                actual,
                quarantined,
            });
        }
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err(dest))?;
        Ok(())
    }

    /// Writes a verified copy of a blob to `dest` atomically (hard link where possible).
    pub fn copy_out(&self, digest: &Digest, dest: &Path) -> Result<(), StoreError> {
        let mut src = self.open_verified(digest)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        io::copy(&mut src, &mut tmp).map_err(io_err(dest))?;
        tmp.as_file().sync_all().map_err(io_err(dest))?;
        let tmp_path = tmp.into_temp_path();
        // A result file like any other: owner read-write, others read. (Temporary files
        // start as 0600, and `set_readonly(false)` would have made them world-writable.)
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o644)).map_err(io_err(dest))?;
        tmp_path.persist(dest).map_err(|e| io_err(dest)(e.error))?;
        Ok(())
    }
}

/// An in-progress blob: hashed as it is written, renamed into place by [`BlobWriter::commit`].
pub struct BlobWriter<'a> {
    store: &'a BlobStore,
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256Writer,
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter<'_> {
    /// Finishes the blob. With `expected`, a mismatch discards the data (a bad transfer).
    pub fn commit(self, expected: Option<&Digest>) -> Result<Digest, StoreError> {
        let root = &self.store.root;
        let digest = self.hasher.finish();
        if let Some(exp) = expected {
            if *exp != digest {
                return Err(StoreError::Mismatch {
                    expected: exp.clone(),
                    actual: digest,
                });
            }
        }
        let file = self
            .file
            .into_inner()
            .map_err(|e| io_err(root)(e.into_error()))?;
        let dest = self.store.path_of(&digest);
        if self.store.check(&digest)? == BlobState::Intact {
            return Ok(digest); // already stored; the temporary file is dropped
        }
        file.as_file().sync_all().map_err(io_err(root))?;
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp_path = file.into_temp_path();
        stamp(&tmp_path).map_err(io_err(&tmp_path))?;
        tmp_path
            .persist(&dest)
            .map_err(|e| io_err(&dest)(e.error))?;
        Ok(digest)
    }
}

fn stamp_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(STAMP_MTIME_SECS)
}

/// A blob being written lives in `tmp/` until it is renamed into place, and is removed if
/// the write fails; a process killed meanwhile (SIGKILL, the OOM killer, a job's time
/// limit) leaves it there for ever, up to gigabytes each. Files that old are abandoned: no
/// write takes a day, and processes sharing the store (workers on a shared filesystem)
/// write there too, so younger ones are left alone.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the files in `dir` not modified for `age` (best effort: another process may be
/// removing them too).
fn remove_abandoned(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let Some(before) = SystemTime::now().checked_sub(age) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < before);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn is_stamped(meta: &fs::Metadata) -> bool {
    meta.permissions().readonly() && meta.modified().ok() == Some(stamp_time())
}

fn stamp(path: &Path) -> io::Result<()> {
    let mut perms = fs::metadata(path)?.permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms)?;
    filetime::set_file_mtime(path, filetime::FileTime::from_system_time(stamp_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write abandoned by a killed process (a day old) is removed when the store is next
    /// opened; one that may still be going on is not.
    #[test]
    fn abandoned_partial_writes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::open(dir.path()).unwrap();
        let (old, fresh) = (
            dir.path().join("tmp/.tmpOLD"),
            dir.path().join("tmp/.tmpNEW"),
        );
        fs::write(&old, vec![0u8; 1024]).unwrap();
        fs::write(&fresh, b"in progress").unwrap();
        let two_days = SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
        filetime::set_file_mtime(&old, filetime::FileTime::from_system_time(two_days)).unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert!(!old.exists() && fresh.exists());
    }

    #[test]
    fn put_read_roundtrip_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d1 = store.put_bytes(b"hello plates").unwrap();
        let d2 = store.put_bytes(b"hello plates").unwrap();
        assert_eq!(d1, d2);
        assert_eq!(d1, hash_bytes(b"hello plates"));
        assert_eq!(store.read_verified(&d1).unwrap(), b"hello plates");
        assert_eq!(store.check(&d1).unwrap(), BlobState::Intact);
    }

    #[test]
    fn corrupt_blob_is_detected_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"0123456789").unwrap();
        let p = store.path_of(&d);
        let mut perms = fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(&p, perms).unwrap();
        fs::write(&p, b"0123456780").unwrap(); // same size, different bytes
        match store.read_verified(&d) {
            Err(StoreError::Corrupt { quarantined, .. }) => assert!(quarantined.exists()),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(store.check(&d).unwrap(), BlobState::Missing);
    }

    #[test]
    fn a_private_copy_is_verified_and_detached_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("s")).unwrap();
        let d = store.put_bytes(b"cells of P1\n").unwrap();
        let copy = dir.path().join("copy.txt");
        store.copy_verified(&d, &copy).unwrap();
        // Writing to the copy (as a careless step would, root or not) leaves the blob alone.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&copy)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(store.read_verified(&d).unwrap(), b"cells of P1\n");
        // A stored blob whose bytes changed under its name is refused, not served.
        let blob = store.path_of(&d);
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&blob, b"cells of P2\n").unwrap();
        let again = dir.path().join("again.txt");
        assert!(matches!(
            store.copy_verified(&d, &again),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!again.exists());
        assert_eq!(store.check(&d).unwrap(), BlobState::Missing);
    }

    #[test]
    fn unstamped_but_correct_blob_is_restamped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"abc").unwrap();
        let p = store.path_of(&d);
        filetime::set_file_mtime(&p, filetime::FileTime::now()).unwrap();
        assert_eq!(store.check(&d).unwrap(), BlobState::Intact);
        assert!(is_stamped(&fs::metadata(&p).unwrap()));
    }

    #[test]
    fn transfer_mismatch_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let want = hash_bytes(b"good");
        let mut w = store.writer().unwrap();
        w.write_all(b"evil").unwrap();
        assert!(matches!(
            w.commit(Some(&want)),
            Err(StoreError::Mismatch { .. })
        ));
        assert_eq!(store.check(&want).unwrap(), BlobState::Missing);
    }
}
