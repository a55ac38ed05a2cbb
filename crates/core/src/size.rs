//! Byte sizes for flags (`4096`, `64M`, `500GiB`, `1T`: binary multiples)
//! and the default cap on a sparse member's expanded size.

/// Default of `--max-sparse-size`: sparse members expanding past 1 TiB are refused.
pub const DEFAULT_MAX_SPARSE_SIZE: u64 = 1 << 40;

/// Parses a byte count: digits, then optionally `K`, `M`, `G` or `T`
/// (powers of 1024), optionally followed by `iB` or `B`.
pub fn parse_bytes(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let bad = || format!("invalid size {input:?}: use bytes, or e.g. 64M, 500GiB, 1T");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {input:?}: more than 2^64 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1TiB"), Ok(DEFAULT_MAX_SPARSE_SIZE));
        assert_eq!(parse_bytes("2gb"), Ok(2 << 30));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("1.5G").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }
}
