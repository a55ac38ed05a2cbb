//! GNU sparse files: the maps of the old GNU `S` type and of the PAX
//! formats 0.0, 0.1 and 1.0, and their validation.

use shardprep_core::issue::IssueKind;

use super::Refusal;
use super::pax::{SparseKeys, decimal};

/// Which encoding described the sparse map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFormat {
    /// Old GNU type `S`: the map in the header and extension blocks.
    OldGnu,
    /// PAX `GNU.sparse.offset`/`numbytes` pairs.
    Pax00,
    /// PAX `GNU.sparse.map`.
    Pax01,
    /// PAX `GNU.sparse.major=1`, `minor=0`: the map at the start of the data.
    Pax10,
}

/// One run of data in the expanded file; everything between runs is a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// Where the data of a sparse member goes in the expanded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub format: SparseFormat,
    /// The size of the expanded file.
    pub real_size: u64,
    /// Data runs, in order, not overlapping, within `real_size`.
    pub segments: Vec<Segment>,
    /// Stream offset of the first data byte (after a 1.0 map).
    pub data_start: u64,
}

pub(crate) fn invalid(detail: impl Into<String>) -> Refusal {
    Refusal {
        reason: IssueKind::InvalidSparseMap,
        detail: detail.into(),
    }
}

fn too_many(max: usize) -> Refusal {
    Refusal {
        reason: IssueKind::SparseMapTooLarge,
        detail: format!("the sparse map has more than {max} data runs"),
    }
}

/// The PAX sparse format named by the keys, or a refusal for unknown versions.
pub(crate) fn pax_format(keys: &SparseKeys) -> Result<Option<SparseFormat>, Refusal> {
    match (keys.major.as_deref(), keys.minor.as_deref()) {
        (Some(b"1"), Some(b"0")) => return Ok(Some(SparseFormat::Pax10)),
        (Some(major), minor) => {
            return Err(Refusal {
                reason: IssueKind::UnsupportedSparseVersion,
                detail: format!(
                    "GNU sparse format {}.{} is not known",
                    String::from_utf8_lossy(major),
                    String::from_utf8_lossy(minor.unwrap_or(b"?"))
                ),
            });
        }
        (None, _) => {}
    }
    Ok(if keys.map.is_some() {
        Some(SparseFormat::Pax01)
    } else if !keys.pairs.is_empty() {
        Some(SparseFormat::Pax00)
    } else {
        None
    })
}

/// The real size given by `GNU.sparse.size` / `realsize`.
pub(crate) fn real_size(keys: &SparseKeys) -> Result<u64, Refusal> {
    let raw = keys
        .real_size
        .as_deref()
        .ok_or_else(|| invalid("no GNU.sparse.size or GNU.sparse.realsize record"))?;
    decimal(raw).ok_or_else(|| invalid("the sparse real size is not a number"))
}

/// The runs of formats 0.0 and 0.1, from the PAX records.
pub(crate) fn pax0_segments(keys: &SparseKeys, max: usize) -> Result<Vec<Segment>, Refusal> {
    let numbers: Vec<&[u8]> = match &keys.map {
        Some(map) if map.is_empty() => Vec::new(),
        Some(map) => map.split(|&b| b == b',').collect(),
        None => {
            // 0.0: offset, numbytes, offset, numbytes ... in that order.
            let ordered = keys
                .pairs
                .iter()
                .enumerate()
                .all(|(i, (is_offset, _))| *is_offset == (i % 2 == 0));
            if !ordered {
                return Err(invalid(
                    "GNU.sparse.offset and numbytes records do not alternate",
                ));
            }
            keys.pairs.iter().map(|(_, v)| v.as_slice()).collect()
        }
    };
    if numbers.len() / 2 > max {
        return Err(too_many(max));
    }
    let segments = pairs(numbers.iter().map(|n| decimal(n)))?;
    if let Some(n) = keys.numblocks.as_deref()
        && decimal(n) != Some(segments.len() as u64)
    {
        return Err(invalid("GNU.sparse.numblocks does not match the map"));
    }
    Ok(segments)
}

fn pairs(numbers: impl Iterator<Item = Option<u64>>) -> Result<Vec<Segment>, Refusal> {
    let numbers: Vec<Option<u64>> = numbers.collect();
    if !numbers.len().is_multiple_of(2) {
        return Err(invalid("the sparse map has an odd count of numbers"));
    }
    numbers
        .chunks(2)
        .map(|c| match (c[0], c[1]) {
            (Some(offset), Some(len)) => Ok(Segment { offset, len }),
            _ => Err(invalid("a sparse map entry is not a number")),
        })
        .collect()
}

