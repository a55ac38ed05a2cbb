//! Positioned reads of one remote object with bounded range requests, for a
//! pass that needs only some of its bytes (index mode reads the headers, the
//! JSONs and the first bytes of each image, never the rest of the images).
//!
//! Each miss fetches one range starting at the wanted offset. Its length
//! adapts like a kernel's read-ahead: a miss just past the last range (within
//! one range length: small members read one after the other) doubles it, up
//! to [`MAX_SPAN`]; a miss further away (a seek over a large image) resets it
//! to [`MIN_SPAN`]. Small members thus cost few requests, large ones are
//! skipped without being transferred.

use std::io;

use bytes::Bytes;
use object_store::{GetOptions, GetRange};
use tokio::runtime::Handle;

use crate::location::{Purpose, StoreCache, Target, target};
use crate::{ReadOptions, RemoteError, is_remote, redact};

/// Length of a range after a seek (enough for a header and an image's head).
pub const MIN_SPAN: usize = 32 << 10;
/// Longest range fetched for reads that follow each other.
pub const MAX_SPAN: usize = 4 << 20;

/// One remote object read at chosen offsets; see the module doc.
pub struct RangedObject {
    url: String,
    target: Target,
    handle: Handle,
    options: ReadOptions,
    size: u64,
    e_tag: Option<String>,
    cache: Bytes,
    cache_start: u64,
    span: usize,
    bytes_fetched: u64,
    requests: u64,
}

impl std::fmt::Debug for RangedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangedObject")
            .field("url", &self.url)
            .field("size", &self.size)
            .field("bytes_fetched", &self.bytes_fetched)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

/// Opens `url` (a remote shard URL) for positioned reads: fetches its first
/// [`MIN_SPAN`] bytes, which also give its size and ETag. Call it from a
/// blocking thread; `handle`'s runtime does the I/O. Retries and backoff come
/// from `options` (its chunk sizes are not used).
pub fn open_ranged(
    url: &str,
    handle: Handle,
    options: &ReadOptions,
) -> Result<RangedObject, RemoteError> {
    if !is_remote(url) {
        return Err(RemoteError::invalid(
            url,
            "ranged reads are for remote objects",
        ));
    }
    let target = {
        let _runtime = handle.enter();
        target(url, Purpose::Read, &mut StoreCache::default())?
    };
    let mut obj = RangedObject {
        url: redact(url),
        target,
        handle,
        options: options.clone(),
        size: u64::MAX,
        e_tag: None,
        cache: Bytes::new(),
        cache_start: 0,
        span: MIN_SPAN,
        bytes_fetched: 0,
        requests: 0,
    };
    let first = obj.fetch(0, MIN_SPAN as u64)?;
    obj.cache = first;
    Ok(obj)
}

impl RangedObject {
    /// Size of the object, from the first response.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes transferred by all range requests so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.bytes_fetched
    }

    /// Range requests that brought data (retries included).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The URL, redacted for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Copies bytes at `pos` into `buf`: from the last range when it holds
    /// `pos`, else from a new one. Returns 0 only at or past the end; may
    /// return fewer bytes than asked where the last range ends.
    pub fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        if buf.is_empty() || pos >= self.size {
            return Ok(0);
        }
        let cache_end = self.cache_start + self.cache.len() as u64;
        if pos < self.cache_start || pos >= cache_end {
            let follows = pos >= cache_end && pos - cache_end < self.span as u64;
            self.span = if follows {
                (self.span * 2).min(MAX_SPAN)
            } else {
                MIN_SPAN
            };
            let len = (self.span as u64).max(buf.len() as u64);
            self.cache = self.fetch(pos, len).map_err(io::Error::from)?;
            self.cache_start = pos;
        }
        let from = (pos - self.cache_start) as usize;
        let n = buf.len().min(self.cache.len() - from);
        buf[..n].copy_from_slice(&self.cache[from..from + n]);
        Ok(n)
    }

    /// `len` bytes at `pos` (fewer at the end of the object), retrying
    /// transient failures with backoff; a changed ETag or size is final.
    fn fetch(&mut self, pos: u64, len: u64) -> Result<Bytes, RemoteError> {
        let end = pos.saturating_add(len).min(self.size);
        let handle = self.handle.clone();
        let mut failures = 0u32;
        loop {
            let error = match handle.block_on(self.attempt(pos, end)) {
                Ok(bytes) => {
                    self.requests += 1;
                    self.bytes_fetched += bytes.len() as u64;
                    return Ok(bytes);
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            failures += 1;
            if failures > self.options.max_retries {
                return Err(RemoteError::ReadFailed {
                    url: self.url.clone(),
                    offset: pos,
                    attempts: failures,
                    detail: error.to_string(),
                });
            }
            let delay = self.options.backoff(failures);
            tracing::warn!(url = %self.url, offset = pos, attempt = failures, delay_ms = delay.as_millis() as u64, error = %error, "range request failed; retrying");
            std::thread::sleep(delay);
        }
    }

    /// One range request for `pos..end`.
    async fn attempt(&mut self, pos: u64, end: u64) -> Result<Bytes, RemoteError> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(pos..end)),
            ..Default::default()
        };
        let idle = self.options.idle_timeout;
        let request = async {
            let result = self
                .target
                .store
                .get_opts(&self.target.path, options)
                .await?;
            let meta = result.meta.clone();
            let bytes = result.bytes().await?;
            Ok::<_, object_store::Error>((meta, bytes))
        };
        let (meta, bytes) = tokio::time::timeout(idle, request)
            .await
            .map_err(|_| RemoteError::Store {
                url: self.url.clone(),
                detail: format!("no answer for {idle:?} (idle timeout)"),
            })?
            .map_err(|e| RemoteError::from_store(&self.url, &e).with_hint(self.target.hint))?;
        self.check_same(&meta)?;
        let want = end.min(meta.size).saturating_sub(pos);
        if bytes.len() as u64 != want {
            return Err(RemoteError::Store {
                url: self.url.clone(),
                detail: format!(
                    "range at byte {pos} brought {} of {want} bytes",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Records the first response's size and ETag; later ones must agree.
    fn check_same(&mut self, meta: &object_store::ObjectMeta) -> Result<(), RemoteError> {
        if self.requests == 0 && self.size == u64::MAX {
            self.size = meta.size;
            self.e_tag.clone_from(&meta.e_tag);
            return Ok(());
        }
        match crate::reader::changed_object(&self.url, self.size, &self.e_tag, meta) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
