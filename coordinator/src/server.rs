//! The gRPC edge of the coordinator: each call becomes an engine event, blobs are served from
//! the store (or from input files, by digest). No decisions are made here.

use crate::engine::{EngineHandle, Event, SubmitError};
use plateflow_proto::v1::{
    coordinator_server::{Coordinator, CoordinatorServer},
    worker_message, BlobChunk, CoordinatorMessage, DownloadBlobRequest, FindMissingBlobsRequest,
    FindMissingBlobsResponse, RunStatus, StatusRequest, StatusResponse, SubmitRequest,
    SubmitResponse, UploadBlobResponse, WatchRequest, WorkerMessage,
};
use plateflow_store::{BlobState, Digest};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct CoordinatorService {
    engine: EngineHandle,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type WorkerSessionStream = BoxStream<CoordinatorMessage>;
    type DownloadBlobStream = BoxStream<BlobChunk>;
    type WatchStream = BoxStream<RunStatus>;

    async fn worker_session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::WorkerSessionStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(WorkerMessage {
                body: Some(worker_message::Body::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a worker session must start with a hello",
                ))
            }
        };
        let (tx, rx) = mpsc::channel(4096);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.engine.send(Event::WorkerHello {
            hello,
            tx,
            reply: reply_tx,
        });
        let worker = reply_rx
            .await
            .map_err(|_| Status::unavailable("coordinator is shutting down"))?;
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let why = loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        if let Some(body) = msg.body {
                            engine.send(Event::WorkerMsg { worker, body });
                        }
                    }
                    Ok(None) => break "it closed its session".to_string(),
                    Err(e) => break format!("its connection failed: {}", e.message()),
                }
            };
            engine.send(Event::WorkerGone { worker, why });
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let mut missing = Vec::new();
        for d in request.into_inner().digests {
            let digest =
                Digest::try_from(&d).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if self.engine.store.check(&digest).map_err(internal)? != BlobState::Intact {
                missing.push(d);
            }
        }
        Ok(Response::new(FindMissingBlobsResponse { missing }))
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<BlobChunk>>,
    ) -> Result<Response<UploadBlobResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let expected = plateflow_proto::digest_of(first.digest.as_ref(), "upload")?;
        let store = self.engine.store.clone();
        // Write on a blocking thread, fed chunk by chunk.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
        let exp = expected.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<Digest, Status> {
            let mut w = store.writer().map_err(internal)?;
            while let Some(chunk) = rx.blocking_recv() {
                w.write_all(&chunk).map_err(internal)?;
            }
            w.commit(Some(&exp))
                .map_err(|e| Status::data_loss(e.to_string()))
        });
        let _ = tx.send(first.data).await;
        while let Some(chunk) = stream.message().await? {
            if tx.send(chunk.data).await.is_err() {
                break;
            }
        }
        drop(tx);
        let digest = writer.await.map_err(internal)??;
        Ok(Response::new(UploadBlobResponse {
            digest: Some((&digest).into()),
        }))
    }

    async fn download_blob(
        &self,
        request: Request<DownloadBlobRequest>,
    ) -> Result<Response<Self::DownloadBlobStream>, Status> {
        let digest = plateflow_proto::digest_of(request.into_inner().digest.as_ref(), "download")?;
        let store = self.engine.store.clone();
        let source: PathBuf = match store.check(&digest).map_err(internal)? {
            BlobState::Intact => store.path_of(&digest),
            _ => self
                .engine
                .inputs
                .read()
                .expect("inputs lock")
                .get(&digest)
                .cloned()
                .ok_or_else(|| {
                    Status::not_found(format!("blob {digest} is not known to the coordinator"))
                })?,
        };
        let (tx, rx) = mpsc::channel::<Result<BlobChunk, Status>>(4);
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&source) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::not_found(format!(
                        "{}: {e}",
                        source.display()
                    ))));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; plateflow_proto::CHUNK_BYTES];
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx
                            .blocking_send(Ok(BlobChunk {
                                digest: None,
                                data: buf,
                            }))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(internal(e)));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let req = request.into_inner();
        let (reply, rx) = oneshot::channel();
        self.engine.send(Event::Submit {
            path: PathBuf::from(req.pipeline_path),
            yaml: req.pipeline_yaml,
            force: req.force,
            reply,
        });
        match rx
            .await
            .map_err(|_| Status::unavailable("coordinator is shutting down"))?
        {
            Ok((run_id, tasks)) => Ok(Response::new(SubmitResponse { run_id, tasks })),
            Err(SubmitError::Refused(msg)) => Err(Status::invalid_argument(msg)),
            Err(SubmitError::State(msg)) => Err(Status::internal(msg)),
        }
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let req = request.into_inner();
        let (reply, rx) = oneshot::channel();
        self.engine.send(Event::Status {
            run_id: req.run_id,
            with_tasks: req.with_tasks,
            reply,
        });
        let runs = rx
            .await
            .map_err(|_| Status::unavailable("coordinator is shutting down"))?;
        Ok(Response::new(StatusResponse { runs }))
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let run_id = request.into_inner().run_id;
        let (tx, rx) = mpsc::channel(16);
        self.engine.send(Event::Watch { run_id, tx });
        // The stream ends after the run's final status.
        let stream = ReceiverStream::new(rx);
        let mut ended = false;
        let stream = stream.take_while(move |s: &Result<RunStatus, Status>| {
            if ended {
                return false;
            }
            if let Ok(st) = s {
                ended = !matches!(st.state.as_str(), "running" | "waiting" | "");
            }
            true
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves the coordinator on `listener` until `shutdown` resolves: every call passes the
/// token check, over TLS when an identity is given, and every connection the door's
/// [`Limits`](crate::connections::Limits).
pub async fn serve(
    engine: EngineHandle,
    listener: tokio::net::TcpListener,
    security: crate::security::ServerSecurity,
    limits: crate::connections::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // What a client may send is small (a Submit is kilobytes, blob chunks 1 MiB): a larger
    // message is refused from its length prefix, before it is buffered. What the coordinator
    // sends (assignments listing a big plate's files) may be large.
    let svc = CoordinatorServer::new(CoordinatorService { engine })
        .max_decoding_message_size(plateflow_proto::MAX_REQUEST_BYTES)
        .max_encoding_message_size(plateflow_proto::MAX_MESSAGE_BYTES);
    let svc = tonic::service::interceptor::InterceptedService::new(
        svc,
        crate::security::CheckToken::new(security.token),
    );
    let fds = crate::connections::raise_open_files_limit();
    let limits = crate::connections::Limits {
        // Leave descriptors for the store, the database and the blob streams.
        max: if fds > 64 {
            limits.max.min((fds / 2) as usize)
        } else {
            limits.max
        },
        ..limits
    };
    let incoming = crate::connections::guarded_incoming(listener, limits);
    // Pings close connections to vanished workers (their sessions end, tasks re-queue even
    // before the lease runs out) and keep live ones chatty within the door's idle time-out.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem),
        ))?;
    }
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Calls in flight on one connection: a worker holds its session, a watch and a few blob
/// transfers; more than this is someone else.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Binds a listener, saying clearly when the address is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (is another coordinator running? pick another --listen address)"))
}
