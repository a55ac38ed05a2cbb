//! Where the trainer's webshart reads the tars of an index-mode job.
//!
//! webshart 0.6.0 (`discover_dataset(source, subfolder=, metadata=)`) reads
//! tars from two kinds of source only: a local folder (every `*.tar` below
//! it that has an index under `metadata`, at the same relative path), and a
//! Hugging Face dataset repository `OWNER/NAME` on huggingface.co (its `main`
//! revision, every `*.tar` under `subfolder`, the index of `DIR/x.tar` at
//! `metadata/DIR/x.json` with `DIR` its folder in the repository). It has
//! no S3, GCS, Azure or plain-HTTP source. So index mode indexes local
//! folders, local input lists and `hf://` folders, and names the shards of a
//! Hub input by their path in the repository.

use crate::{CoordinatorError, InputSpec, discover::Discovery};

/// The entry's `source` (and `subfolder`) for the trainer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebshartSource {
    /// A local folder: the absolute path.
    Folder(String),
    /// A Hub dataset repository: `OWNER/NAME` and the folder in it ("" for all of it).
    Hub { repo: String, subfolder: String },
}

const READABLE: &str = "webshart 0.6.0 reads tars only from a local folder or a Hugging Face \
dataset repository";

/// What to do with an input webshart cannot read.
const WHAT_TO_DO: &str = "mount the bucket or server as a folder (e.g. `mount-s3`, `rclone mount`, \
s3fs) and index that folder (the trainer reads the tars there too), or upload the tars to a Hub \
dataset repository and index hf://datasets/OWNER/NAME/PATH";

/// The source of an index-mode job on `input`, as far as it is known before
/// listing (`None` for an input list: see [`after_listing`]); an error
/// naming what to do when webshart could not read it.
pub fn before_listing(input: &InputSpec) -> Result<Option<WebshartSource>, CoordinatorError> {
    let url = match input {
        InputSpec::Local(dir) => {
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            return Ok(Some(WebshartSource::Folder(abs.display().to_string())));
        }
        InputSpec::List(_) => return Ok(None),
        InputSpec::Remote(url) => url,
    };
    let shown = shardprep_remote::redact(url);
    let refuse = |why: String| Err(CoordinatorError::Unsupported(why));
    let hub = match shardprep_remote::hub_location(url) {
        Ok(Some(hub)) => hub,
        Ok(None) => {
            return refuse(format!(
                "--mode index cannot index {shown}: {READABLE}, not from {}; {WHAT_TO_DO}",
                scheme_of(url)
            ));
        }
        Err(e) => return Err(CoordinatorError::Remote(e.to_string())),
    };
    let folder = format!("hf://datasets/{}/{}/{}", hub.owner, hub.name, hub.path);
    let folder = folder.trim_end_matches('/');
    if hub.revision.as_deref().is_some_and(|r| r != "main") {
        return refuse(format!(
            "--mode index cannot index {shown}: webshart 0.6.0 reads a Hub repository's main \
             revision only, so an index of another revision would not match the tars it reads; \
             index {folder} (the main revision)"
        ));
    }
    if url.contains(['{', '}']) || hub.path.ends_with(".tar") {
        return refuse(format!(
            "--mode index cannot index {shown}: webshart reads every *.tar under a folder of \
             the repository, so index mode takes a folder, not single tars or brace patterns: \
             index hf://datasets/{}/{}[/FOLDER] (every *.tar under it gets its index)",
            hub.owner, hub.name
        ));
    }
    Ok(Some(WebshartSource::Hub {
        repo: format!("{}/{}", hub.owner, hub.name),
        subfolder: hub.path,
    }))
}

fn scheme_of(url: &str) -> String {
    url.split_once("://")
        .map_or("this location".into(), |(s, _)| {
            format!("{}://", s.to_ascii_lowercase())
        })
}

/// Completes [`before_listing`] with the listing: an input list must hold
/// local paths (its root is the source); a Hub folder's shards are renamed
/// to their path in the repository (where webshart looks for their index)
/// and the root becomes the repository's. Returns the source.
pub fn after_listing(
    known: Option<WebshartSource>,
    input_root: &mut String,
    discovery: &mut Discovery,
) -> Result<WebshartSource, CoordinatorError> {
    let Some(source) = known else {
        if let Some(remote) = discovery
            .shards
            .iter()
            .find_map(|s| s.url.as_deref().filter(|u| shardprep_remote::is_remote(u)))
        {
            return Err(CoordinatorError::Unsupported(format!(
                "--mode index takes an input list of local paths only (the list's folder is the \
                 webshart source); {} is remote: index its folder instead (hf://datasets/OWNER/NAME/PATH \
                 for a Hub repository; for other stores: {WHAT_TO_DO})",
                shardprep_remote::redact(remote)
            )));
        }
        let root = input_root.trim_end_matches('/');
        return Ok(WebshartSource::Folder(
            if root.is_empty() { "/" } else { root }.to_string(),
        ));
    };
    if let WebshartSource::Hub { subfolder, .. } = &source {
        rename_hub_shards(subfolder, input_root, discovery)?;
        check_leaf_names(discovery)?;
    }
    Ok(source)
}