/// Reads the old GNU sparse entries (24 bytes each: offset, numbytes in
/// octal) of one header area; an entry starting with NUL ends the list.
/// Returns false once the list ended.
pub(crate) fn old_gnu_entries(
    area: &[u8],
    out: &mut Vec<Segment>,
    max: usize,
) -> Result<bool, Refusal> {
    for entry in area.chunks_exact(24) {
        if entry[0] == 0 {
            return Ok(false);
        }
        let num = |f: &[u8]| {
            super::header::parse_number(f)
                .ok()
                .and_then(|v| u64::try_from(v).ok())
        };
        match (num(&entry[..12]), num(&entry[12..])) {
            (Some(offset), Some(len)) if out.len() < max => out.push(Segment { offset, len }),
            (Some(_), Some(_)) => return Err(too_many(max)),
            _ => return Err(invalid("an old GNU sparse entry is not a number")),
        }
    }
    Ok(true)
}

/// Parses the format 1.0 map at the start of the data area, one 512-byte
/// block at a time: decimal numbers ended by `\n`, the count then the pairs.
#[derive(Debug, Default)]
pub(crate) struct MapParser {
    digits: Option<u64>,
    count: Option<u64>,
    numbers: Vec<u64>,
}

impl MapParser {
    /// Feeds one block; `Ok(Some(runs))` once the map is complete.
    pub fn feed(&mut self, block: &[u8], max: usize) -> Result<Option<Vec<Segment>>, Refusal> {
        for &b in block {
            match b {
                b'0'..=b'9' => {
                    let d = u64::from(b - b'0');
                    let v = self
                        .digits
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(d));
                    self.digits = Some(v.ok_or_else(|| invalid("a sparse map number overflows"))?);
                }
                b'\n' => {
                    let v = self
                        .digits
                        .take()
                        .ok_or_else(|| invalid("an empty line in the sparse map"))?;
                    if self.end_number(v, max)? {
                        return pairs(self.numbers.iter().map(|&n| Some(n))).map(Some);
                    }
                }
                _ => {
                    return Err(invalid(
                        "the sparse map holds a byte that is not a digit or newline",
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Records one number; true when the map is complete.
    fn end_number(&mut self, v: u64, max: usize) -> Result<bool, Refusal> {
        match self.count {
            None if v > max as u64 => Err(too_many(max)),
            None => {
                self.count = Some(v);
                Ok(v == 0)
            }
            Some(count) => {
                self.numbers.push(v);
                Ok(self.numbers.len() as u64 == count * 2)
            }
        }
    }
}

/// Checks a map against the expanded size and the data stored in the archive.
pub(crate) fn validate(segments: &[Segment], real_size: u64, stored: u64) -> Result<(), Refusal> {
    let mut end = 0u64;
    let mut total = 0u64;
    for s in segments {
        let seg_end = s
            .offset
            .checked_add(s.len)
            .ok_or_else(|| invalid("a sparse data run overflows"))?;
        if s.offset < end {
            return Err(invalid("sparse data runs overlap or are out of order"));
        }
        if seg_end > real_size {
            return Err(invalid(format!(
                "a sparse data run ends at {seg_end}, past the real size {real_size}"
            )));
        }
        end = seg_end;
        total += s.len;
    }
    if total != stored {
        return Err(invalid(format!(
            "the map holds {total} data bytes but the archive stores {stored}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_1_0_across_blocks() {
        let mut p = MapParser::default();
        assert_eq!(p.feed(b"2\n0\n5\n10", 8), Ok(None));
        let runs = p.feed(b"0\n3\n", 8).expect("valid").expect("complete");
        assert_eq!(
            runs,
            vec![
                Segment { offset: 0, len: 5 },
                Segment {
                    offset: 100,
                    len: 3
                }
            ]
        );
        assert!(MapParser::default().feed(b"9\n", 8).is_err());
        assert!(MapParser::default().feed(b"1\nx", 8).is_err());
    }

    #[test]
    fn validation() {
        let s = [
            Segment { offset: 0, len: 5 },
            Segment { offset: 10, len: 5 },
        ];
        assert!(validate(&s, 15, 10).is_ok());
        assert!(validate(&s, 14, 10).is_err());
        assert!(validate(&s, 15, 11).is_err());
        let back = [
            Segment { offset: 10, len: 5 },
            Segment { offset: 0, len: 5 },
        ];
        assert!(validate(&back, 15, 10).is_err());
    }
}
