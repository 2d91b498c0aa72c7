//! Wire types of plateflow: the one place where coordinator, workers and clients agree.
//! Generated from `proto/plateflow.proto` at build time with a vendored `protoc`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("plateflow.v1");
}

pub use v1::*;

/// Largest gRPC message either side accepts (assignments of big plates list many files).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Largest message the coordinator accepts from a client: a Submit is kilobytes, a blob chunk
/// [`CHUNK_BYTES`], a worker's result a few kilobytes; nothing needs more.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Blob chunk size on the wire: well under the message limit, large enough to stream fast.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Digests cross the wire as hex plus size; these conversions are the only place that knows.
impl From<&plateflow_store::Digest> for v1::Digest {
    fn from(d: &plateflow_store::Digest) -> Self {
        v1::Digest {
            sha256: d.hex(),
            size: d.size(),
        }
    }
}

impl TryFrom<&v1::Digest> for plateflow_store::Digest {
    type Error = plateflow_store::DigestParseError;
    fn try_from(d: &v1::Digest) -> Result<Self, Self::Error> {
        plateflow_store::Digest::from_hex(&d.sha256, d.size)
    }
}

/// Reads an optional wire digest, naming what was missing or malformed.
pub fn digest_of(
    d: Option<&v1::Digest>,
    what: &str,
) -> Result<plateflow_store::Digest, tonic::Status> {
    let d = d.ok_or_else(|| tonic::Status::invalid_argument(format!("{what}: digest missing")))?;
    plateflow_store::Digest::try_from(d)
        .map_err(|e| tonic::Status::invalid_argument(format!("{what}: {e}")))
}
