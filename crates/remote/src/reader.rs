//! Streaming one remote object into a blocking `Read` with bounded read-ahead and resumption.

use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::location::{Purpose, StoreCache, Target, target};
use crate::{RemoteError, is_remote, redact};

/// Tuning of [`open_blocking_with`]. The defaults keep at most
/// `(read_ahead_chunks + 2) × chunk_size` = 6 MiB of a shard in memory per reader.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Size of the chunks handed from the I/O task to the reader (1 MiB).
    pub chunk_size: usize,
    /// Chunks buffered ahead of the reader (4); the download pauses when they are full.
    pub read_ahead_chunks: usize,
    /// Failed requests in a row (without 1 chunk of progress in between) before the read
    /// fails (5). Each is followed by a range request from the last byte delivered.
    pub max_retries: u32,
    /// Wait before the first retry (500 ms), doubled for each further one.
    pub initial_backoff: Duration,
    /// Longest wait between retries (8 s).
    pub max_backoff: Duration,
    /// No byte from the network for this long counts as a dropped connection (60 s); time
    /// spent waiting for the reader to make room does not count.
    pub idle_timeout: Duration,
}

impl ReadOptions {
    /// The wait before retry number `failures` (1 for the first):
    /// `initial_backoff` doubled each time, at most `max_backoff`.
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }
}

/// The error when a response's size or ETag differs from the first one's
/// (`None` when they agree; an ETag missing on either side is not compared).
pub(crate) fn changed_object(
    url: &str,
    first_size: u64,
    first_etag: &Option<String>,
    now: &ObjectMeta,
) -> Option<RemoteError> {
    let etag_changed = first_etag.is_some() && now.e_tag.is_some() && *first_etag != now.e_tag;
    (etag_changed || now.size != first_size).then(|| RemoteError::Changed {
        url: url.to_string(),
        detail: format!(
            "size {first_size} → {}, etag {first_etag:?} → {:?}",
            now.size, now.e_tag
        ),
    })
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            chunk_size: 1 << 20,
            read_ahead_chunks: 4,
            max_retries: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A shard being read: `std::io::Read + Send`, counting the bytes it returned.
///
/// A remote object is fetched by a task on the runtime given to [`open_blocking`], which
/// stays at most [`ReadOptions::read_ahead_chunks`] chunks ahead of the reader. Dropping the
/// reader cancels the download.
pub struct RemoteReader {
    url: String,
    size: u64,
    bytes_read: u64,
    inner: Inner,
}

enum Inner {
    Local(std::fs::File),
    Remote(Box<RemoteState>),
}

struct RemoteState {
    rx: mpsc::Receiver<Result<Bytes, RemoteError>>,
    current: Bytes,
    task: tokio::task::AbortHandle,
    finished: bool,
    /// Kind and message of a failure, repeated by later reads.
    failed: Option<(io::ErrorKind, String)>,
}

impl std::fmt::Debug for RemoteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReader")
            .field("url", &self.url)
            .field("size", &self.size)
            .field("bytes_read", &self.bytes_read)
            .finish_non_exhaustive()
    }
}

impl RemoteReader {
    /// Bytes returned by `read` so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Size of the object, from the first response.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The URL being read, redacted for messages.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for RemoteReader {
    fn drop(&mut self) {
        if let Inner::Remote(state) = &self.inner {
            state.task.abort();
        }
    }
}

impl Read for RemoteReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let state = match &mut self.inner {
            Inner::Local(file) => {
                let n = file.read(buf)?;
                self.bytes_read += n as u64;
                return Ok(n);
            }
            Inner::Remote(state) => state,
        };
        loop {
            if !state.current.is_empty() {
                let n = buf.len().min(state.current.len());
                buf[..n].copy_from_slice(&state.current[..n]);
                state.current.advance(n);
                self.bytes_read += n as u64;
                return Ok(n);
            }
            if let Some((kind, message)) = &state.failed {
                return Err(io::Error::new(*kind, message.clone()));
            }
            if state.finished {
                return Ok(0);
            }
            match state.rx.blocking_recv() {
                Some(Ok(chunk)) => state.current = chunk,
                Some(Err(e)) => {
                    let e = io::Error::from(e);
                    state.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                None if self.bytes_read == self.size => state.finished = true,
                None => {
                    // The task ended without an error (runtime shut down): never a silent
                    // truncation.
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: stream ended at byte {} of {}",
                            self.url, self.bytes_read, self.size
                        ),
                    );
                    state.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
    }
}

