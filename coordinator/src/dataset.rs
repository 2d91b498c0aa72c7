//! The image set of a pipeline: files found under the image root whose names match the
//! pattern, their metadata fields, and their content digests (through the stat cache).

use crate::db::{Db, StatKey};
use crate::spec::DataSpec;
use plateflow_store::{hash_files_parallel, Digest};
use rustc_hash::FxHashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Interned field values: images and tasks hold small integers, not strings.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    values: Vec<String>,
    index: FxHashMap<String, u32>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.values.len() as u32;
        self.values.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
    pub fn get(&self, i: u32) -> &str {
        &self.values[i as usize]
    }
}

#[derive(Debug, Clone)]
pub struct Image {
    pub rel_path: String,
    /// One value id per pattern field, in the pattern's field order.
    pub fields: Vec<u32>,
    pub digest: Option<Digest>,
    /// Why this file cannot be used (unreadable, a name that is not UTF-8). The tasks that
    /// read it fail naming it; the rest of the run goes on.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub root: PathBuf,
    pub fields: Vec<String>,
    pub values: Interner,
    /// Sorted by relative path.
    pub images: Vec<Image>,
    /// Files under the root that the pattern did not match (shown to the user, not used).
    pub unmatched: Vec<String>,
}

/// What hashing cost: files read versus taken from the stat cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashStats {
    pub files: usize,
    pub hashed: usize,
    pub bytes_hashed: u64,
}

impl Dataset {
    /// Lists the image root. Hidden files and directories are skipped. A file whose name is
    /// not UTF-8 is kept (its fields read from the name with the bad bytes replaced) with a
    /// problem naming its exact bytes: only the tasks that would read it fail.
    pub fn scan(data: &DataSpec) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        walk_images(&data.images_root, &mut files).map_err(|e| {
            anyhow::anyhow!(
                "cannot list images under {}: {e}",
                data.images_root.display()
            )
        })?;
        // Byte order: the order of the names as text, also for names that are not.
        files.sort_by(|a, b| {
            use std::os::unix::ffi::OsStrExt as _;
            a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes())
        });
        let mut ds = Dataset {
            root: data.images_root.clone(),
            fields: data.pattern.fields.clone(),
            ..Default::default()
        };
        for path in files {
            let (rel, problem) = match path.to_str() {
                Some(s) => (s.to_string(), None),
                None => (
                    path.to_string_lossy().into_owned(),
                    Some(format!(
                        "the file name {} is not valid UTF-8 (under {}): rename it; plateflow \
                         passes names as text and will not guess",
                        escaped_name(&path),
                        data.images_root.display()
                    )),
                ),
            };
            match data.pattern.captures(&rel) {
                Some(vals) => {
                    let fields = vals.iter().map(|v| ds.values.intern(v)).collect();
                    ds.images.push(Image {
                        rel_path: rel,
                        fields,
                        digest: None,
                        problem,
                    });
                }
                None => ds.unmatched.push(match problem {
                    Some(_) => escaped_name(&path),
                    None => rel,
                }),
            }
        }
        Ok(ds)
    }

    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f == name)
    }

    pub fn abs_path(&self, img: &Image) -> PathBuf {
        self.root.join(&img.rel_path)
    }

    /// Gives every image its digest, reading only files whose (device, inode, size, mtime)
    /// changed since they were last hashed. A file that cannot be read gets a problem instead
    /// (a `chmod 000` image fails its plate's tasks, not the whole run).
    pub fn hash(&mut self, db: &mut Db, threads: usize) -> anyhow::Result<HashStats> {
        let usable: Vec<usize> = (0..self.images.len())
            .filter(|&i| self.images[i].problem.is_none())
            .collect();
        let paths: Vec<PathBuf> = usable
            .iter()
            .map(|&i| self.root.join(&self.images[i].rel_path))
            .collect();
        let (digests, stats) = hash_each_with_cache(&paths, db, threads)?;
        for (i, d) in usable.into_iter().zip(digests) {
            match d {
                Ok(d) => self.images[i].digest = Some(d),
                Err(e) => self.images[i].problem = Some(e),
            }
        }
        Ok(stats)
    }

    /// Images that cannot be used, with why.
    pub fn problems(&self) -> impl Iterator<Item = (&Image, &str)> {
        self.images
            .iter()
            .filter_map(|i| i.problem.as_deref().map(|p| (i, p)))
    }
}

