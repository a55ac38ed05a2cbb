//! The tar stream of a shard: bytes counted as they are read, a failure of
//! the input itself (disk, network) told apart from a corrupt tar, and the
//! checks made before anything is written.

use shardprep_core::index_format::IndexFormats;
use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ShardError;
use crate::fragment::FragmentError;
use crate::tar_reader::TarError;

/// Read buffer of the tar stream.
const READ_BUF: usize = 256 << 10;

/// The shard being read, as errors name it: its name, and the failure of
/// the input itself if one happened (recorded by the reader).
pub(crate) struct ShardSource {
    shard: String,
    failure: RefCell<Option<String>>,
}

impl ShardSource {
    pub(crate) fn new(shard: &str) -> Self {
        ShardSource {
            shard: shard.to_string(),
            failure: RefCell::new(None),
        }
    }

    /// Wraps `input` in a counting, buffered reader and checks that it
    /// starts like a plain tar.
    pub(super) fn reader<'a, R: Read>(
        &'a self,
        input: R,
        count: &'a AtomicU64,
    ) -> Result<BufReader<Counting<'a, R>>, ShardError> {
        let mut reader = BufReader::with_capacity(
            READ_BUF,
            Counting {
                inner: input,
                count,
                failure: &self.failure,
            },
        );
        let head = reader
            .fill_buf()
            .map_err(|e| self.corrupt(format!("read error: {e}"), 0, None))?;
        self.check_head(head)?;
        Ok(reader)
    }

    /// Refuses an input whose first bytes (`head`) are no plain tar: an
    /// empty or a gzip-compressed file.
    pub(crate) fn check_head(&self, head: &[u8]) -> Result<(), ShardError> {
        if head.is_empty() {
            return Err(self.corrupt("the file is empty, not a tar archive".into(), 0, None));
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            return Err(self.corrupt(
                "the file is gzip-compressed; shardprep reads plain tar shards: decompress it (gunzip) first".into(),
                0,
                None,
            ));
        }
        Ok(())
    }

    /// The stream cannot be read as a tar at `offset`. A failure of the
    /// input (disk, network) is worth retrying; a bad tar is not.
    pub(crate) fn corrupt(&self, what: String, offset: u64, member: Option<&str>) -> ShardError {
        match self.failure.borrow().clone() {
            Some(why) => ShardError::Read {
                shard: self.shard.clone(),
                what: why,
                offset,
            },
            None => ShardError::Corrupt {
                shard: self.shard.clone(),
                what,
                offset,
                member: member.map(str::to_string),
            },
        }
    }

    /// A tar reader error: an input failure is retryable, damage is not.
    pub(crate) fn tar_error(&self, e: TarError) -> ShardError {
        match e {
            TarError::Io { offset, source, .. } => ShardError::Read {
                shard: self.shard.clone(),
                what: source.to_string(),
                offset,
            },
            TarError::Corrupt {
                offset,
                member,
                after,
                what,
            } => {
                // Damage in a header: the words the docs and tests look for.
                let what = match (&member, after) {
                    (Some(_), _) => what.to_string(),
                    (None, Some(a)) => format!("broken tar header after member {a:?}: {what}"),
                    (None, None) => format!("broken tar header: {what}"),
                };
                self.corrupt(what, offset, member.as_deref())
            }
        }
    }

    /// Writing `path` failed (the disk, not the member).
    pub(crate) fn write_error(&self, path: &Path, source: io::Error) -> ShardError {
        ShardError::Write {
            shard: self.shard.clone(),
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn fragment_error(&self, source: FragmentError) -> ShardError {
        ShardError::Fragment {
            shard: self.shard.clone(),
            source,
        }
    }

    /// energon, DALI and wids open the tar by path: a remote shard has none.
    pub(crate) fn formats_need_local(&self, formats: &IndexFormats) -> ShardError {
        let why = format!(
            "--index-format {formats} needs local shards: their readers open the tar by path"
        );
        ShardError::Formats {
            shard: self.shard.clone(),
            source: shardprep_formats::FormatsError::Bad(why),
        }
    }

    pub(crate) fn cancelled(&self) -> ShardError {
        ShardError::Cancelled(self.shard.clone())
    }
}

/// A reader that counts the bytes it hands out, and remembers a failure of
/// the input itself so that it is not mistaken for a corrupt tar.
pub(crate) struct Counting<'a, R> {
    inner: R,
    count: &'a AtomicU64,
    failure: &'a RefCell<Option<String>>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    *self.failure.borrow_mut() = Some(e.to_string());
                }
                Err(e)
            }
        }
    }
}
