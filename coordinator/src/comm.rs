//! What the engine sends out of its event loop: messages to workers and requests for work
//! done off the loop (planning a run). The engine's reactions call this trait; the live
//! implementation speaks gRPC streams and spawns planning threads, and a recording one lets
//! tests drive the engine event by event and check what it sent — no sockets, no threads, no
//! sleeps (the HyperQueue `Comm` pattern).

use crate::engine::{Event, WorkerTx};
use crate::run::prepare;
use crate::scheduler::WorkerId;
use plateflow_proto::v1::CoordinatorMessage;
use plateflow_store::BlobStore;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::sync::mpsc;

pub trait Comm: Send {
    /// A worker's outgoing stream, to keep until it leaves.
    fn worker_joined(&mut self, worker: WorkerId, tx: WorkerTx);
    fn worker_left(&mut self, worker: WorkerId);
    /// Sends a message to a worker. A connection that will not take it is reported back as
    /// [`Event::WorkerGone`].
    fn send(&mut self, worker: WorkerId, msg: CoordinatorMessage);
    /// Plans a run off the event loop (listing and hashing take a while); the result comes
    /// back as [`Event::Prepared`].
    fn plan(&mut self, run_id: u64, path: PathBuf, yaml: String, force: Vec<String>);
}

/// The real thing: gRPC streams to workers, planning on a blocking thread.
pub struct LiveComm {
    pub workers: HashMap<WorkerId, WorkerTx>,
    pub events: mpsc::UnboundedSender<Event>,
    pub db_path: PathBuf,
    pub store: BlobStore,
    pub hash_threads: usize,
    pub allowed_roots: Vec<PathBuf>,
}

impl Comm for LiveComm {
    fn worker_joined(&mut self, worker: WorkerId, tx: WorkerTx) {
        self.workers.insert(worker, tx);
    }

    fn worker_left(&mut self, worker: WorkerId) {
        self.workers.remove(&worker);
    }

    fn send(&mut self, worker: WorkerId, msg: CoordinatorMessage) {
        let Some(tx) = self.workers.get(&worker) else {
            return;
        };
        if tx.try_send(Ok(msg)).is_err() {
            let _ = self.events.send(Event::WorkerGone {
                worker,
                why: "its connection is not accepting messages".into(),
            });
        }
    }

    fn plan(&mut self, run_id: u64, path: PathBuf, yaml: String, force: Vec<String>) {
        let db_path = self.db_path.clone();
        let threads = self.hash_threads;
        let roots = self.allowed_roots.clone();
        let events = self.events.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let result = crate::db::Db::open(&db_path)
                .and_then(|mut db| prepare(run_id, &path, &yaml, force, &mut db, threads, &roots))
                .and_then(|prep| {
                    // Plate-map slices are blobs the tasks fetch like any other input.
                    for bytes in prep.plate_map_blobs.values() {
                        store.put_bytes(bytes)?;
                    }
                    Ok(prep)
                })
                .map_err(|e| format!("{e:#}"));
            let _ = events.send(Event::Prepared {
                run_id,
                result: Box::new(result),
            });
        });
    }
}

/// What a test reads back: every message and planning request, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    Joined(WorkerId),
    Left(WorkerId),
    Message(WorkerId, CoordinatorMessage),
    Plan {
        run_id: u64,
        path: PathBuf,
        force: Vec<String>,
    },
}

/// Records what the engine sends; shares its log with the test that made it.
#[derive(Clone, Default)]
pub struct RecordingComm {
    pub log: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
}

impl RecordingComm {
    /// Takes what was sent since the last call.
    pub fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.log.lock().expect("log"))
    }
}

impl Comm for RecordingComm {
    fn worker_joined(&mut self, worker: WorkerId, _tx: WorkerTx) {
        self.log.lock().expect("log").push(Sent::Joined(worker));
    }
    fn worker_left(&mut self, worker: WorkerId) {
        self.log.lock().expect("log").push(Sent::Left(worker));
    }
    fn send(&mut self, worker: WorkerId, msg: CoordinatorMessage) {
        self.log
            .lock()
            .expect("log")
            .push(Sent::Message(worker, msg));
    }
    fn plan(&mut self, run_id: u64, path: PathBuf, _yaml: String, force: Vec<String>) {
        self.log.lock().expect("log").push(Sent::Plan {
            run_id,
            path,
            force,
        });
    }
}
