//! [`FormatsSink`]: the indexes of the other trainers (`--index-format
//! energon,dali,wids`) as an output of the shard walk, beside webshart's.
//!
//! It records every member in tar order (what energon and DALI group into
//! samples, whatever the walk makes of them) and the images the walk wrote
//! a row for (the samples every format keeps), then hands that neutral
//! input to [`shardprep_formats::write_attempt`], which writes the shard's
//! pieces into `tmp/` beside the attempt's other files; the coordinator
//! commits them with the shard.

use std::path::Path;

use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_formats::{MemberKind, ShardInput, TarMember};

use crate::shard::ShardError;
use crate::shard::output::{End, KeptRow, Output, WithdrawnRow};
use crate::tar_reader::{EntryKind, EntryMeta};

/// The other formats' input of one shard being built.
pub(crate) struct FormatsSink {
    formats: IndexFormats,
    input: ShardInput,
}

impl FormatsSink {
    /// The formats of the tar at `tar_path` (`filesize` bytes), named
    /// `shard` in the job.
    pub(crate) fn new(
        formats: IndexFormats,
        shard: &str,
        tar_path: &Path,
        filesize: u64,
    ) -> Result<Self, ShardError> {
        // Readers open the tar by this path: absolute, links resolved.
        let tar_path = std::fs::canonicalize(tar_path).map_err(|e| ShardError::Open {
            shard: shard.to_string(),
            path: tar_path.display().to_string(),
            source: e,
        })?;
        let input = ShardInput::new(shard.to_string(), tar_path, filesize);
        Ok(FormatsSink { formats, input })
    }
}

impl Output for FormatsSink {
    type Done = ();

    fn entry(&mut self, m: &EntryMeta) {
        let kind = match (m.kind, &m.sparse) {
            (EntryKind::File, None) => MemberKind::Regular,
            (EntryKind::File, Some(_)) => MemberKind::Sparse,
            _ => MemberKind::Other,
        };
        let member = TarMember {
            name: &m.name,
            start_offset: m.start_offset,
            header_offset: m.header_offset,
            data_offset: m.data_offset,
            size: m.size,
            kind,
            raw_header_name: match self.formats.contains(IndexFormat::Wids) {
                true => Some(&m.header_name),
                false => None,
            },
            typeflag: m.typeflag,
        };
        self.input.push(member, m.end_offset());
    }

    fn row(&mut self, r: &KeptRow<'_>) {
        self.input.add_row_image(&r.row.filename);
    }

    /// Rows come here in their order, so a row's number is its place in
    /// `input`'s list.
    fn row_withdrawn(&mut self, w: &WithdrawnRow<'_>) {
        self.input.withdraw_row_image(w.number as usize);
    }

    fn finish(self, end: &mut End<'_>) -> Result<(), ShardError> {
        let shard = &self.input.shard_name;
        let tmp = end.attempt.dir();
        let lease = end.attempt.lease_id();
        shardprep_formats::write_attempt(tmp, lease, &self.formats, &self.input).map_err(
            |source| ShardError::Formats {
                shard: shard.clone(),
                source,
            },
        )?;
        tracing::debug!(shard = %shard, formats = %self.formats, members = self.input.members().len(), "index formats built");
        Ok(())
    }
}