/// Open `url` for reading with the default [`ReadOptions`]; see [`open_blocking_with`].
pub fn open_blocking(url: &str, handle: Handle) -> Result<RemoteReader, RemoteError> {
    open_blocking_with(url, handle, &ReadOptions::default())
}

/// Open `url` (a shard URL of a [`crate::Listing`], or a local path) for reading.
///
/// Call it on a blocking thread (e.g. inside `spawn_blocking`), never from async code:
/// it waits for the first response, which `handle`'s runtime fetches. The first request's
/// failure (404, 403, ...) is returned here; later failures come out of `read` as
/// `io::Error`s naming the URL. A dropped connection, a 5xx or an idle timeout is retried with
/// a range request from the last byte delivered, logged with `tracing::warn!`, up to
/// [`ReadOptions::max_retries`] times in a row with exponential backoff. A changed ETag or
/// size between two requests fails the read.
pub fn open_blocking_with(
    url: &str,
    handle: Handle,
    options: &ReadOptions,
) -> Result<RemoteReader, RemoteError> {
    let shown = redact(url);
    if !is_remote(url) {
        let path = url.strip_prefix("file://").unwrap_or(url);
        let io_err = |source| RemoteError::Io {
            path: path.to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        return Ok(RemoteReader {
            url: shown,
            size,
            bytes_read: 0,
            inner: Inner::Local(file),
        });
    }
    let options = ReadOptions {
        chunk_size: options.chunk_size.max(1),
        read_ahead_chunks: options.read_ahead_chunks.max(1),
        ..options.clone()
    };
    let (tx, rx) = mpsc::channel(options.read_ahead_chunks);
    let (open_tx, open_rx) = oneshot::channel();
    let task = {
        let _runtime = handle.enter();
        let target = target(url, Purpose::Read, &mut StoreCache::default())?;
        handle.spawn(pump(target, shown.clone(), options, open_tx, tx))
    };
    let meta = match open_rx.blocking_recv() {
        Ok(Ok(meta)) => meta,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(RemoteError::Store {
                url: shown,
                detail:
                    "the reader task stopped before the first response (runtime shutting down?)"
                        .into(),
            });
        }
    };
    Ok(RemoteReader {
        url: shown,
        size: meta.size,
        bytes_read: 0,
        inner: Inner::Remote(Box::new(RemoteState {
            rx,
            current: Bytes::new(),
            task: task.abort_handle(),
            finished: false,
            failed: None,
        })),
    })
}

/// Why one request of a read ended early.
enum Interrupted {
    /// Worth a range request from the last byte delivered.
    Retry(RemoteError),
    /// Final (404, 403, object changed, range not supported, ...).
    Fatal(RemoteError),
    /// The reader was dropped.
    Cancelled,
}

struct Pump {
    target: Target,
    url: String,
    options: ReadOptions,
    open_tx: Option<oneshot::Sender<Result<ObjectMeta, RemoteError>>>,
    tx: mpsc::Sender<Result<Bytes, RemoteError>>,
    meta: Option<ObjectMeta>,
    delivered: u64,
}

