//! DALI's webdataset index (`fn.readers.webdataset(index_paths=...)`),
//! version `v1.2` as DALI's `tools/wds2idx.py` writes it:
//!
//! ```text
//! v1.2 <samples>
//! <ext> <data offset> <size> <name> [<ext> <offset> <size> <name> ...]
//! ```
//! one line per sample, its regular members in tar order. DALI reads each
//! component at its offset, so left-out samples are simply not listed.
//! DALI splits the line on whitespace: a name's whitespace is written as
//! `%20`-style escapes (the name is only DALI's source info); a sample
//! whose extension has whitespace cannot be written and is left out.

use std::fmt::Write;

use crate::group::Group;

/// The `.idx` text of the kept `groups`, and how many samples it lists;
/// `None` when it lists none (DALI refuses a count of 0).
pub fn index_text(groups: &[Group<'_>]) -> (Option<String>, DaliCounts) {
    let mut body = String::with_capacity(groups.len() * 96);
    let mut counts = DaliCounts::default();
    for g in groups.iter().filter(|g| g.left_out.is_none()) {
        if g.parts
            .iter()
            .any(|p| p.ext.is_empty() || !plain(&p.ext) && p.ext.contains(char::is_whitespace))
        {
            counts.unwritable += 1;
            continue;
        }
        for (i, p) in g.parts.iter().enumerate() {
            if i > 0 {
                body.push(' ');
            }
            let mut num = itoa::Buffer::new();
            body.push_str(&p.ext);
            body.push(' ');
            body.push_str(num.format(p.data_offset));
            body.push(' ');
            body.push_str(num.format(p.size));
            body.push(' ');
            escape_into(&mut body, &p.name);
        }
        body.push('\n');
        counts.samples += 1;
    }
    if counts.samples == 0 {
        return (None, counts);
    }
    let mut text = String::with_capacity(body.len() + 16);
    let _ = writeln!(text, "v1.2 {}", counts.samples);
    text.push_str(&body);
    (Some(text), counts)
}

/// What the DALI index of one shard holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaliCounts {
    pub samples: u64,
    /// Kept samples DALI's index cannot carry (whitespace in an extension).
    pub unwritable: u64,
}

/// Whether `s` is ASCII without whitespace or `%` (then it needs no
/// escape; the quick answer for nearly every name).
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() && b != b'%')
}

/// Appends a name as one whitespace-free token (`%` and whitespace percent-escaped).
fn escape_into(out: &mut String, name: &str) {
    if plain(name) || !name.contains(|c: char| c == '%' || c.is_whitespace()) {
        out.push_str(name);
        return;
    }
    for c in name.chars() {
        if c == '%' || c.is_whitespace() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// One parsed line: `(ext, offset, size)` of each component.
pub type Components = Vec<(String, u64, u64)>;

/// Parses an index written by [`index_text`] (for `verify`): the count in
/// the header and each sample's components.
pub fn parse(text: &str) -> Result<Vec<Components>, String> {
    let mut lines = text.lines();
    let head = lines.next().ok_or("empty index")?;
    let n: usize = head
        .strip_prefix("v1.2 ")
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("bad header {head:?}, expected `v1.2 <samples>`"))?;
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.enumerate() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.is_empty() || !t.len().is_multiple_of(4) {
            return Err(format!(
                "line {}: not `<ext> <offset> <size> <name>` groups",
                i + 2
            ));
        }
        let mut comps = Components::new();
        for c in t.chunks(4) {
            let num = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| format!("line {}: {s:?} is not a number", i + 2))
            };
            comps.push((c[0].to_string(), num(c[1])?, num(c[2])?));
        }
        out.push(comps);
    }
    if out.len() != n {
        return Err(format!(
            "the header says {n} samples, the file lists {}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{LeftOut, Part};

    fn group(key: &str, exts: &[&str], left_out: Option<LeftOut>) -> Group<'static> {
        Group {
            key: key.to_string().into(),
            start_offset: 0,
            parts: exts
                .iter()
                .enumerate()
                .map(|(i, e)| Part {
                    name: format!("{key}.{e}").into(),
                    ext: e.to_string().into(),
                    data_offset: 512 * (i as u64 + 1),
                    size: 7,
                })
                .collect(),
            left_out,
        }
    }

    #[test]
    fn kept_samples_become_lines_and_parse_back() {
        let gs = [
            group("a b", &["jpg", "json"], None),
            group("c", &["png"], Some(LeftOut::NoRow)),
        ];
        let (text, counts) = index_text(&gs);
        let text = text.unwrap();
        assert_eq!(text, "v1.2 1\njpg 512 7 a%20b.jpg json 1024 7 a%20b.json\n");
        assert_eq!(
            counts,
            DaliCounts {
                samples: 1,
                unwritable: 0
            }
        );
        assert_eq!(parse(&text).unwrap()[0][1], ("json".to_string(), 1024, 7));
        assert!(index_text(&gs[1..]).0.is_none());
    }
}