/// `x.tar` under `hf://…/NAME/S/` becomes `S/x.tar` under `hf://…/NAME/`.
fn rename_hub_shards(
    subfolder: &str,
    input_root: &mut String,
    discovery: &mut Discovery,
) -> Result<(), CoordinatorError> {
    if subfolder.is_empty() {
        return Ok(());
    }
    let suffix = format!("/{subfolder}/");
    let Some(repo_root) = input_root.strip_suffix(&suffix[1..]) else {
        return Err(CoordinatorError::Remote(format!(
            "the listing of {} does not end with {suffix}; cannot name its shards by their path in the repository",
            shardprep_remote::redact(input_root)
        )));
    };
    *input_root = repo_root.to_string();
    for s in &mut discovery.shards {
        s.name = format!("{subfolder}/{}", s.name);
    }
    Ok(())
}

/// webshart 0.6.0 keys a Hub repository's shards by file name: two tars of
/// one name in different folders would make it drop one.
fn check_leaf_names(discovery: &Discovery) -> Result<(), CoordinatorError> {
    let mut seen = std::collections::HashMap::new();
    for s in &discovery.shards {
        let leaf = s.name.rsplit('/').next().unwrap_or(&s.name);
        if let Some(first) = seen.insert(leaf, &s.name) {
            return Err(CoordinatorError::Unsupported(format!(
                "--mode index: the Hub shards {first} and {} share the file name {leaf}, and \
                 webshart 0.6.0 reads only one tar of each name in a repository: index each \
                 folder as its own job (hf://datasets/OWNER/NAME/FOLDER, its own --output)",
                s.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::ShardSource;
    use shardprep_core::manifest::ShardIdentity;

    fn remote(url: &str) -> InputSpec {
        InputSpec::Remote(url.into())
    }

    fn discovery(shards: Vec<ShardSource>) -> Discovery {
        Discovery {
            shards,
            refused: Vec::new(),
        }
    }

    fn shard(name: &str, url: &str) -> ShardSource {
        ShardSource {
            name: name.into(),
            path: url.into(),
            identity: ShardIdentity {
                size: 1,
                mtime_ns: 0,
                ..Default::default()
            },
            url: Some(url.into()),
        }
    }

    #[test]
    fn hub_folders_are_sources_other_stores_are_refused_with_what_to_do() {
        let src = before_listing(&remote("hf://datasets/o/n/data")).expect("hub");
        assert_eq!(
            src,
            Some(WebshartSource::Hub {
                repo: "o/n".into(),
                subfolder: "data".into()
            })
        );
        assert!(before_listing(&remote("hf://datasets/o/n@main")).is_ok());
        for (url, says) in [
            ("s3://b/p/", "mount"),
            ("https://h/x-{0..3}.tar", "mount"),
            ("hf://datasets/o/n@v2/data", "main revision"),
            ("hf://datasets/o/n/data/x.tar", "not single tars"),
            ("hf://datasets/o/n/d-{0..2}.tar", "brace"),
        ] {
            let e = before_listing(&remote(url)).expect_err(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn hub_shards_are_named_by_their_path_in_the_repository() {
        let mut root = "hf://datasets/o/n/data/".to_string();
        let mut d = discovery(vec![
            shard("a.tar", "hf://datasets/o/n/data/a.tar"),
            shard("sub/b.tar", "hf://datasets/o/n/data/sub/b.tar"),
        ]);
        let known = before_listing(&remote("hf://datasets/o/n/data")).expect("hub");
        after_listing(known, &mut root, &mut d).expect("renamed");
        assert_eq!(root, "hf://datasets/o/n/");
        let names: Vec<_> = d.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["data/a.tar", "data/sub/b.tar"]);
    }

    #[test]
    fn same_file_names_in_two_hub_folders_and_remote_lists_are_refused() {
        let mut root = "hf://datasets/o/n/".to_string();
        let mut d = discovery(vec![
            shard("a/x.tar", "hf://datasets/o/n/a/x.tar"),
            shard("b/x.tar", "hf://datasets/o/n/b/x.tar"),
        ]);
        let known = before_listing(&remote("hf://datasets/o/n")).expect("hub");
        let e = after_listing(known, &mut root, &mut d).expect_err("dup");
        assert!(e.to_string().contains("share the file name x.tar"), "{e}");
        let e = after_listing(None, &mut root, &mut d).expect_err("remote list");
        assert!(e.to_string().contains("local paths only"), "{e}");
        let mut d = discovery(vec![shard("x.tar", "/data/t/x.tar")]);
        let mut root = "/data/t/".to_string();
        let src = after_listing(None, &mut root, &mut d).expect("local list");
        assert_eq!(src, WebshartSource::Folder("/data/t".into()));
    }
}