/// A path as its bytes read, with anything that is not UTF-8 written `\xNN`.
pub fn escaped_name(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    p.as_os_str()
        .as_bytes()
        .utf8_chunks()
        .map(|c| {
            let bad: String = c.invalid().iter().map(|b| format!("\\x{b:02x}")).collect();
            format!("{}{bad}", c.valid())
        })
        .collect()
}

/// Digests of `paths` in order, using and refreshing the stat cache; the first file that
/// cannot be read is the error (step files, the plate map: the run cannot start without them).
pub fn hash_with_cache(
    paths: &[PathBuf],
    db: &mut Db,
    threads: usize,
) -> anyhow::Result<(Vec<Digest>, HashStats)> {
    let (each, stats) = hash_each_with_cache(paths, db, threads)?;
    let digests = each
        .into_iter()
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok((digests, stats))
}

/// Digests of `paths` in order, each or why it cannot be read; the error is only the
/// database's.
pub fn hash_each_with_cache(
    paths: &[PathBuf],
    db: &mut Db,
    threads: usize,
) -> anyhow::Result<(Vec<Result<Digest, String>>, HashStats)> {
    // stat() the files while the cache is read from the database.
    let (cache, stats) = std::thread::scope(|s| {
        let stats = s.spawn(|| stat_all(paths, threads));
        let cache = db.load_stat_cache();
        (cache, stats.join().expect("stat thread panicked"))
    });
    let cache = cache?;
    let mut out: Vec<Option<Result<Digest, String>>> = vec![None; paths.len()];
    let mut todo: Vec<(usize, StatKey)> = Vec::new();
    for (i, (p, key)) in paths.iter().zip(stats).enumerate() {
        let key = match key {
            Ok(k) => k,
            Err(e) => {
                out[i] = Some(Err(e));
                continue;
            }
        };
        match cache.get(p.to_string_lossy().as_ref()) {
            Some((k, d)) if *k == key => out[i] = Some(Ok(d.clone())),
            _ => todo.push((i, key)),
        }
    }
    let todo_paths: Vec<PathBuf> = todo.iter().map(|(i, _)| paths[*i].clone()).collect();
    let hashed = hash_files_parallel(&todo_paths, threads);
    let mut stats = HashStats {
        files: paths.len(),
        hashed: todo.len(),
        bytes_hashed: 0,
    };
    let mut fresh = Vec::with_capacity(todo.len());
    // A file modified within the last seconds could change again within the same time tick
    // without its stat changing; such files are not cached, so they are hashed next time too.
    // The change time counts: a file rewritten with its old mtime put back is new.
    let racy_after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64 - 2_000_000_000)
        .unwrap_or(i64::MAX);
    for ((i, key), res) in todo.into_iter().zip(hashed) {
        let d = match res {
            Ok(d) => d,
            Err(e) => {
                out[i] = Some(Err(format!("cannot read {}: {e}", paths[i].display())));
                continue;
            }
        };
        stats.bytes_hashed += d.size();
        if key.mtime_ns.max(key.ctime_ns) < racy_after {
            fresh.push((paths[i].to_string_lossy().into_owned(), key, d.clone()));
        }
        out[i] = Some(Ok(d));
    }
    db.save_stat_cache(&fresh)?;
    Ok((
        out.into_iter()
            .map(|d| d.expect("every path stat-ed or hashed"))
            .collect(),
        stats,
    ))
}

/// What identifies `path`'s content without reading it.
pub fn stat_key(path: &Path) -> Result<StatKey, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(StatKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    })
}

