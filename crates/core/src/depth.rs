//! How closely an output is judged against what its shards wrote: `verify`
//! and a re-run take the same depth from the same flag (`--deep`), so they
//! find the same damage.

/// The depth of a check of an output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CheckDepth {
    /// Presence and size of every file a shard wrote (one `stat` each), the
    /// tables' footers and row counts, each index file's size: finds files
    /// deleted, truncated or grown.
    #[default]
    Sizes,
    /// Also the bytes: every written file and index file against its
    /// recorded CRC-32, each caption file against its row (reads them all):
    /// finds changes that keep the size.
    Checksums,
}

impl CheckDepth {
    /// The depth a `--deep` flag asks for.
    pub fn from_deep(deep: bool) -> Self {
        if deep {
            CheckDepth::Checksums
        } else {
            CheckDepth::Sizes
        }
    }

    /// Whether file contents are read and compared.
    pub fn reads_bytes(self) -> bool {
        self == CheckDepth::Checksums
    }

    /// How the depth is named to users.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckDepth::Sizes => "sizes",
            CheckDepth::Checksums => "checksums (--deep)",
        }
    }
}
