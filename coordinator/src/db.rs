//! The embedded SQLite database: the stat cache of input files, the action cache (task key ->
//! outputs), and the journal of runs. WAL mode: a killed coordinator loses nothing committed.

use plateflow_store::Digest;
use rusqlite::{params, Connection, OptionalExtension};
use rustc_hash::FxHashMap;
use std::path::Path;

/// What identifies an unchanged file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    /// Change time: set by the kernel on every write, so a file rewritten with its old size
    /// and its old mtime put back (`cp -p`, `rsync --inplace -t`, `touch -r`) still differs.
    pub ctime_ns: i64,
}

/// A finished task's outputs, as remembered under its cache key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedAction {
    pub outputs: Vec<(String, Digest)>,
    pub stdout: Option<Digest>,
    pub stderr: Option<Digest>,
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: u64,
    pub pipeline: String,
    pub yaml: String,
    pub state: String,
    pub force: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub label: String,
    pub state: String,
    pub attempts: u32,
    pub reason: String,
    pub error: String,
}

pub struct Db {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stat_cache (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,
    digest TEXT NOT NULL, ctime_ns INTEGER);
CREATE TABLE IF NOT EXISTS action_cache (
    key TEXT PRIMARY KEY, label TEXT NOT NULL, result TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, pipeline TEXT NOT NULL, yaml TEXT NOT NULL, state TEXT NOT NULL,
    force TEXT NOT NULL DEFAULT '[]', started REAL NOT NULL, finished REAL, summary TEXT);
CREATE TABLE IF NOT EXISTS lock_state (
    path TEXT PRIMARY KEY, identity TEXT NOT NULL, file_digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run_models (
    run_id INTEGER NOT NULL, label TEXT NOT NULL, kind TEXT NOT NULL, params TEXT NOT NULL,
    metrics TEXT NOT NULL, predictions TEXT, PRIMARY KEY (run_id, label));
CREATE TABLE IF NOT EXISTS run_tasks (
    run_id INTEGER NOT NULL, label TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    reason TEXT NOT NULL, error TEXT NOT NULL, PRIMARY KEY (run_id, label));
CREATE TABLE IF NOT EXISTS run_done (
    run_id INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (run_id, key));
CREATE TABLE IF NOT EXISTS allocations (
    id TEXT PRIMARY KEY, backend TEXT NOT NULL, state TEXT NOT NULL, submitted REAL NOT NULL,
    ended REAL, workers INTEGER NOT NULL, note TEXT NOT NULL);
";

/// A batch allocation as recorded for `plateflow alloc list`.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationRow {
    pub id: String,
    pub backend: String,
    pub state: String,
    pub submitted: f64,
    pub ended: Option<f64>,
    pub workers: u32,
    pub note: String,
}

/// A train or evaluate task's result in one run.
#[derive(Debug, Clone)]
pub struct RunModel {
    pub label: String,
    pub kind: String,
    /// The step's parameters (JSON).
    pub params: String,
    /// Its metrics.json.
    pub metrics: String,
    /// Its predictions.csv in the blob store, for paired comparisons.
    pub predictions: Option<Digest>,
}

/// The change time of rows written before it was recorded: matches no file, so each such
/// file is read once more.
const UNKNOWN_CTIME: i64 = i64::MIN;

/// Columns added since a table was first made (`CREATE TABLE IF NOT EXISTS` keeps an older
/// table as it was).
fn add_missing_columns(conn: &Connection) -> anyhow::Result<()> {
    let has_ctime = conn
        .prepare("SELECT 1 FROM pragma_table_info('stat_cache') WHERE name = 'ctime_ns'")?
        .exists([])?;
    if !has_ctime {
        conn.execute_batch("ALTER TABLE stat_cache ADD COLUMN ctime_ns INTEGER")?;
    }
    Ok(())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Db {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", path.display()))?;
        let prepared = conn
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
            )
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(anyhow::Error::from)
            .and_then(|()| add_missing_columns(&conn));
        prepared.map_err(|e| {
            anyhow::anyhow!(
                "cannot prepare the database {}: {e:#} (if the disk is full, free space there)",
                path.display()
            )
        })?;
        Ok(Self { conn })
    }

