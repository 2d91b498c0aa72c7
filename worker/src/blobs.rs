//! Moving blobs over gRPC in chunks: ask which are missing first, then send only those.
//! Every received blob is verified against its digest before it enters a store.

use crate::exec::BlobFetcher;
use plateflow_access::Client;
use plateflow_proto::v1::{BlobChunk, DownloadBlobRequest, FindMissingBlobsRequest};
use plateflow_store::{BlobStore, Digest};
use std::io::{Read, Write};

pub use plateflow_proto::CHUNK_BYTES;

#[derive(Clone)]
pub struct GrpcFetcher {
    pub client: Client,
}

impl BlobFetcher for GrpcFetcher {
    async fn fetch(&self, store: &BlobStore, digest: &Digest) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        let mut stream = client
            .download_blob(DownloadBlobRequest {
                digest: Some(digest.into()),
            })
            .await?
            .into_inner();
        let mut w = store.writer()?;
        while let Some(chunk) = stream.message().await? {
            w.write_all(&chunk.data)?;
        }
        w.commit(Some(digest))?;
        Ok(())
    }
}

/// Uploads those of `digests` that the coordinator lacks, reading them from `store`.
pub async fn upload_missing(
    client: &mut Client,
    store: &BlobStore,
    digests: &[Digest],
) -> anyhow::Result<()> {
    let missing = client
        .find_missing_blobs(FindMissingBlobsRequest {
            digests: digests.iter().map(Into::into).collect(),
        })
        .await?
        .into_inner()
        .missing;
    for d in missing {
        let digest = Digest::try_from(&d)?;
        let mut file = store.open_verified(&digest)?;
        // Read the blob in a blocking-friendly way; chunks are streamed as they are read.
        let (tx, rx) = tokio::sync::mpsc::channel::<BlobChunk>(4);
        let wire = d.clone();
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut first = true;
            loop {
                let mut buf = vec![0u8; CHUNK_BYTES];
                let n = file.read(&mut buf)?;
                if n == 0 && !first {
                    return Ok(());
                }
                buf.truncate(n);
                let chunk = BlobChunk {
                    digest: first.then(|| wire.clone()),
                    data: buf,
                };
                first = false;
                if tx.blocking_send(chunk).is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        client
            .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        reader.await??;
    }
    Ok(())
}
