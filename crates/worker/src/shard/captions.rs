//! Caption files beyond the seed's, and caption warnings.
//!
//! SimpleTuner's textfile mode reads `<image stem>.txt` for every image it
//! finds in `data/`, not only for the parquet's rows, and stops when one is
//! missing. So an extracted image that no row captions gets a caption file
//! at the end of the shard: the caption text of its own JSON (`<stem>.json`
//! beside it, even without `width`), else an empty file. The parquet rows
//! and the seed's caption files are left exactly as they are.

use foldhash::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::member::file_name;

use shardprep_core::issue::IssueKind;
use shardprep_core::layout::fnv1a64;

/// The caption file SimpleTuner looks for beside `rel`: Python's
/// `os.path.splitext(rel)[0] + ".txt"` (a leading dot of the file name does
/// not start an extension).
pub(super) fn caption_path(rel: &Path) -> PathBuf {
    let rel = rel.as_os_str().as_bytes();
    let name = file_name(rel);
    let stem = match name.iter().rposition(|b| *b == b'.') {
        Some(i) if name[..i].iter().any(|b| *b != b'.') => &name[..i],
        _ => name,
    };
    let dir = &rel[..rel.len() - name.len()];
    let mut path = Vec::with_capacity(dir.len() + stem.len() + 4);
    path.extend_from_slice(dir);
    path.extend_from_slice(stem);
    path.extend_from_slice(b".txt");
    PathBuf::from(OsString::from_vec(path))
}

/// The hash the pass keeps of a path.
pub(super) fn path_key(rel: &Path) -> u64 {
    fnv1a64(rel.as_os_str().as_bytes())
}

/// Extracted images that no row captions (so far), and the caption texts
/// JSONs give for their own stem. Memory: one entry per image whose row has
/// not come yet, and one per JSON that made no row for its own stem.
#[derive(Default)]
pub(super) struct UnlistedImages {
    /// Caption path key to the caption path and the image member's name.
    images: HashMap<u64, (PathBuf, String)>,
    /// Caption path key to the caption text of the JSON of that stem.
    texts: HashMap<u64, String>,
    /// Caption files of withdrawn rows: caption path key to the caption
    /// path and the image's name (rare: a JSON twice in the shard).
    withdrawn: HashMap<u64, (PathBuf, String)>,
}

/// A caption file to write for an image no row captions.
pub(super) struct UnlistedCaption {
    pub path: PathBuf,
    /// The image member it is for.
    pub member: String,
    pub text: String,
}

impl UnlistedImages {
    /// The image `rel` (member `member`) is whole in `data/`; `captioned`
    /// holds the caption paths rows have queued or written.
    pub(super) fn image_written(&mut self, rel: &Path, member: &str, captioned: &HashSet<u64>) {
        let path = caption_path(rel);
        let key = path_key(&path);
        if !captioned.contains(&key) {
            self.images.insert(key, (path, member.to_string()));
        }
    }

    /// A row's caption file was queued at the path with `key`.
    pub(super) fn row_caption(&mut self, key: u64) {
        self.images.remove(&key);
    }

    /// The row that captioned `image` at `path` was withdrawn and no kept
    /// row names the image: the file gets the caption an image without a
    /// row gets (when the image is a member of the shard).
    pub(super) fn row_withdrawn(&mut self, path: PathBuf, image: &str) {
        self.withdrawn
            .insert(path_key(&path), (path, image.to_string()));
    }

    /// The JSON `json_rel` gives `text` as its caption but no row for its
    /// own stem.
    pub(super) fn json_text(&mut self, json_rel: &Path, text: String) {
        self.texts.insert(path_key(&caption_path(json_rel)), text);
    }

