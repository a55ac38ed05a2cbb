//! PAX extended header records (`x`, `g`) and the `GNU.sparse.*` keywords.

use super::error::Corruption;

/// The records of one PAX header that the reader acts on (last one wins per
/// keyword, except the repeated `GNU.sparse.offset`/`numbytes` of format 0.0).
#[derive(Debug, Default, Clone)]
pub(crate) struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub sparse: SparseKeys,
    /// Keywords given with an empty value, which POSIX reads as "delete the
    /// global default": the header's own field applies (as bsdtar does;
    /// GNU tar 1.34 rejects the member instead).
    pub cleared: Cleared,
}

/// Which of `path`, `linkpath`, `size` had an empty value.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Cleared {
    pub path: bool,
    pub linkpath: bool,
    pub size: bool,
}

/// `GNU.sparse.*` keywords as written by GNU tar (formats 0.0, 0.1, 1.0).
#[derive(Debug, Default, Clone)]
pub(crate) struct SparseKeys {
    pub major: Option<Vec<u8>>,
    pub minor: Option<Vec<u8>>,
    pub name: Option<Vec<u8>>,
    /// `GNU.sparse.size` (0.x) or `GNU.sparse.realsize` (1.0).
    pub real_size: Option<Vec<u8>>,
    pub numblocks: Option<Vec<u8>>,
    /// `GNU.sparse.map` (0.1): `offset,size,offset,size,...`.
    pub map: Option<Vec<u8>>,
    /// `GNU.sparse.offset` / `GNU.sparse.numbytes` values in order (0.0).
    pub pairs: Vec<(bool, Vec<u8>)>,
}

impl SparseKeys {
    /// Whether the header describes a GNU sparse file at all.
    pub fn present(&self) -> bool {
        self.map.is_some() || !self.pairs.is_empty() || self.major.is_some()
    }
}

impl Pax {
    /// Global records (`g`) are defaults under a member's own (`x`) records.
    /// A keyword given empty here does not take the global value.
    pub fn with_defaults(mut self, global: &Pax) -> Pax {
        let c = self.cleared;
        if !c.path {
            self.path = self.path.or_else(|| global.path.clone());
        }
        if !c.linkpath {
            self.linkpath = self.linkpath.or_else(|| global.linkpath.clone());
        }
        if !c.size {
            self.size = self.size.or(global.size);
        }
        self
    }
}

/// Parses the body of a PAX header: records `LEN KEY=VALUE\n`. `max_pairs`
/// bounds the 0.0 sparse pairs kept (more are counted, not stored).
pub(crate) fn parse(body: &[u8], max_pairs: usize) -> Result<Pax, Corruption> {
    let mut pax = Pax::default();
    let mut rest = body;
    while !rest.is_empty() && rest.iter().any(|&b| b != 0) {
        let (key, value, tail) = record(rest)?;
        apply(&mut pax, key, value, max_pairs)?;
        rest = tail;
    }
    Ok(pax)
}

/// Splits one record off `rest`: key, value, the remaining bytes.
/// One record split off the body: key, value, the bytes after it.
type Record<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn record(rest: &[u8]) -> Result<Record<'_>, Corruption> {
    let bad = |why: &str| Corruption::BadPax(why.to_string());
    let space = rest
        .iter()
        .position(|&b| b == b' ')
        .filter(|&i| i > 0 && i <= 20)
        .ok_or_else(|| bad("a record does not start with its length"))?;
    let len: usize = std::str::from_utf8(&rest[..space])
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("a record length is not a decimal number"))?;
    if len <= space + 1 || len > rest.len() {
        return Err(bad("a record length points outside the header"));
    }
    let rec = &rest[space + 1..len];
    let rec = rec
        .strip_suffix(b"\n")
        .ok_or_else(|| bad("a record does not end with a newline"))?;
    let eq = rec
        .iter()
        .position(|&b| b == b'=')
        .ok_or_else(|| bad("a record has no '='"))?;
    Ok((&rec[..eq], &rec[eq + 1..], &rest[len..]))
}