    pub fn load_stat_cache(&self) -> anyhow::Result<FxHashMap<String, (StatKey, Digest)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, dev, ino, size, mtime_ns, digest, ctime_ns FROM stat_cache")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                StatKey {
                    dev: r.get::<_, i64>(1)? as u64,
                    ino: r.get::<_, i64>(2)? as u64,
                    size: r.get::<_, i64>(3)? as u64,
                    mtime_ns: r.get(4)?,
                    ctime_ns: r.get::<_, Option<i64>>(6)?.unwrap_or(UNKNOWN_CTIME),
                },
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = FxHashMap::default();
        for row in rows {
            let (path, key, digest) = row?;
            if let Ok(d) = digest.parse() {
                out.insert(path, (key, d));
            }
        }
        Ok(out)
    }

    /// What the stat cache knows of one path.
    pub fn stat_entry(&self, path: &str) -> anyhow::Result<Option<(StatKey, Digest)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT dev, ino, size, mtime_ns, digest, ctime_ns FROM stat_cache WHERE path = ?1",
        )?;
        let mut rows = stmt.query(params![path])?;
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let key = StatKey {
            dev: r.get::<_, i64>(0)? as u64,
            ino: r.get::<_, i64>(1)? as u64,
            size: r.get::<_, i64>(2)? as u64,
            mtime_ns: r.get(3)?,
            ctime_ns: r.get::<_, Option<i64>>(5)?.unwrap_or(UNKNOWN_CTIME),
        };
        Ok(r.get::<_, String>(4)?.parse().ok().map(|d| (key, d)))
    }

    pub fn save_stat_cache(&mut self, rows: &[(String, StatKey, Digest)]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO stat_cache (path, dev, ino, size, mtime_ns, digest, ctime_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (p, k, d) in rows {
                stmt.execute(params![
                    p,
                    k.dev as i64,
                    k.ino as i64,
                    k.size as i64,
                    k.mtime_ns,
                    d.to_string(),
                    k.ctime_ns
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn load_action_cache(&self) -> anyhow::Result<FxHashMap<String, CachedAction>> {
        let mut stmt = self.conn.prepare("SELECT key, result FROM action_cache")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = FxHashMap::default();
        for row in rows {
            let (k, v) = row?;
            if let Ok(a) = serde_json::from_str(&v) {
                out.insert(k, a);
            }
        }
        Ok(out)
    }

    /// Records finished tasks in one transaction (the engine batches them), and, given a
    /// forced run's id, that this run ran them: resumed after a crash it does not force them
    /// again. Unforced runs need no such record (the cache is theirs), and keeping one for
    /// every task doubled the random-key index writes of each batch (a run of 100,000 no-op
    /// tasks took 6 s instead of 3).
    pub fn save_actions(
        &mut self,
        forced_run: Option<u64>,
        rows: &[(String, String, CachedAction)],
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO action_cache (key, label, result, created) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut done =
                tx.prepare("INSERT OR IGNORE INTO run_done (run_id, key) VALUES (?1, ?2)")?;
            let t = now();
            for (key, label, action) in rows {
                stmt.execute(params![key, label, serde_json::to_string(action)?, t])?;
                if let Some(run_id) = forced_run {
                    done.execute(params![run_id as i64, key])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The keys run `run_id` has already run to completion (before a restart).
    pub fn done_in_run(&self, run_id: u64) -> anyhow::Result<std::collections::HashSet<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key FROM run_done WHERE run_id = ?1")?;
        let rows = stmt.query_map(params![run_id as i64], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What the lock file at `path` was last written from, and the digest of its text.
    pub fn lock_state(&self, path: &str) -> anyhow::Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT identity, file_digest FROM lock_state WHERE path = ?1",
                params![path],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn save_lock_state(
        &mut self,
        path: &str,
        identity: &str,
        file_digest: &str,
    ) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO lock_state (path, identity, file_digest) VALUES (?1, ?2, ?3)",
            params![path, identity, file_digest],
        )?;
        Ok(())
    }

    /// The stored result of one cache key.
    pub fn action(&self, key: &str) -> anyhow::Result<Option<CachedAction>> {
        let row: Option<String> = self
            .conn
            .query_row(
                "SELECT result FROM action_cache WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(row.and_then(|r| serde_json::from_str(&r).ok()))
    }

    pub fn forget_action(&mut self, key: &str) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM action_cache WHERE key = ?1", params![key])?;
        Ok(())
    }

    pub fn create_run(
        &mut self,
        pipeline: &str,
        yaml: &str,
        force: &[String],
    ) -> anyhow::Result<u64> {
        self.conn.execute(
            "INSERT INTO runs (pipeline, yaml, state, force, started) VALUES (?1, ?2, 'running', ?3, ?4)",
            params![pipeline, yaml, serde_json::to_string(force)?, now()],
        )?;
        Ok(self.conn.last_insert_rowid() as u64)
    }

    pub fn finish_run(
        &mut self,
        id: u64,
        state: &str,
        summary: &str,
        tasks: &[TaskRecord],
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE runs SET state = ?2, finished = ?3, summary = ?4 WHERE id = ?1",
            params![id as i64, state, now(), summary],
        )?;
        // A finished run is never resumed: its done keys are of no further use.
        tx.execute("DELETE FROM run_done WHERE run_id = ?1", params![id as i64])?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO run_tasks (run_id, label, state, attempts, reason, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for t in tasks {
                stmt.execute(params![
                    id as i64, t.label, t.state, t.attempts, t.reason, t.error
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs a killed coordinator left unfinished, oldest first: they are resumed at start.
    pub fn unfinished_runs(&self) -> anyhow::Result<Vec<RunRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, pipeline, yaml, state, force FROM runs WHERE state = 'running' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunRecord {
                id: r.get::<_, i64>(0)? as u64,
                pipeline: r.get(1)?,
                yaml: r.get(2)?,
                state: r.get(3)?,
                force: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Drops the done keys of runs that will not be resumed: databases written before keys
    /// were dropped at a run's end still hold every finished run's. Called once, when the
    /// coordinator starts.
    pub fn drop_done_keys_of_ended_runs(&mut self) -> anyhow::Result<()> {
        self.conn.execute(
            "DELETE FROM run_done WHERE run_id NOT IN (SELECT id FROM runs WHERE state = 'running')",
            [],
        )?;
        Ok(())
    }

    /// Marks runs left `running` by a killed process as interrupted.
    pub fn interrupt_unfinished_runs(&mut self) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE runs SET state = 'interrupted', finished = ?1 WHERE state = 'running'",
            params![now()],
        )?;
        Ok(())
    }

    /// (id, pipeline, state, summary) of every run, newest first.
    #[allow(clippy::type_complexity)]
    pub fn runs(&self) -> anyhow::Result<Vec<(u64, String, String, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, pipeline, state, summary FROM runs ORDER BY id DESC")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an allocation's current state (insert or update).
    pub fn save_allocation(&mut self, a: &AllocationRow) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO allocations (id, backend, state, submitted, ended, workers, note)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET state = ?3, ended = ?5, workers = ?6, note = ?7",
            rusqlite::params![
                a.id,
                a.backend,
                a.state,
                a.submitted,
                a.ended,
                a.workers,
                a.note
            ],
        )?;
        Ok(())
    }

    /// Every allocation, newest first.
    pub fn allocations(&self) -> anyhow::Result<Vec<AllocationRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, backend, state, submitted, ended, workers, note FROM allocations
             ORDER BY submitted DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AllocationRow {
                id: r.get(0)?,
                backend: r.get(1)?,
                state: r.get(2)?,
                submitted: r.get(3)?,
                ended: r.get(4)?,
                workers: r.get::<_, i64>(5)? as u32,
                note: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The current time as stored (seconds since the epoch).
    pub fn now() -> f64 {
        now()
    }

    /// Records a run's model results (train and evaluate tasks): what `runs` and `compare`
    /// read.
    pub fn save_run_models(&mut self, run_id: u64, rows: &[RunModel]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO run_models (run_id, label, kind, params, metrics, predictions) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for m in rows {
                stmt.execute(params![
                    run_id as i64,
                    m.label,
                    m.kind,
                    m.params,
                    m.metrics,
                    m.predictions.as_ref().map(|d| d.to_string())
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn run_models(&self, run_id: u64) -> anyhow::Result<Vec<RunModel>> {
        let mut stmt = self.conn.prepare(
            "SELECT label, kind, params, metrics, predictions FROM run_models WHERE run_id = ?1 ORDER BY label",
        )?;
        let rows = stmt.query_map(params![run_id as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (label, kind, params, metrics, predictions) = row?;
            out.push(RunModel {
                label,
                kind,
                params,
                metrics,
                predictions: predictions.and_then(|d| d.parse().ok()),
            });
        }
        Ok(out)
    }

    /// (id, pipeline, state, started, finished) of every run, oldest first.
    #[allow(clippy::type_complexity)]
    pub fn run_list(&self) -> anyhow::Result<Vec<(u64, String, String, f64, Option<f64>)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, pipeline, state, started, finished FROM runs ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn run_tasks(&self, run_id: u64) -> anyhow::Result<Vec<TaskRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT label, state, attempts, reason, error FROM run_tasks WHERE run_id = ?1 ORDER BY label",
        )?;
        let rows = stmt.query_map(params![run_id as i64], |r| {
            Ok(TaskRecord {
                label: r.get(0)?,
                state: r.get(1)?,
                attempts: r.get(2)?,
                reason: r.get(3)?,
                error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn run_state(&self, id: u64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT state FROM runs WHERE id = ?1",
                params![id as i64],
                |r| r.get(0),
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory from before the change time was recorded opens, keeps its rows, and
    /// has each of them read once more (their change time matches no file).
    #[test]
    fn a_stat_cache_without_change_times_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plateflow.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE stat_cache (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER,
                 size INTEGER, mtime_ns INTEGER, digest TEXT NOT NULL);
             INSERT INTO stat_cache VALUES ('a.tif', 1, 2, 3, 4,
                 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/0');",
        )
        .unwrap();
        drop(old);
        let mut db = Db::open(&path).unwrap();
        let cache = db.load_stat_cache().unwrap();
        let (key, _) = &cache["a.tif"];
        assert_eq!(
            (key.size, key.mtime_ns, key.ctime_ns),
            (3, 4, UNKNOWN_CTIME)
        );
        let digest = cache["a.tif"].1.clone();
        let key = StatKey {
            ctime_ns: 5,
            ..*key
        };
        db.save_stat_cache(&[("a.tif".into(), key, digest)])
            .unwrap();
        assert_eq!(db.stat_entry("a.tif").unwrap().unwrap().0.ctime_ns, 5);
    }
}
