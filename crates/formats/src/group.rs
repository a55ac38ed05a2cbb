//! Samples as the tar readers group them: consecutive regular members
//! whose names share the part before the first dot of their last path
//! component (Megatron-Energon's `split_name_re`, which DALI's `split_name`
//! and wids' `splitname` agree with for names that have an extension), and
//! which of them a job keeps.

use std::borrow::Cow;

use smallvec::SmallVec;

use shardprep_core::issue::IssueKind;

use crate::input::{MemberKind, ShardInput};

/// Why a sample of the tar gets no entry in the formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeftOut {
    /// No image of the sample has a parquet row (no JSON with width, no JSON at all, ...).
    NoRow,
    /// A member name is not UTF-8: index keys are text.
    NameNotUtf8,
    /// A member is a GNU sparse file: no offset and length serve it.
    SparseMember,
    /// The key appears in more than one sample of the shard.
    DuplicateKey,
}

impl LeftOut {
    /// The report's name (the walk's issue kind's, where it has one).
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::NoRow => IssueKind::NoRow.as_str(),
            LeftOut::NameNotUtf8 => IssueKind::NameNotUtf8.as_str(),
            LeftOut::SparseMember => "sparse_member",
            LeftOut::DuplicateKey => "duplicate_key",
        }
    }
}

/// One member of a sample (its texts borrowed from the walked shard's
/// names when they are UTF-8, as they nearly always are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The member's full name.
    pub name: Cow<'a, str>,
    /// Energon's part name / DALI's extension: after the first dot of the last component.
    pub ext: Cow<'a, str>,
    pub data_offset: u64,
    pub size: u64,
}

/// One sample of the tar, kept or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    /// The sample key (name up to the first dot of its last component).
    pub key: Cow<'a, str>,
    /// Offset of its first member's first header.
    pub start_offset: u64,
    /// Its regular members, in tar order (a sample's few parts kept inline:
    /// a shard has tens of thousands of samples).
    pub parts: SmallVec<[Part<'a>; 2]>,
    /// `None` when kept.
    pub left_out: Option<LeftOut>,
}

/// `(key, part)` of a member name as energon's `split_name_re`
/// (`^((?:.*/|)[^.]+)[.]([^/]*)$`) splits it; `None` when it does not match.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.contains('\n') {
        return None;
    }
    // The greedy `(?:.*/|)` tries the longest prefix ending in '/' first.
    let ends = name.rmatch_indices('/').map(|(i, _)| i + 1);
    for start in ends.chain(std::iter::once(0)) {
        let rest = &name[start..];
        let Some(dot) = rest.find('.') else { continue };
        if dot >= 1 && !rest[dot + 1..].contains('/') {
            return Some((&name[..start + dot], &rest[dot + 1..]));
        }
    }
    None
}

/// Energon's `skip_meta_re` (`__[^/]*__($|/)`, matched at the start):
/// members under a `__name__` first component are not sample parts.
pub fn is_meta(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or("");
    first.len() >= 4 && first.starts_with("__") && first.ends_with("__")
}

/// A member name as [`split_name`] splits it (borrowed when the name is
/// UTF-8, as names nearly always are; lossy otherwise).
struct Split<'a> {
    name: Cow<'a, str>,
    key: Cow<'a, str>,
    ext: Cow<'a, str>,
    utf8: bool,
}

/// [`Split`] of a member name; `None` for energon's meta members and
/// names without a key.
fn split_member(name: &[u8]) -> Option<Split<'_>> {
    match std::str::from_utf8(name) {
        Ok(n) => {
            if is_meta(n) {
                return None;
            }
            let (key, ext) = split_name(n)?;
            Some(Split {
                name: n.into(),
                key: key.into(),
                ext: ext.into(),
                utf8: true,
            })
        }
        Err(_) => {
            let n = String::from_utf8_lossy(name).into_owned();
            if is_meta(&n) {
                return None;
            }
            let (key, ext) = split_name(&n)?;
            let (key, ext) = (key.to_string(), ext.to_string());
            Some(Split {
                name: n.into(),
                key: key.into(),
                ext: ext.into(),
                utf8: false,
            })
        }
    }
}

