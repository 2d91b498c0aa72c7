//! SHA-256 of bytes, readers and files; many files in parallel across cores.

use crate::Digest;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Incremental hasher that also counts bytes, so it yields a full [`Digest`].
#[derive(Default, Clone)]
pub struct Sha256Writer {
    hasher: Sha256,
    len: u64,
}

impl Sha256Writer {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    pub fn finish(self) -> Digest {
        Digest::new(self.hasher.finalize().into(), self.len)
    }
}

pub fn hash_bytes(data: &[u8]) -> Digest {
    let mut h = Sha256Writer::default();
    h.update(data);
    h.finish()
}

pub fn hash_reader(mut r: impl Read) -> io::Result<Digest> {
    // 256 KiB: large enough to amortise syscalls, small enough to stay in L2.
    let mut buf = vec![0u8; 256 * 1024];
    let mut h = Sha256Writer::default();
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

pub fn hash_file(path: &Path) -> io::Result<Digest> {
    hash_reader(File::open(path)?)
}

/// Hashes files on `threads` threads (work is shared file by file). Results keep input order.
pub fn hash_files_parallel(paths: &[PathBuf], threads: usize) -> Vec<io::Result<Digest>> {
    let threads = threads.clamp(1, paths.len().max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<io::Result<Digest>>> = (0..paths.len()).map(|_| None).collect();
    let chunks: Vec<Vec<(usize, io::Result<Digest>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= paths.len() {
                            break out;
                        }
                        out.push((i, hash_file(&paths[i])));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread panicked"))
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every file hashed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_matches_serial() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..20)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, vec![i as u8; i * 1000]).unwrap();
                p
            })
            .collect();
        let par = hash_files_parallel(&paths, 3);
        for (p, d) in paths.iter().zip(par) {
            assert_eq!(hash_file(p).unwrap(), d.unwrap());
        }
    }
}
