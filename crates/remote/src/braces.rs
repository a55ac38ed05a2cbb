//! Webdataset brace notation: `data-{000000..000068}.tar`, `{a,b,c}`, nested and repeated
//! groups, optional step (`{0..10..2}`), letter ranges (`{a..e}`).

use crate::RemoteError;

/// Most names one pattern may expand to (a typo like `{0..99999999}` fails fast instead of
/// allocating gigabytes).
pub const MAX_EXPANSION: usize = 1_000_000;

/// Expand webdataset/bash brace notation.
///
/// - `{000000..000068}`: numeric range, inclusive; when either bound has a leading zero every
///   number is zero-padded to the longer bound's width (69 names here).
/// - `{1..10..3}`: range with a step (its sign is ignored, as in bash); `{5..1}` counts down;
///   `{a..e}`: letter range.
/// - `{a,b,c}`: alternatives, which may themselves contain groups.
/// - Several groups multiply: `{a,b}-{0..1}` gives `a-0 a-1 b-0 b-1`.
/// - A group with neither `..` nor a comma (`{x}`) is kept literally, like bash.
///
/// A string without braces expands to itself. Unbalanced braces, a zero step and results over
/// [`MAX_EXPANSION`] names are errors.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, RemoteError> {
    let err = |reason: String| RemoteError::Braces {
        pattern: crate::redact(pattern),
        reason,
    };
    check_balanced(pattern).map_err(err)?;
    let out = expand(pattern).map_err(err)?;
    if out.is_empty() {
        return Err(RemoteError::Braces {
            pattern: crate::redact(pattern),
            reason: "expands to nothing".into(),
        });
    }
    Ok(out)
}

fn check_balanced(pattern: &str) -> Result<(), String> {
    let mut depth = 0usize;
    for (i, c) in pattern.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Err(format!("unmatched '}}' at byte {i}")),
            '}' => depth -= 1,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unmatched '{'".into());
    }
    Ok(())
}

fn expand(s: &str) -> Result<Vec<String>, String> {
    let Some(open) = s.find('{') else {
        return Ok(vec![s.to_string()]);
    };
    let close = matching_close(s, open).ok_or("unmatched '{'")?;
    let prefix = &s[..open];
    let inner = &s[open + 1..close];
    let suffixes = expand(&s[close + 1..])?;

    let alternatives: Vec<String> = if let Some(parts) = split_top_level_commas(inner) {
        let mut alts = Vec::new();
        for part in parts {
            alts.extend(expand(part)?);
            check_limit(alts.len())?;
        }
        alts
    } else if let Some(range) = parse_range(inner)? {
        range
    } else {
        // Literal group such as "{x}" (bash keeps it); its content may still hold groups.
        expand(inner)?
            .into_iter()
            .map(|x| format!("{{{x}}}"))
            .collect()
    };

    check_limit(alternatives.len().saturating_mul(suffixes.len()))?;
    let mut out = Vec::with_capacity(alternatives.len() * suffixes.len());
    for alt in &alternatives {
        for suffix in &suffixes {
            out.push(format!("{prefix}{alt}{suffix}"));
        }
    }
    Ok(out)
}

fn check_limit(n: usize) -> Result<(), String> {
    if n > MAX_EXPANSION {
        return Err(format!("expands to more than {MAX_EXPANSION} names"));
    }
    Ok(())
}

fn matching_close(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Split on commas outside nested groups; `None` when there is no such comma.
fn split_top_level_commas(inner: &str) -> Option<Vec<&str>> {
    let mut depth = 0usize;
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return None;
    }
    parts.push(&inner[start..]);
    Some(parts)
}

/// `a..b` or `a..b..step` with integer or single-letter bounds; `None` if not a range.
fn parse_range(inner: &str) -> Result<Option<Vec<String>>, String> {
    let fields: Vec<&str> = inner.split("..").collect();
    if !(fields.len() == 2 || fields.len() == 3) {
        return Ok(None);
    }
    let step: i64 = match fields.get(2) {
        Some(s) => match s.parse::<i64>() {
            Ok(0) => return Err(format!("zero step in {{{inner}}}")),
            Ok(v) => v,
            Err(_) => return Ok(None),
        },
        None => 0, // chosen from the direction below
    };
    let (a, b) = (fields[0], fields[1]);
    if let (Ok(start), Ok(end)) = (a.parse::<i64>(), b.parse::<i64>()) {
        let width = if has_leading_zero(a) || has_leading_zero(b) {
            a.len().max(b.len())
        } else {
            0
        };
        let values = range_values(start, end, step)?;
        return Ok(Some(
            values
                .into_iter()
                .map(|v| {
                    if v < 0 {
                        format!("-{:0w$}", -v, w = width.saturating_sub(1))
                    } else {
                        format!("{v:0width$}")
                    }
                })
                .collect(),
        ));
    }
    let (mut ca, mut cb) = (a.chars(), b.chars());
    if let (Some(x), None, Some(y), None) = (ca.next(), ca.next(), cb.next(), cb.next())
        && x.is_ascii_alphabetic()
        && y.is_ascii_alphabetic()
    {
        let values = range_values(x as i64, y as i64, step)?;
        return Ok(Some(
            values
                .into_iter()
                .map(|v| char::from(v as u8).to_string())
                .collect(),
        ));
    }
    Ok(None)
}

fn has_leading_zero(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    digits.len() > 1 && digits.starts_with('0')
}

fn range_values(start: i64, end: i64, step: i64) -> Result<Vec<i64>, String> {
    // Like bash, the sign of the step is ignored: the bounds give the direction.
    let step = if step == 0 { 1 } else { i128::from(step).abs() };
    let step = if start <= end { step } else { -step };
    let count = (i128::from(end) - i128::from(start)) / step + 1;
    check_limit(usize::try_from(count).unwrap_or(usize::MAX))?;
    Ok((0..count)
        .map(|i| (i128::from(start) + i * step) as i64)
        .collect())
}