/// The tar's samples in order, each with its verdict.
pub fn groups(input: &ShardInput) -> Vec<Group<'_>> {
    // Samples have two members or more, as a rule.
    let guess = input.members().len() / 2 + 1;
    let mut out: Vec<Group<'_>> = Vec::with_capacity(guess);
    let mut utf8_ok: Vec<bool> = Vec::with_capacity(guess);
    let mut sparse: Vec<bool> = Vec::with_capacity(guess);
    for m in input.members() {
        if m.kind == MemberKind::Other {
            continue;
        }
        let Some(Split {
            name,
            key,
            ext,
            utf8,
        }) = split_member(m.name)
        else {
            continue;
        };
        if out.last().is_none_or(|g| g.key != key) {
            out.push(Group {
                key,
                start_offset: m.start_offset,
                parts: SmallVec::new(),
                left_out: None,
            });
            utf8_ok.push(true);
            sparse.push(false);
        }
        let i = out.len() - 1;
        utf8_ok[i] &= utf8;
        sparse[i] |= m.kind == MemberKind::Sparse;
        out[i].parts.push(Part {
            name,
            ext,
            data_offset: m.data_offset,
            size: m.size,
        });
    }
    let repeated = repeated_keys(&out);
    let rows = input.row_images();
    for (i, g) in out.iter_mut().enumerate() {
        g.left_out = if !utf8_ok[i] {
            Some(LeftOut::NameNotUtf8)
        } else if sparse[i] {
            Some(LeftOut::SparseMember)
        } else if repeated[i] {
            Some(LeftOut::DuplicateKey)
        } else if !g.parts.iter().any(|p| rows.contains(&*p.name)) {
            Some(LeftOut::NoRow)
        } else {
            None
        };
    }
    out
}

/// Per group, whether its key is the key of another group too.
fn repeated_keys(groups: &[Group<'_>]) -> Vec<bool> {
    let mut first: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
    first.reserve(groups.len());
    let mut repeated = vec![false; groups.len()];
    for (i, g) in groups.iter().enumerate() {
        if let Some(&f) = first.get(&*g.key) {
            repeated[f] = true;
            repeated[i] = true;
        } else {
            first.insert(&g.key, i);
        }
    }
    repeated
}

/// The kept samples.
pub fn kept<'g, 'a>(groups: &'g [Group<'a>]) -> impl Iterator<Item = &'g Group<'a>> {
    groups.iter().filter(|g| g.left_out.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::TarMember;

    #[test]
    fn names_split_as_energons_regex_does() {
        assert_eq!(split_name("a.jpg"), Some(("a", "jpg")));
        assert_eq!(split_name("dir.x/a.b.jpg"), Some(("dir.x/a", "b.jpg")));
        // `[^.]+` may cross a '/' when the last component starts with a dot.
        assert_eq!(split_name("a/.hidden"), Some(("a/", "hidden")));
        assert_eq!(split_name("noext"), None);
        assert_eq!(split_name(".hidden"), None);
        assert!(is_meta("__meta__") && is_meta("__x__/y.json") && !is_meta("__x_.json"));
    }

    fn member(name: &str, start: u64, kind: MemberKind) -> TarMember<'_> {
        TarMember {
            name: name.as_bytes(),
            start_offset: start,
            header_offset: start,
            data_offset: start + 512,
            size: 10,
            kind,
            raw_header_name: None,
            typeflag: b'0',
        }
    }

    #[test]
    fn consecutive_members_of_a_key_make_one_sample_and_rows_decide() {
        let mut input = ShardInput::default();
        for m in [
            member("a.jpg", 0, MemberKind::Regular),
            member("a.json", 1024, MemberKind::Regular),
            member("d", 2048, MemberKind::Other),
            member("b.png", 2560, MemberKind::Regular),
            member("c.jpg", 3584, MemberKind::Sparse),
            member("a.txt", 4608, MemberKind::Regular),
        ] {
            input.push(m, m.start_offset + 1024);
        }
        for image in ["a.jpg", "b.png", "c.jpg"] {
            input.add_row_image(image);
        }
        let g = groups(&input);
        let summary: Vec<_> = g
            .iter()
            .map(|g| (&*g.key, g.parts.len(), g.left_out))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", 2, Some(LeftOut::DuplicateKey)),
                ("b", 1, None),
                ("c", 1, Some(LeftOut::SparseMember)),
                ("a", 1, Some(LeftOut::DuplicateKey)),
            ]
        );
    }
}
