//! [`IssueKind`]: every kind of problem a shard pass counts or lists, by
//! the stable key manifests, `report.json` and `/metrics` carry. Each key is
//! written here once; everything else names the variant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! issue_kinds {
    ($($(#[$doc:meta])* $variant:ident = $key:literal,)*) => {
        /// A kind of problem, serialised as its key (`duplicate_member`, ...).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum IssueKind {
            $($(#[$doc])* $variant,)*
        }

        impl IssueKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [IssueKind] = &[$(IssueKind::$variant,)*];

            /// The stable key.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(IssueKind::$variant => $key,)*
                }
            }
        }
    };
}

issue_kinds! {
    // JSONs with width that make no row (`skipped`).
    InvalidJson = "invalid_json",
    JsonNotObject = "json_not_object",
    InvalidWidth = "invalid_width",
    MissingHeight = "missing_height",
    InvalidHeight = "invalid_height",
    MissingCaption = "missing_caption",
    CaptionNotString = "caption_not_string",
    EmptyCaption = "empty_caption",
    MissingFilename = "missing_filename",
    FilenameNotString = "filename_not_string",
    UnsafeFilename = "unsafe_filename",
    JsonTooLarge = "json_too_large",
    JsonInSubdirectory = "json_in_subdirectory",
    /// A row left out by `--on-bad-image skip` (also an image left out).
    BadImage = "bad_image",
    // Members not extracted or indexed (`rejected_members`).
    EmptyName = "empty_name",
    AbsolutePath = "absolute_path",
    ParentDirPath = "parent_dir_path",
    NulInName = "nul_in_name",
    PathThroughNonDirectory = "path_through_non_directory",
    SymlinkInTheWay = "symlink_in_the_way",
    DirectoryInTheWay = "directory_in_the_way",
    NameTooLong = "name_too_long",
    IoError = "io_error",
    Symlink = "symlink",
    HardLink = "hard_link",
    Device = "device",
    Fifo = "fifo",
    VolumeLabel = "volume_label",
    MultivolumeContinuation = "multivolume_continuation",
    UnknownTypeDirectoryName = "unknown_type_directory_name",
    InvalidSparseMap = "invalid_sparse_map",
    SparseMapTooLarge = "sparse_map_too_large",
    UnsupportedSparseVersion = "unsupported_sparse_version",
    SparseTooLarge = "sparse_too_large",
    UnsafeDirectory = "unsafe_directory",
    WouldOverwriteInput = "would_overwrite_input",
    ShadowedByCaption = "shadowed_by_caption",
    /// Index mode: no offset and length can serve a sparse member.
    SparseFile = "sparse_file",
    /// Index mode: index keys are text.
    NameNotUtf8 = "name_not_utf8",
    // Members handled with a warning (`member_warnings`).
    UnknownEntryType = "unknown_entry_type",
    // Listed only.
    DuplicateMember = "duplicate_member",
    JsonWithoutImage = "json_without_image",
    ImageWithoutJson = "image_without_json",
    UnlistedCaptionNotWritten = "unlisted_caption_not_written",
    CaptionNewline = "caption_newline",
    CaptionSurroundingWhitespace = "caption_surrounding_whitespace",
    // Problems of the images themselves (`image_problems`).
    DimsMismatch = "dims_mismatch",
    UnreadableImageHeader = "unreadable_image_header",
    DecodeFailed = "decode_failed",
    TooManyPixels = "too_many_pixels",
    HashMismatch = "hash_mismatch",
    // Images the trainer gets no sample for (`images_left_out`; and `bad_image`).
    NoWidth = "no_width",
    NoRow = "no_row",
    InSubdirectory = "in_subdirectory",
}

impl fmt::Display for IssueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IssueKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IssueKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown issue kind {s:?}"))
    }
}

impl Serialize for IssueKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IssueKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_round_trip() {
        let mut keys: Vec<&str> = IssueKind::ALL.iter().map(|k| k.as_str()).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a key is used twice");
        for k in IssueKind::ALL {
            assert_eq!(k.as_str().parse::<IssueKind>(), Ok(*k));
            let json = serde_json::to_string(k).expect("serialises");
            assert_eq!(json, format!("\"{k}\""));
            assert_eq!(serde_json::from_str::<IssueKind>(&json).ok(), Some(*k));
        }
        assert!("nope".parse::<IssueKind>().is_err());
    }
}
