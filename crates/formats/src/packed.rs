//! Strings back to back in one buffer, each found by its place: one
//! allocation for the tens of thousands of short names of a shard (or the
//! millions of keys of a dataset) instead of one each.

/// Strings in the order they were pushed.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedStrs {
    text: String,
    /// String `i` is `text[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
}

impl PackedStrs {
    /// Appends `s`; its place.
    pub(crate) fn push(&mut self, s: &str) -> usize {
        self.text.push_str(s);
        self.ends.push(self.text.len());
        self.ends.len() - 1
    }

    /// String `i` (pushed `i`-th).
    pub(crate) fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Room for `additional` more strings.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.ends.reserve(additional);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_come_back_by_place() {
        let mut p = PackedStrs::default();
        assert_eq!((p.push("ab"), p.push(""), p.push("é/c")), (0, 1, 2));
        assert_eq!(
            (p.get(0), p.get(1), p.get(2), p.len()),
            ("ab", "", "é/c", 3)
        );
        assert_eq!(p.iter().collect::<Vec<_>>(), ["ab", "", "é/c"]);
    }
}
