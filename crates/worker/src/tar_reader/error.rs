//! Errors of the tar reader: input failures (retryable) apart from corrupt archives.

use std::io;

/// Why the reader stopped. [`TarError::Io`] is a failure of the input itself
/// (disk, network) and worth retrying; [`TarError::Corrupt`] is the archive.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error(
        "cannot read the input at byte offset {offset}{}: {source}; another attempt may succeed",
        place(member.as_deref(), None)
    )]
    Io {
        offset: u64,
        member: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("corrupt tar at byte offset {offset}{}: {what}", place(member.as_deref(), after.as_deref()))]
    Corrupt {
        offset: u64,
        /// The member whose header or data is bad, when its name is known.
        member: Option<String>,
        /// The last good member before the bad spot (for header damage).
        after: Option<String>,
        what: Corruption,
    },
}

/// What is wrong with a corrupt archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error(
        "header checksum mismatch: the header says {stored}, its bytes sum to {unsigned} (unsigned) or {signed} (signed); not a tar header"
    )]
    BadChecksum {
        stored: i64,
        unsigned: i64,
        signed: i64,
    },
    #[error("the header's checksum field {0:?} is not a number; not a tar header")]
    BadChecksumField(String),
    #[error("the archive ends inside a header ({got} of 512 bytes)")]
    TruncatedHeader { got: usize },
    #[error("the archive is truncated: member data ends after {got} of {expected} bytes")]
    TruncatedData { got: u64, expected: u64 },
    #[error(
        "the archive ends inside the block padding after the member's data ({missing} bytes missing)"
    )]
    TruncatedPadding { missing: u64 },
    #[error("negative size {0} in the header")]
    NegativeSize(i64),
    #[error("the {field} field {raw:?} is not a number")]
    BadNumber { field: &'static str, raw: String },
    #[error("{what} of {size} bytes is larger than the {cap}-byte limit")]
    ExtensionTooLarge {
        what: &'static str,
        size: u64,
        cap: u64,
    },
    #[error("malformed PAX extended header: {0}")]
    BadPax(String),
}

fn place(member: Option<&str>, after: Option<&str>) -> String {
    match (member, after) {
        (Some(m), _) => format!(", member {m:?}"),
        (None, Some(a)) => format!(", after member {a:?}"),
        (None, None) => String::new(),
    }
}

impl TarError {
    /// Whether another attempt at the same input may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TarError::Io { .. })
    }

    /// The byte offset in the stream where the problem was found.
    pub fn offset(&self) -> u64 {
        match self {
            TarError::Io { offset, .. } | TarError::Corrupt { offset, .. } => *offset,
        }
    }

    /// Recovers the typed error from an `io::Error` that an [`super::Entry`]'s
    /// `Read` impl returned; any other error is taken as an input failure.
    pub fn from_io(e: io::Error, offset: u64, member: Option<&str>) -> TarError {
        match e.downcast::<TarError>() {
            Ok(tar) => tar,
            Err(source) => TarError::Io {
                offset,
                member: member.map(str::to_string),
                source,
            },
        }
    }

    /// Wraps this error in an `io::Error` (for `Read` impls) that
    /// [`TarError::from_io`] unwraps again.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            TarError::Io { source, .. } => source.kind(),
            TarError::Corrupt {
                what: Corruption::TruncatedData { .. },
                ..
            } => io::ErrorKind::UnexpectedEof,
            TarError::Corrupt { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Why writing an entry to a file stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Tar(Box<TarError>),
    #[error("cannot write the extracted file: {0}")]
    Write(#[source] io::Error),
    #[error("cancelled")]
    Cancelled,
}

impl From<TarError> for ExtractError {
    fn from(e: TarError) -> Self {
        ExtractError::Tar(Box::new(e))
    }
}
