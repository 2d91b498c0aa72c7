//! The coordinator's front door: what a connection may cost before it proves useful.
//!
//! - At most `max` connections are open at once. When full, a new connection evicts the
//!   oldest one that has never sent a byte (a flood of idle sockets cannot lock workers out);
//!   when every open connection has spoken, the new one is closed at once.
//! - A connection must send its first bytes within `handshake` (TLS hello or HTTP/2 preface),
//!   and is closed after `idle` without any byte from its peer. The server pings every live
//!   HTTP/2 connection every few seconds, so a live peer (a waiting worker) always answers
//!   within `idle`; a half-open one (a vanished machine) is closed by the server's ping timeout.
//!
//! The policy is plain data ([`Limits`]) and the accounting sits in [`Door`], which is tested
//! without sockets.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub handshake: Duration,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max: 1024,
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// One open connection, as the door sees it.
struct Entry {
    spoke: Arc<AtomicBool>,
    /// Dropping it closes the connection (its reader sees the eviction).
    evict: oneshot::Sender<()>,
}

/// The accounting of open connections.
#[derive(Default)]
pub struct Door {
    open: VecDeque<Entry>,
}

/// What the door says to a new connection.
pub enum Admission {
    /// Come in; the tokens are the connection's side of the accounting.
    Admit(Arc<AtomicBool>, oneshot::Receiver<()>),
    /// Full of connections that all spoke: closed at once.
    Refuse,
}

impl Door {
    pub fn admit(&mut self, max: usize) -> Admission {
        // Forget connections that have closed.
        self.open.retain(|e| !e.evict.is_closed());
        if self.open.len() >= max.max(1) {
            match self
                .open
                .iter()
                .position(|e| !e.spoke.load(Ordering::Relaxed))
            {
                // Dropping the sender closes the silent connection.
                Some(i) => drop(self.open.remove(i)),
                None => return Admission::Refuse,
            }
        }
        let spoke = Arc::new(AtomicBool::new(false));
        let (evict, rx) = oneshot::channel();
        self.open.push_back(Entry {
            spoke: spoke.clone(),
            evict,
        });
        Admission::Admit(spoke, rx)
    }

    pub fn len(&self) -> usize {
        self.open.iter().filter(|e| !e.evict.is_closed()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection under the door's rules: reads fail once it is evicted, silent past its
/// deadline, or never spoke within the handshake time.
pub struct Guarded<T> {
    inner: T,
    /// Set once a read failed for the door's reasons: every later read fails the same way.
    shut: Option<&'static str>,
    spoke: Arc<AtomicBool>,
    evicted: oneshot::Receiver<()>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
}

impl<T> Guarded<T> {
    pub fn new(
        inner: T,
        limits: &Limits,
        spoke: Arc<AtomicBool>,
        evicted: oneshot::Receiver<()>,
    ) -> Self {
        Guarded {
            inner,
            shut: None,
            spoke,
            evicted,
            deadline: Box::pin(tokio::time::sleep(limits.handshake)),
            idle: limits.idle,
        }
    }
}

fn closed(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, why.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(why) = self.shut {
            return Poll::Ready(Err(closed(why)));
        }
        if Pin::new(&mut self.evicted).poll(cx).is_ready() {
            let why = "closed to make room: never spoke while the coordinator was full";
            self.shut = Some(why);
            return Poll::Ready(Err(closed(why)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.spoke.store(true, Ordering::Relaxed);
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let why = if self.spoke.load(Ordering::Relaxed) {
                        "silent past the idle time-out"
                    } else {
                        "no handshake within the time-out"
                    };
                    self.shut = Some(why);
                    Poll::Ready(Err(closed(why)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

use std::future::Future as _;

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepted connections under `limits`, as a stream for `serve_with_incoming`.
pub fn guarded_incoming(
    listener: tokio::net::TcpListener,
    limits: Limits,
) -> impl tokio_stream::Stream<Item = std::io::Result<Guarded<tokio::net::TcpStream>>> {
    let door = Arc::new(Mutex::new(Door::default()));
    async_stream_from(move |tx| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, do not spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let admission = door.lock().expect("door").admit(limits.max);
            match admission {
                Admission::Admit(spoke, evicted) => {
                    if tx
                        .send(Ok(Guarded::new(stream, &limits, spoke, evicted)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Admission::Refuse => {
                    tracing::warn!(%peer, max = limits.max, "connection refused: the coordinator is at its connection limit");
                    drop(stream);
                }
            }
        }
    })
}

/// A stream fed by a task (no extra crate for a generator).
fn async_stream_from<T, F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Raises this process's open-file limit to its hard limit: each connection is a descriptor.
pub fn raise_open_files_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on this process with a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        l.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> (Arc<AtomicBool>, oneshot::Receiver<()>) {
        match a {
            Admission::Admit(s, r) => (s, r),
            Admission::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn a_full_door_evicts_the_oldest_silent_connection_and_keeps_those_that_spoke() {
        let mut door = Door::default();
        let (w_spoke, mut w_evict) = admitted(door.admit(3));
        w_spoke.store(true, Ordering::Relaxed); // a worker
        let (_s1, mut s1_evict) = admitted(door.admit(3));
        let (_s2, mut s2_evict) = admitted(door.admit(3));
        assert_eq!(door.len(), 3);
        // Full: the oldest silent one (s1) makes room; the worker stays.
        let (n_spoke, _n) = admitted(door.admit(3));
        assert!(s1_evict
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert!(s2_evict
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        assert!(w_evict
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty));
        // Everyone speaks: the next connection is refused rather than anyone evicted.
        n_spoke.store(true, Ordering::Relaxed);
        let (s3, _s3_evict) = admitted(door.admit(3)); // evicts s2
        s3.store(true, Ordering::Relaxed);
        assert!(matches!(door.admit(3), Admission::Refuse));
        // A connection that closes frees its place.
        drop(w_evict);
        assert_eq!(door.len(), 2);
        assert!(matches!(door.admit(3), Admission::Admit(..)));
    }
}
