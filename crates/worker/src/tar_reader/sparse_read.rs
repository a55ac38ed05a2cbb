//! Reading the sparse maps of a member: old GNU `S` extension blocks and
//! PAX formats (the 1.0 map comes from the data area).

use std::io::Read;

use shardprep_core::issue::IssueKind;

use super::header::{self, BLOCK};
use super::pax::Pax;
use super::sparse::{self, MapParser, Segment, SparseFormat, SparseMap};
use super::{Corruption, EntryMeta, Refusal, TarError, TarReader};

/// Offsets in an old GNU header and its extension blocks.
const OLD_SPARSE: std::ops::Range<usize> = 386..482;
const OLD_IS_EXTENDED: usize = 482;
const OLD_REAL_SIZE: std::ops::Range<usize> = 483..495;
const EXT_SPARSE: std::ops::Range<usize> = 0..504;
const EXT_IS_EXTENDED: usize = 504;

impl<R: Read> TarReader<R> {
    /// Old GNU `S`: four runs in the header, 21 more per extension block.
    pub(super) fn old_gnu_sparse(
        &mut self,
        block: &[u8; 512],
        meta: &mut EntryMeta,
    ) -> Result<(), TarError> {
        let max = self.limits.max_sparse_segments;
        let mut segments = Vec::new();
        let mut refusal = sparse::old_gnu_entries(&block[OLD_SPARSE], &mut segments, max).err();
        let mut more = block[OLD_IS_EXTENDED] != 0;
        while more {
            let mut ext = [0u8; 512];
            let offset = self.pos;
            let got = self.fill(&mut ext, Some(&meta.name_lossy()))?;
            if got < ext.len() {
                return Err(TarError::Corrupt {
                    offset,
                    member: Some(meta.name_lossy()),
                    after: None,
                    what: Corruption::TruncatedHeader { got },
                });
            }
            if refusal.is_none() {
                refusal = sparse::old_gnu_entries(&ext[EXT_SPARSE], &mut segments, max).err();
            }
            more = ext[EXT_IS_EXTENDED] != 0;
            meta.data_offset += BLOCK;
        }
        let real = header::parse_number(&block[OLD_REAL_SIZE])
            .ok()
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| sparse::invalid("the old GNU real size is not a number"));
        let described = match (refusal, real) {
            (Some(r), _) | (None, Err(r)) => Err(r),
            (None, Ok(real)) => Ok((real, segments)),
        };
        self.finish_sparse(meta, SparseFormat::OldGnu, described, 0);
        Ok(())
    }

    /// PAX formats 0.0, 0.1 and 1.0 (`GNU.sparse.*` records).
    pub(super) fn pax_sparse(&mut self, pax: &Pax, meta: &mut EntryMeta) -> Result<(), TarError> {
        let keys = &pax.sparse;
        if let Some(name) = &keys.name {
            meta.name = name.clone();
            self.area.member = std::sync::Arc::from(meta.name_lossy());
        }
        let format = match sparse::pax_format(keys) {
            Ok(Some(format)) => format,
            Ok(None) => return Ok(()),
            Err(r) => {
                meta.refusal = Some(r);
                return Ok(());
            }
        };
        let real = match sparse::real_size(keys) {
            Ok(real) => real,
            Err(r) => {
                meta.refusal = Some(r);
                return Ok(());
            }
        };
        if real > self.limits.max_sparse_size {
            // Refused before reading a 1.0 map: its data is skipped unread.
            self.finish_sparse(meta, format, Ok((real, Vec::new())), 0);
            return Ok(());
        }
        let max = self.limits.max_sparse_segments;
        let (described, map_bytes) = match format {
            SparseFormat::Pax10 => match self.read_map_1_0()? {
                Ok((segments, used)) => (Ok((real, segments)), used),
                Err(r) => (Err(r), 0),
            },
            _ => (sparse::pax0_segments(keys, max).map(|s| (real, s)), 0),
        };
        self.finish_sparse(meta, format, described, map_bytes);
        Ok(())
    }

    /// Reads the 1.0 map from the start of the data area; returns the runs
    /// and the bytes the map took (whole blocks).
    fn read_map_1_0(&mut self) -> Result<Result<(Vec<Segment>, u64), Refusal>, TarError> {
        let max = self.limits.max_sparse_segments;
        let mut parser = MapParser::default();
        let mut used = 0u64;
        loop {
            if self.area.left == 0 {
                return Ok(Err(sparse::invalid(
                    "the sparse map runs past the member's data",
                )));
            }
            let mut block = [0u8; 512];
            let n = block.len().min(self.area.left as usize);
            let mut got = 0;
            while got < n {
                got += self.read_area(&mut block[got..n])?;
            }
            used += n as u64;
            match parser.feed(&block[..n], max) {
                Ok(Some(segments)) => return Ok(Ok((segments, used))),
                Ok(None) => {}
                Err(r) => return Ok(Err(r)),
            }
        }
    }

    /// Applies a sparse description to `meta`: the map, or a refusal
    /// (too large, or inconsistent with the stored data).
    fn finish_sparse(
        &self,
        meta: &mut EntryMeta,
        format: SparseFormat,
        described: Result<(u64, Vec<Segment>), Refusal>,
        map_bytes: u64,
    ) {
        let cap = self.limits.max_sparse_size;
        let checked = described.and_then(|(real, segments)| {
            meta.size = real;
            if real > cap {
                return Err(Refusal {
                    reason: IssueKind::SparseTooLarge,
                    detail: format!(
                        "the sparse file expands to {real} bytes, more than the {cap}-byte limit"
                    ),
                });
            }
            let stored = meta.stored_size.saturating_sub(map_bytes);
            sparse::validate(&segments, real, stored)?;
            Ok(SparseMap {
                format,
                real_size: real,
                segments,
                data_start: meta.data_offset + map_bytes,
            })
        });
        match checked {
            Ok(map) => meta.sparse = Some(map),
            Err(r) => meta.refusal = Some(r),
        }
    }
}