fn apply(pax: &mut Pax, key: &[u8], value: &[u8], max_pairs: usize) -> Result<(), Corruption> {
    let v = || Some(value.to_vec());
    // GNU tar keeps names as C strings: a NUL ends them (`a\0b` is `a`).
    let name = || Some(value.split(|&b| b == 0).next().unwrap_or_default().to_vec());
    let s = &mut pax.sparse;
    match key {
        // An empty value forgets the value and any global default.
        b"path" if value.is_empty() => (pax.path, pax.cleared.path) = (None, true),
        b"linkpath" if value.is_empty() => (pax.linkpath, pax.cleared.linkpath) = (None, true),
        b"size" if value.is_empty() => (pax.size, pax.cleared.size) = (None, true),
        b"path" => pax.path = name(),
        b"linkpath" => pax.linkpath = name(),
        b"size" => pax.size = Some(decimal(value).ok_or_else(|| bad_value("size", value))?),
        b"GNU.sparse.major" => s.major = v(),
        b"GNU.sparse.minor" => s.minor = v(),
        b"GNU.sparse.name" => s.name = name(),
        b"GNU.sparse.size" | b"GNU.sparse.realsize" => s.real_size = v(),
        b"GNU.sparse.numblocks" => s.numblocks = v(),
        b"GNU.sparse.map" => s.map = v(),
        // Kept up to the cap (plus one to tell "too many" later).
        b"GNU.sparse.offset" | b"GNU.sparse.numbytes"
            if s.pairs.len() <= max_pairs.saturating_mul(2) =>
        {
            s.pairs.push((key == b"GNU.sparse.offset", value.to_vec()));
        }
        _ => {}
    }
    Ok(())
}

fn bad_value(key: &str, value: &[u8]) -> Corruption {
    Corruption::BadPax(format!(
        "{key}={:?} is not a decimal number",
        String::from_utf8_lossy(value)
    ))
}

/// A plain non-negative decimal number (no sign, no spaces; leading zeros
/// allowed, as GNU tar and bsdtar read `size=000…999`).
pub(crate) fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let first = v.iter().position(|&b| b != b'0').unwrap_or(v.len() - 1);
    let digits = &v[first..];
    if digits.len() > 20 {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_last_wins_and_sparse_pairs_in_order() {
        let body = b"14 path=a.txt\n14 path=b.txt\n26 GNU.sparse.offset=4096\n25 GNU.sparse.numbytes=7\n11 size=42\n";
        let pax = parse(body, 16).expect("valid records");
        assert_eq!(pax.path.as_deref(), Some(&b"b.txt"[..]));
        assert_eq!(pax.size, Some(42));
        assert_eq!(pax.sparse.pairs.len(), 2);
        assert!(pax.sparse.pairs[0].0 && !pax.sparse.pairs[1].0);
    }

    #[test]
    fn names_end_at_a_nul_as_in_gnu_tar() {
        let pax = parse(b"16 path=ab\0cd.x\n15 linkpath=\0l\n", 16).expect("valid records");
        assert_eq!(pax.path.as_deref(), Some(&b"ab"[..]));
        assert_eq!(pax.linkpath.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn leading_zeros_are_read() {
        let pax = parse(b"33 size=000000000000000000000999\n", 16).expect("valid");
        assert_eq!(pax.size, Some(999));
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"000"), Some(0));
        assert_eq!(decimal(b"184467440737095516150"), None);
    }

    #[test]
    fn empty_values_clear_the_global_default() {
        let global = parse(b"9 path=g\n9 size=7\n", 16).expect("valid");
        let local = parse(b"8 path=\n8 size=\n", 16).expect("valid");
        let merged = local.with_defaults(&global);
        assert_eq!(merged.path, None);
        assert_eq!(merged.size, None);
        let plain = parse(b"", 16).expect("valid").with_defaults(&global);
        assert_eq!(plain.path.as_deref(), Some(&b"g"[..]));
        assert_eq!(plain.size, Some(7));
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(parse(b"99 path=a\n", 16).is_err());
        assert!(parse(b"x path=a\n", 16).is_err());
        assert!(parse(b"10 path=ab", 16).is_err());
        assert!(parse(b"12 size=-1\n", 16).is_err());
        assert!(parse(b"", 16).is_ok());
        assert!(parse(b"\0\0\0", 16).is_ok());
    }
}