    /// The caption files still missing at the end of the shard, in path
    /// order (the same for any writer-thread count): neither a row's caption
    /// (`captioned`) nor a member of the shard (`members`) took the path.
    pub(super) fn missing(
        mut self,
        captioned: &HashSet<u64>,
        members: &HashSet<u64>,
    ) -> Vec<UnlistedCaption> {
        let withdrawn = self.withdrawn.drain().filter(|(key, (_, image))| {
            !members.contains(key) && members.contains(&fnv1a64(image.as_bytes()))
        });
        let uncaptioned = self
            .images
            .drain()
            .filter(|(key, _)| !captioned.contains(key) && !members.contains(key));
        let mut out: Vec<UnlistedCaption> = uncaptioned
            .chain(withdrawn)
            .map(|(key, (path, member))| UnlistedCaption {
                text: self.texts.remove(&key).unwrap_or_default(),
                path,
                member,
            })
            .collect();
        out.sort_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
        out
    }
}

/// A way a row's caption reads differently in textfile and parquet modes.
pub(super) struct CaptionWarning {
    /// Key in `ShardCounts::caption_warnings`.
    pub key: &'static str,
    /// Kind of the listed issue.
    pub issue: IssueKind,
    pub detail: &'static str,
}

const NEWLINE: CaptionWarning = CaptionWarning {
    key: "newline",
    issue: IssueKind::CaptionNewline,
    detail: "the caption holds a line break: SimpleTuner's textfile mode reads each line as a caption of its own, parquet mode reads one caption",
};

const SURROUNDING_WHITESPACE: CaptionWarning = CaptionWarning {
    key: "surrounding_whitespace",
    issue: IssueKind::CaptionSurroundingWhitespace,
    detail: "the caption starts or ends with whitespace, which SimpleTuner strips: the trained caption differs from the parquet's",
};

/// What is to be said about a row's caption (nothing, usually).
pub(super) fn caption_warnings(caption: &str) -> impl Iterator<Item = &'static CaptionWarning> {
    let newline = caption.contains(['\n', '\r']);
    let surrounding = caption.trim() != caption;
    [(newline, &NEWLINE), (surrounding, &SURROUNDING_WHITESPACE)]
        .into_iter()
        .filter_map(|(hit, w)| hit.then_some(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_paths_follow_python_splitext() {
        let p = |s: &str| caption_path(Path::new(s)).display().to_string();
        assert_eq!(p("a.png"), "a.txt");
        assert_eq!(p("a.b.JPG"), "a.b.txt");
        assert_eq!(p("sub/k.jpeg"), "sub/k.txt");
        assert_eq!(p(".png"), ".png.txt");
        assert_eq!(p("..png"), "..png.txt");
        assert_eq!(p("k.json"), "k.txt");
        assert_eq!(p("d/e/.png"), "d/e/.png.txt");
        assert_eq!(p("d.x/k"), "d.x/k.txt");
        assert_eq!(p("d/k.tar.gz"), "d/k.tar.txt");
    }

    #[test]
    fn warnings_name_each_kind() {
        let keys = |s: &str| caption_warnings(s).map(|w| w.key).collect::<Vec<_>>();
        assert!(keys("a cat").is_empty());
        assert_eq!(keys("a\ncat"), ["newline"]);
        assert_eq!(keys("a\r\ncat"), ["newline"]);
        assert_eq!(keys(" a cat"), ["surrounding_whitespace"]);
        assert_eq!(keys("a cat\n"), ["newline", "surrounding_whitespace"]);
    }

    #[test]
    fn missing_captions_skip_rows_and_members_and_come_in_path_order() {
        let mut u = UnlistedImages::default();
        let none = HashSet::default();
        for name in ["c.png", "a.png", "b.jpg", "d.png"] {
            u.image_written(Path::new(name), name, &none);
        }
        u.json_text(Path::new("a.json"), "text of a".into());
        u.row_caption(path_key(Path::new("d.txt")));
        let members: HashSet<u64> = [path_key(Path::new("b.txt"))].into_iter().collect();
        let got: Vec<(String, String)> = u
            .missing(&none, &members)
            .into_iter()
            .map(|c| (c.path.display().to_string(), c.text))
            .collect();
        assert_eq!(
            got,
            [
                ("a.txt".to_string(), "text of a".to_string()),
                ("c.txt".to_string(), String::new())
            ]
        );
    }
}
