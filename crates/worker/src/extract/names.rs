//! Member names as paths under `data/`: checked before any use, so nothing
//! is ever written outside `data/`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use shardprep_core::issue::IssueKind;

/// Why a member name cannot be used as a path under `data/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeName {
    Empty,
    Absolute,
    ParentDir,
    NulByte,
}

impl UnsafeName {
    /// Stable report key.
    pub fn reason(self) -> IssueKind {
        match self {
            UnsafeName::Empty => IssueKind::EmptyName,
            UnsafeName::Absolute => IssueKind::AbsolutePath,
            UnsafeName::ParentDir => IssueKind::ParentDirPath,
            UnsafeName::NulByte => IssueKind::NulInName,
        }
    }
}

/// The relative path a member name stands for, or why it is refused.
/// `./` segments and repeated slashes are dropped, as `tar xf` does;
/// absolute names and any `..` segment are refused (GNU tar strips or
/// refuses them too).
pub fn safe_relative_path(name: &[u8]) -> Result<PathBuf, UnsafeName> {
    if name.contains(&0) {
        return Err(UnsafeName::NulByte);
    }
    if name.first() == Some(&b'/') {
        return Err(UnsafeName::Absolute);
    }
    if !name.contains(&b'/') {
        // One segment (every sample of a webdataset shard): no parsing.
        return match name {
            b"" | b"." => Err(UnsafeName::Empty),
            b".." => Err(UnsafeName::ParentDir),
            _ => Ok(PathBuf::from(OsStr::from_bytes(name))),
        };
    }
    let mut out = PathBuf::new();
    for comp in Path::new(OsStr::from_bytes(name)).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnsafeName::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(UnsafeName::Absolute),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(UnsafeName::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(
            safe_relative_path(b"a.png").unwrap(),
            PathBuf::from("a.png")
        );
        assert_eq!(
            safe_relative_path(b"./d//a.png").unwrap(),
            PathBuf::from("d/a.png")
        );
        assert_eq!(safe_relative_path(b"../x"), Err(UnsafeName::ParentDir));
        assert_eq!(safe_relative_path(b"a/../../x"), Err(UnsafeName::ParentDir));
        assert_eq!(safe_relative_path(b"/etc/x"), Err(UnsafeName::Absolute));
        assert_eq!(safe_relative_path(b"./"), Err(UnsafeName::Empty));
        assert_eq!(safe_relative_path(b""), Err(UnsafeName::Empty));
        assert_eq!(safe_relative_path(b"."), Err(UnsafeName::Empty));
        assert_eq!(safe_relative_path(b".."), Err(UnsafeName::ParentDir));
        assert_eq!(safe_relative_path(b"..a").unwrap(), PathBuf::from("..a"));
        assert_eq!(safe_relative_path(b"a/").unwrap(), PathBuf::from("a"));
        assert!(safe_relative_path(b"caf\xe9.png").is_ok());
    }
}
