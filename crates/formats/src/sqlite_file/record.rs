//! SQLite's varints and records (the "Record Format" of its file format
//! document): a header of serial types, then the values.

/// A column value of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

/// Appends `v` as a SQLite varint (big-endian, 7 bits a byte, the ninth
/// byte whole).
#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    if v > 0x00ff_ffff_ffff_ffff {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut x = v >> 8;
        for b in buf[..8].iter_mut().rev() {
            *b = (x & 0x7f) as u8 | 0x80;
            x >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut buf = [0u8; 8];
    let mut n = 0;
    let mut x = v;
    loop {
        buf[n] = (x & 0x7f) as u8 | 0x80;
        n += 1;
        x >>= 7;
        if x == 0 {
            break;
        }
    }
    buf[0] &= 0x7f;
    out.extend(buf[..n].iter().rev());
}

/// Bytes [`put_varint`] writes for `v`.
#[inline]
pub(crate) fn varint_len(v: u64) -> usize {
    if v < 0x80 {
        return 1;
    }
    if v > 0x00ff_ffff_ffff_ffff {
        return 9;
    }
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The serial type of an integer and its size: the smallest that holds it
/// (8 and 9 are the constants 0 and 1, schema format 4).
fn int_type(v: i64) -> (u64, usize) {
    match v {
        0 => (8, 0),
        1 => (9, 0),
        -0x80..=0x7f => (1, 1),
        -0x8000..=0x7fff => (2, 2),
        -0x80_0000..=0x7f_ffff => (3, 3),
        -0x8000_0000..=0x7fff_ffff => (4, 4),
        -0x8000_0000_0000..=0x7fff_ffff_ffff => (5, 6),
        _ => (6, 8),
    }
}

/// A value's serial type and the size of its body.
fn serial_type(v: &Value<'_>) -> (u64, usize) {
    match v {
        Value::Null => (0, 0),
        Value::Int(i) => int_type(*i),
        Value::Text(s) => (2 * s.len() as u64 + 13, s.len()),
    }
}

/// The most columns a record has here.
const MAX_COLUMNS: usize = 8;

/// Appends the record of `values` (at most eight).
pub(crate) fn put_record(out: &mut Vec<u8>, values: &[Value<'_>]) {
    let values = &values[..values.len().min(MAX_COLUMNS)];
    let mut types = [(0u64, 0usize); MAX_COLUMNS];
    let (mut types_len, mut body) = (0, 0);
    for (t, v) in types.iter_mut().zip(values) {
        *t = serial_type(v);
        types_len += varint_len(t.0);
        body += t.1;
    }
    // The header's size counts its own varint.
    let mut header = types_len + 1;
    while types_len + varint_len(header as u64) != header {
        header = types_len + varint_len(header as u64);
    }
    // Written in place: pushing byte by byte costs more.
    let start = out.len();
    out.resize(start + header + body, 0);
    let buf = &mut out[start..];
    let mut at = write_varint(buf, 0, header as u64);
    for t in &types[..values.len()] {
        at = write_varint(buf, at, t.0);
    }
    for (v, t) in values.iter().zip(&types) {
        match v {
            Value::Null => {}
            Value::Int(i) => put_int(&mut buf[at..at + t.1], *i),
            Value::Text(s) => buf[at..at + t.1].copy_from_slice(s.as_bytes()),
        }
        at += t.1;
    }
}

/// `v`'s low `out.len()` bytes, big-endian (sizes known here, so that no
/// copy of a few bytes becomes a call).
#[inline]
fn put_int(out: &mut [u8], v: i64) {
    let b = v.to_be_bytes();
    match out.len() {
        0 => {}
        1 => out.copy_from_slice(&b[7..]),
        2 => out.copy_from_slice(&b[6..]),
        3 => out.copy_from_slice(&b[5..]),
        4 => out.copy_from_slice(&b[4..]),
        6 => out.copy_from_slice(&b[2..]),
        8 => out.copy_from_slice(&b),
        // No serial type has another size.
        n => out.copy_from_slice(&b[8 - n.min(8)..]),
    }
}

/// Writes `v` as a varint into `buf` at `at`; where it ends.
#[inline]
fn write_varint(buf: &mut [u8], at: usize, v: u64) -> usize {
    if v < 0x80 {
        buf[at] = v as u8;
        return at + 1;
    }
    let mut tmp = [0u8; 9];
    let n = varint_len(v);
    let mut x = v;
    if n == 9 {
        tmp[8] = x as u8;
        x >>= 8;
    }
    // Seven bits a byte from the last, the high bit set on all but the last.
    for i in (0..n.min(8)).rev() {
        let more = if i + 1 == n { 0 } else { 0x80 };
        tmp[i] = (x & 0x7f) as u8 | more;
        x >>= 7;
    }
    buf[at..at + n].copy_from_slice(&tmp[..n]);
    at + n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_sqlites() {
        for (v, bytes) in [
            (0u64, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x81, 0x00]),
            (16383, vec![0xff, 0x7f]),
            (16384, vec![0x81, 0x80, 0x00]),
            (u64::MAX, vec![0xff; 9]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(varint_len(v), bytes.len(), "{v}");
        }
    }

    #[test]
    fn varints_written_in_place_are_the_same() {
        for v in [
            0u64,
            127,
            128,
            300,
            16383,
            16384,
            1 << 40,
            (1 << 56) - 1,
            1 << 56,
            u64::MAX,
        ] {
            let (mut a, mut b) = (Vec::new(), vec![0u8; 9]);
            put_varint(&mut a, v);
            let n = write_varint(&mut b, 0, v);
            assert_eq!(&b[..n], &a[..], "{v}");
        }
    }

    #[test]
    fn a_record_has_its_header_then_its_values() {
        let mut out = Vec::new();
        put_record(
            &mut out,
            &[
                Value::Int(0),
                Value::Text("ab"),
                Value::Int(300),
                Value::Null,
            ],
        );
        // header 5 bytes: size, 8 (zero), 17 (text of 2), 2 (int16), 0 (null)
        assert_eq!(out, vec![5, 8, 17, 2, 0, b'a', b'b', 0x01, 0x2c]);
    }
}
