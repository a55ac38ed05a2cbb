//! Raw header fields as GNU tar reads them: numbers (octal or base-256,
//! signed), the checksum (unsigned or signed sum), entry kinds.

use super::error::Corruption;

/// One tar block.
pub const BLOCK: u64 = 512;

/// Offsets of the ustar fields this module reads itself.
pub(crate) const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
pub(crate) const TYPEFLAG: usize = 156;

/// A numeric field that is neither octal nor base-256.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadNumber;

/// Parses a numeric field: base-256 when the first byte has its high bit set
/// (0xff: negative, two's complement), else octal with optional leading
/// spaces and a NUL or space terminator. An empty field is 0.
pub(crate) fn parse_number(field: &[u8]) -> Result<i128, BadNumber> {
    match field.first() {
        Some(b) if b & 0x80 != 0 => parse_base256(field),
        _ => parse_octal(field),
    }
}

fn parse_base256(field: &[u8]) -> Result<i128, BadNumber> {
    // 12-byte fields hold 95 bits; longer ones must fit an i128 anyway.
    if field.len() > 15 {
        return Err(BadNumber);
    }
    let negative = field[0] == 0xff;
    let mut v: i128 = if negative {
        -1
    } else {
        i128::from(field[0] & 0x7f)
    };
    for &b in &field[1..] {
        v = (v << 8) | i128::from(b);
    }
    if negative && v >= 0 {
        return Err(BadNumber);
    }
    Ok(v)
}

fn parse_octal(field: &[u8]) -> Result<i128, BadNumber> {
    let mut rest = field;
    while let [b' ', tail @ ..] = rest {
        rest = tail;
    }
    let mut v: i128 = 0;
    let mut digits = 0;
    for &b in rest {
        match b {
            b'0'..=b'7' if digits < 40 => {
                v = v * 8 + i128::from(b - b'0');
                digits += 1;
            }
            b'0'..=b'7' => return Err(BadNumber),
            b' ' | 0 => break,
            _ => return Err(BadNumber),
        }
    }
    Ok(v)
}

/// The size field as an unsigned count of bytes.
pub(crate) fn size_field(block: &[u8; 512]) -> Result<u64, Corruption> {
    let raw = &block[SIZE];
    match parse_number(raw) {
        Ok(v) if v < 0 => Err(Corruption::NegativeSize(
            i64::try_from(v).unwrap_or(i64::MIN),
        )),
        Ok(v) => u64::try_from(v).map_err(|_| bad_number("size", raw)),
        Err(BadNumber) => Err(bad_number("size", raw)),
    }
}

pub(crate) fn bad_number(field: &'static str, raw: &[u8]) -> Corruption {
    Corruption::BadNumber {
        field,
        raw: String::from_utf8_lossy(raw).into_owned(),
    }
}

/// Checks the header checksum; GNU tar accepts the sum over unsigned or over
/// signed bytes (old HP-UX and V7 writers summed signed chars).
pub(crate) fn verify_checksum(block: &[u8; 512]) -> Result<(), Corruption> {
    let raw = &block[CHKSUM];
    let stored = parse_number(raw)
        .map_err(|_| Corruption::BadChecksumField(String::from_utf8_lossy(raw).into_owned()))?;
    // Over unsigned bytes (POSIX) or, as old tars wrote it, signed ones; the
    // signed sum only when the unsigned one, which nearly every header
    // matches, does not.
    let unsigned = header_sum(block, i32::from);
    let stored = i64::try_from(stored).unwrap_or(i64::MAX);
    if stored == unsigned {
        return Ok(());
    }
    let signed = header_sum(block, |b| i32::from(b as i8));
    if stored == signed {
        Ok(())
    } else {
        Err(Corruption::BadChecksum {
            stored,
            unsigned,
            signed,
        })
    }
}

/// The sum of `block`'s bytes, each read by `byte`, with the checksum field
/// read as spaces. Summed whole and then corrected, so the loop has no branch
/// per byte; `byte` is inlined, so the loop is vectorized (|sum| < 2^17).
fn header_sum(block: &[u8; 512], byte: impl Fn(u8) -> i32) -> i64 {
    let all: i32 = block.iter().map(|&b| byte(b)).sum();
    let field: i32 = block[CHKSUM].iter().map(|&b| byte(b)).sum();
    i64::from(all - field + CHKSUM.len() as i32 * byte(b' '))
}

/// What a member is once extension headers are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (types `0`, `\0`, `7`, and old GNU sparse `S`).
    File,
    /// A directory (`5`, GNU dumpdir `D`, or a regular type whose name ends in `/`).
    Directory,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A GNU volume label (`V`): its data is skipped; `tar xf` writes nothing.
    VolumeLabel,
    /// The continuation of a file from another volume (`M`): `tar xf`
    /// refuses it ("continued from another volume") and goes on.
    MultiVolume,
    /// Any other type flag (GNU tar extracts unknown types as regular files).
    Other(u8),
}

impl EntryKind {
    /// Classifies a type flag as GNU tar does; `name` is the final name.
    pub(crate) fn classify(typeflag: u8, name: &[u8]) -> EntryKind {
        match typeflag {
            b'0' | 0 | b'7' if name.ends_with(b"/") => EntryKind::Directory,
            b'0' | 0 | b'7' | b'S' => EntryKind::File,
            b'5' | b'D' => EntryKind::Directory,
            b'1' => EntryKind::HardLink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDevice,
            b'4' => EntryKind::BlockDevice,
            b'6' => EntryKind::Fifo,
            b'V' => EntryKind::VolumeLabel,
            b'M' => EntryKind::MultiVolume,
            other => EntryKind::Other(other),
        }
    }

    /// Whether the archive holds data after the header for this type flag:
    /// GNU tar, bsdtar, Go and Python ignore the size of links, devices,
    /// FIFOs and directories (except GNU dumpdirs, whose data is the listing).
    pub(crate) fn has_data(self, typeflag: u8) -> bool {
        match self {
            EntryKind::File
            | EntryKind::Other(_)
            | EntryKind::VolumeLabel
            | EntryKind::MultiVolume => true,
            EntryKind::Directory => typeflag == b'D',
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_number(b"  17 \0\0\0"), Ok(0o17));
        assert_eq!(parse_number(b"\0\0\0\0"), Ok(0));
        assert_eq!(parse_number(b"12x4"), Err(BadNumber));
        let mut pos = [0u8; 12];
        pos[0] = 0x80;
        pos[11] = 0x02;
        pos[10] = 0x01;
        assert_eq!(parse_number(&pos), Ok(0x0102));
        assert_eq!(parse_number(&[0xff; 12]), Ok(-1));
        let mut neg = [0xff; 12];
        neg[11] = 0xfe;
        assert_eq!(parse_number(&neg), Ok(-2));
    }

    #[test]
    fn negative_size_is_named() {
        let mut block = [0u8; 512];
        block[SIZE].copy_from_slice(&[0xff; 12]);
        assert_eq!(size_field(&block), Err(Corruption::NegativeSize(-1)));
    }

    #[test]
    fn trailing_slash_makes_a_directory() {
        assert_eq!(EntryKind::classify(0, b"d/"), EntryKind::Directory);
        assert_eq!(EntryKind::classify(b'0', b"d"), EntryKind::File);
        assert!(!EntryKind::classify(b'2', b"l").has_data(b'2'));
        assert!(EntryKind::classify(b'D', b"d").has_data(b'D'));
    }
}