/// `stat` of every path, spread over threads (a plate of small files is syscall-bound).
fn stat_all(paths: &[PathBuf], threads: usize) -> Vec<Result<StatKey, String>> {
    let stat = |p: &PathBuf| stat_key(p);
    let chunk = paths.len().div_ceil(threads.max(1)).max(1024);
    std::thread::scope(|s| {
        let parts: Vec<_> = paths
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(stat).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::with_capacity(paths.len());
        for p in parts {
            out.extend(p.join().expect("stat thread panicked"));
        }
        out
    })
}

/// Every file under `root` (relative to it), following links to folders: a plate linked in
/// from the microscope's share (`ln -s /mnt/scope/P4 images/P4`) was skipped in silence, and
/// the run went on without it. Each folder is entered once (a link back up is no loop). A
/// broken link is listed, so that reading it fails naming it.
fn walk_images(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(root)?;
    let mut seen = std::collections::HashSet::from([(meta.dev(), meta.ino())]);
    walk(root, root, out, &mut seen)
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() || (ft.is_symlink() && path.is_dir()) {
            let meta = std::fs::metadata(&path)?;
            if seen.insert((meta.dev(), meta.ino())) {
                walk(root, &path, out, seen)?;
            }
        } else if ft.is_file() || ft.is_symlink() {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn write_old(p: &Path, content: &str) {
        std::fs::write(p, content).unwrap();
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }

    /// A plate folder linked in from elsewhere is listed; a link back up does not loop; a
    /// broken link is listed (reading it then fails naming it).
    #[test]
    fn linked_plate_folders_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        std::fs::create_dir_all(root.join("P1")).unwrap();
        std::fs::write(root.join("P1/A01.tif"), "x").unwrap();
        let share = dir.path().join("scope/P4");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("A01.tif"), "x").unwrap();
        std::os::unix::fs::symlink(&share, root.join("P4")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("P1/up")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone.tif"), root.join("P1/A02.tif")).unwrap();
        let mut files = Vec::new();
        walk_images(&root, &mut files).unwrap();
        files.sort();
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["P1/A01.tif", "P1/A02.tif", "P4/A01.tif"]);
    }

    #[test]
    fn unchanged_files_are_never_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let paths: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            write_old(p, "content");
        }
        // Their change time is now: only files older than the racy window are remembered.
        std::thread::sleep(Duration::from_millis(2100));
        let (d1, s1) = hash_with_cache(&paths, &mut db, 2).unwrap();
        assert_eq!(s1.hashed, 3);
        let (d2, s2) = hash_with_cache(&paths, &mut db, 2).unwrap();
        assert_eq!(
            (s2.hashed, s2.bytes_hashed),
            (0, 0),
            "a re-run reads no file"
        );
        assert_eq!(d1, d2);
        write_old(&paths[1], "changed!");
        std::thread::sleep(Duration::from_millis(2100));
        let (d3, s3) = hash_with_cache(&paths, &mut db, 2).unwrap();
        assert_eq!(s3.hashed, 1);
        assert_ne!(d3[1], d1[1]);
        assert_eq!(d3[0], d1[0]);
        // A file just written is hashed again next time (its mtime may not have ticked).
        std::fs::write(&paths[2], "fresh").unwrap();
        hash_with_cache(&paths, &mut db, 2).unwrap();
        let (_, s5) = hash_with_cache(&paths, &mut db, 2).unwrap();
        assert_eq!(s5.hashed, 1);
    }

    /// `cp -p`, `rsync --inplace -t` and `touch -r` put the old mtime back on new bytes: with
    /// the same size too, only the change time tells.
    #[test]
    fn a_rewrite_with_its_old_mtime_put_back_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let path = dir.path().join("A01.tif");
        write_old(&path, "plate one");
        let old_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        let paths = vec![path.clone()];
        let (before, _) = hash_with_cache(&paths, &mut db, 1).unwrap();
        std::fs::write(&path, "plate two").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(old_mtime).unwrap();
        let (after, stats) = hash_with_cache(&paths, &mut db, 1).unwrap();
        assert_eq!(stats.hashed, 1, "the rewritten file is read again");
        assert_ne!(before[0], after[0]);
        assert_eq!(&after[0], &plateflow_store::hash_bytes(b"plate two"));
    }
}