async fn pump(
    target: Target,
    url: String,
    options: ReadOptions,
    open_tx: oneshot::Sender<Result<ObjectMeta, RemoteError>>,
    tx: mpsc::Sender<Result<Bytes, RemoteError>>,
) {
    let mut pump = Pump {
        target,
        url,
        options,
        open_tx: Some(open_tx),
        tx,
        meta: None,
        delivered: 0,
    };
    let mut failures = 0u32;
    loop {
        let start = pump.delivered;
        let error = match pump.attempt().await {
            Ok(()) => return,
            Err(Interrupted::Cancelled) => return,
            Err(Interrupted::Fatal(e)) => return pump.fail(e).await,
            Err(Interrupted::Retry(e)) => e,
        };
        if pump.delivered - start >= pump.options.chunk_size as u64 {
            failures = 0;
        }
        failures += 1;
        if failures > pump.options.max_retries {
            let e = RemoteError::ReadFailed {
                url: pump.url.clone(),
                offset: pump.delivered,
                attempts: failures,
                detail: match error {
                    RemoteError::Store { detail, .. } => detail,
                    other => other.to_string(),
                },
            };
            return pump.fail(e).await;
        }
        let delay = pump.options.backoff(failures);
        tracing::warn!(
            url = %pump.url,
            offset = pump.delivered,
            attempt = failures,
            max_retries = pump.options.max_retries,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "remote read interrupted; resuming with a range request"
        );
        tokio::time::sleep(delay).await;
    }
}

impl Pump {
    /// One GET (a range GET after the first), streamed into the channel.
    async fn attempt(&mut self) -> Result<(), Interrupted> {
        let options = GetOptions {
            range: (self.delivered > 0).then_some(GetRange::Offset(self.delivered)),
            ..Default::default()
        };
        let idle = self.options.idle_timeout;
        let request = self.target.store.get_opts(&self.target.path, options);
        let result = tokio::time::timeout(idle, request)
            .await
            .map_err(|_| Interrupted::Retry(self.idle_error()))?
            .map_err(|e| {
                let e = RemoteError::from_store(&self.url, &e).with_hint(self.target.hint);
                if e.is_transient() {
                    Interrupted::Retry(e)
                } else {
                    Interrupted::Fatal(e)
                }
            })?;
        match &self.meta {
            None => {
                self.meta = Some(result.meta.clone());
                if let Some(open_tx) = self.open_tx.take()
                    && open_tx.send(Ok(result.meta.clone())).is_err()
                {
                    return Err(Interrupted::Cancelled);
                }
            }
            Some(first) => {
                if let Some(e) = changed_object(&self.url, first.size, &first.e_tag, &result.meta) {
                    return Err(Interrupted::Fatal(e));
                }
            }
        }
        let size = result.meta.size;
        let chunk = self.options.chunk_size;
        let mut stream = result.into_stream();
        let mut buf = BytesMut::new();
        let outcome = loop {
            // Only the wait for the network counts, not the wait for the consumer (`send`).
            let Ok(next) = tokio::time::timeout(idle, stream.next()).await else {
                break Err(Interrupted::Retry(self.idle_error()));
            };
            match next {
                Some(Ok(bytes)) => {
                    buf.extend_from_slice(&bytes);
                    while buf.len() >= chunk {
                        let piece = buf.split_to(chunk).freeze();
                        self.send(piece).await?;
                    }
                }
                Some(Err(e)) => {
                    break Err(Interrupted::Retry(RemoteError::Store {
                        url: self.url.clone(),
                        detail: crate::error::scrub(&crate::error::error_chain(&e)),
                    }));
                }
                None => break Ok(()),
            }
        };
        if !buf.is_empty() {
            self.send(buf.freeze()).await?;
        }
        outcome?;
        if self.delivered < size {
            return Err(Interrupted::Retry(RemoteError::Store {
                url: self.url.clone(),
                detail: format!("body ended at byte {} of {size}", self.delivered),
            }));
        }
        Ok(())
    }

    fn idle_error(&self) -> RemoteError {
        RemoteError::Store {
            url: self.url.clone(),
            detail: format!("no data for {:?} (idle timeout)", self.options.idle_timeout),
        }
    }

    async fn send(&mut self, piece: Bytes) -> Result<(), Interrupted> {
        let len = piece.len() as u64;
        self.tx
            .send(Ok(piece))
            .await
            .map_err(|_| Interrupted::Cancelled)?;
        self.delivered += len;
        Ok(())
    }

    /// Report a final error: to `open_blocking` before the first response, else to the reader
    /// after the chunks already queued.
    async fn fail(mut self, error: RemoteError) {
        match self.open_tx.take() {
            Some(open_tx) => {
                let _ = open_tx.send(Err(error));
            }
            None => {
                let _ = self.tx.send(Err(error)).await;
            }
        }
    }
}
