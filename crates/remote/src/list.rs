//! Listing inputs: bucket prefixes, brace patterns, single URLs, Hub folders, input lists.

use std::path::{Component, Path as FsPath, PathBuf};

use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::location::{
    BucketKind, Location, Purpose, StoreCache, bucket_path, bucket_store, target,
};
use crate::{Listing, RemoteError, RemoteShard, expand_braces, hub, is_remote, is_under, redact};

/// HEAD requests in flight while checking a list of URLs.
const HEAD_CONCURRENCY: usize = 16;

/// List the `*.tar` shards of a remote input.
///
/// - `s3://B/P/`, `gs://B/P/`, `az://C/P/`: every key under `P/` (recursively) ending in
///   `.tar`; root `s3://B/P/`.
/// - A pattern with braces (any scheme): its expansion, each URL checked by a HEAD request;
///   root = the pattern up to the last '/' before the first '{'.
/// - A single URL ending in `.tar`: that object; root = its folder.
/// - `hf://datasets/O/N[@REV][/P]`: the Hub's tree API (recursive, paginated); root
///   `hf://datasets/O/N[@REV]/P/`.
///
/// Errors: missing bucket, 401/403, 404 (naming the URL), a brace pattern expanding to
/// nothing, no `*.tar` found.
pub async fn list(input: &str) -> Result<Listing, RemoteError> {
    let input = input.trim();
    if !is_remote(input) {
        return Err(RemoteError::invalid(
            input,
            "not a remote location (s3://, gs://, az://, http(s)://, hf://)",
        ));
    }
    if input.contains(['{', '}']) {
        let urls = expand_braces(input)?;
        let cut = input.find('{').unwrap_or(input.len());
        let root = dir_of(&input[..cut]);
        check_root(input, root)?;
        return list_urls(root.to_string(), urls).await;
    }
    let location = Location::parse(input)?;
    let names_object = match &location {
        Location::Bucket { key, .. } => key.ends_with(".tar"),
        Location::Http { url } => url.path().ends_with(".tar"),
        Location::Hub(hub) => hub.path.ends_with(".tar"),
    };
    if names_object {
        let root = dir_of(without_query(input));
        check_root(input, root)?;
        return list_urls(root.to_string(), vec![input.to_string()]).await;
    }
    match location {
        Location::Bucket { kind, bucket, key } => list_bucket(kind, &bucket, &key).await,
        Location::Hub(hub) => hub::list_tree(&hub).await,
        Location::Http { .. } => Err(RemoteError::invalid(
            input,
            "an HTTP folder cannot be listed: give brace notation \
             (https://host/path/data-{000000..000068}.tar) or --input-list",
        )),
    }
}

/// List the shards named in an input-list file: one URL or path per line; blank lines and
/// lines starting with `#` are skipped; brace notation is expanded per line.
///
/// Entries are either all remote, sharing one store (scheme and host, bucket or Hub
/// repository), or all local. Relative local paths are taken relative to the list file's
/// folder; a local shard's `url` is its absolute path and its `version` its modification
/// time (`mtime:SECONDS.NANOS`). Root = the longest common prefix of the entries, cut after
/// its last '/'. Entries must be unique.
pub async fn list_file(path: &FsPath) -> Result<Listing, RemoteError> {
    let io_err = |source| RemoteError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io_err)?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        entries.extend(expand_braces(line)?);
    }
    let shown = path.display().to_string();
    if entries.is_empty() {
        return Err(RemoteError::invalid(
            &shown,
            "the input list has no entries",
        ));
    }
    let remote = entries.iter().filter(|e| is_remote(e)).count();
    if remote == entries.len() {
        let first = Location::parse(&entries[0])?.store_key();
        for entry in &entries {
            let key = Location::parse(entry)?.store_key();
            if key != first {
                return Err(RemoteError::invalid(
                    &shown,
                    format!(
                        "entries must share one location; found {} and {}",
                        redact(&first),
                        redact(&key)
                    ),
                ));
            }
        }
        let bases: Vec<String> = entries
            .iter()
            .map(|e| without_query(e).to_string())
            .collect();
        let root = common_dir(&bases).to_string();
        check_root(&entries[0], &root)?;
        return list_urls(root, entries).await;
    }
    if remote > 0 {
        return Err(RemoteError::invalid(
            &shown,
            "mixes remote URLs and local paths; use one kind per list",
        ));
    }
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(FsPath::new("."));
    let base = std::path::absolute(folder).map_err(io_err)?;
    list_local(&base, &entries)
}

fn list_local(base: &FsPath, entries: &[String]) -> Result<Listing, RemoteError> {
    let mut files = Vec::with_capacity(entries.len());
    for entry in entries {
        let raw = entry.strip_prefix("file://").unwrap_or(entry);
        let joined = normalize(&base.join(raw));
        let Some(text) = joined.to_str() else {
            return Err(RemoteError::invalid(entry, "path is not valid UTF-8"));
        };
        let meta = std::fs::metadata(&joined).map_err(|source| RemoteError::Io {
            path: text.to_string(),
            source,
        })?;
        if !meta.is_file() {
            return Err(RemoteError::invalid(text, "not a regular file"));
        }
        let version = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("mtime:{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_default();
        files.push((text.to_string(), meta.len(), version));
    }
    let urls: Vec<String> = files.iter().map(|(u, _, _)| u.clone()).collect();
    let root = common_dir(&urls).to_string();
    let shards = files
        .into_iter()
        .map(|(url, size, version)| RemoteShard {
            name: url[root.len()..].to_string(),
            url,
            size,
            version,
        })
        .collect();
    Listing::from_shards(root, shards)
}

/// Lexical normalisation: drop `.` and resolve `..` without touching the file system (so a
/// symlinked shard keeps its listed name).
fn normalize(path: &FsPath) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

async fn list_bucket(kind: BucketKind, bucket: &str, key: &str) -> Result<Listing, RemoteError> {
    let prefix = key.trim_matches('/');
    let root = match prefix {
        "" => format!("{}{bucket}/", scheme_of(kind)),
        p => format!("{}{bucket}/{p}/", scheme_of(kind)),
    };
    let store = bucket_store(kind, bucket, Purpose::List)?;
    let prefix_path = (!prefix.is_empty()).then(|| bucket_path(prefix));
    let metas: Vec<ObjectMeta> = store
        .list(prefix_path.as_ref())
        .try_collect()
        .await
        .map_err(|e| match RemoteError::from_store(&root, &e) {
            RemoteError::NotFound { url, detail } => RemoteError::MissingBucket {
                url,
                bucket: bucket.to_string(),
                detail,
            },
            other => other.with_hint(kind.credential_hint()),
        })?;
    let strip = match &prefix_path {
        Some(p) => format!("{}/", p.as_ref()),
        None => String::new(),
    };
    let shards = metas
        .iter()
        .filter_map(|meta| {
            let location = meta.location.as_ref();
            let name = location.strip_prefix(strip.as_str())?;
            name.ends_with(".tar").then(|| RemoteShard {
                name: name.to_string(),
                url: format!("{root}{name}"),
                size: meta.size,
                version: version_of(meta),
            })
        })
        .collect();
    Listing::from_shards(root, shards)
}

fn scheme_of(kind: BucketKind) -> &'static str {
    match kind {
        BucketKind::S3 => "s3://",
        BucketKind::Gcs => "gs://",
        BucketKind::Azure => "az://",
    }
}

/// HEAD every URL (bounded concurrency, input order kept) and build the listing.
async fn list_urls(root: String, mut urls: Vec<String>) -> Result<Listing, RemoteError> {
    urls.sort();
    urls.dedup();
    let mut cache = StoreCache::default();
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        if !is_under(&root, &url) {
            return Err(RemoteError::invalid(
                &url,
                format!("not under the input location {}", redact(&root)),
            ));
        }
        let target = target(&url, Purpose::List, &mut cache)?;
        targets.push((url, target));
    }
    let shards: Vec<RemoteShard> = stream::iter(targets)
        .map(|(url, target)| {
            let root = &root;
            async move {
                let meta = target
                    .store
                    .head(&target.path)
                    .await
                    .map_err(|e| RemoteError::from_store(&url, &e).with_hint(target.hint))?;
                Ok::<_, RemoteError>(RemoteShard {
                    name: without_query(&url[root.len()..]).to_string(),
                    size: meta.size,
                    version: version_of(&meta),
                    url,
                })
            }
        })
        .buffered(HEAD_CONCURRENCY)
        .try_collect()
        .await?;
    Listing::from_shards(root, shards)
}

/// ETag without quotes, else last-modified, else the store's version id, else "".
pub(crate) fn version_of(meta: &ObjectMeta) -> String {
    if let Some(etag) = meta.e_tag.as_deref().filter(|e| !e.is_empty()) {
        return etag.trim_matches('"').to_string();
    }
    if meta.last_modified.timestamp_nanos_opt().unwrap_or(0) != 0 {
        return meta.last_modified.to_rfc3339();
    }
    meta.version.clone().unwrap_or_default()
}

/// `url` without its query string and fragment (a shard name never carries a signature).
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// `s` up to and including its last '/'.
fn dir_of(s: &str) -> &str {
    s.rfind('/').map_or("", |i| &s[..=i])
}

/// Longest common prefix of `items`, cut after its last '/'.
fn common_dir(items: &[String]) -> &str {
    let first = items.first().map_or("", String::as_str);
    let mut len = first.len();
    for item in &items[1..] {
        len = first
            .bytes()
            .zip(item.bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    dir_of(&first[..len])
}

/// A root must name at least a bucket, a host or a Hub repository (with its '/').
fn check_root(input: &str, root: &str) -> Result<(), RemoteError> {
    let after_scheme = root.split_once("://").map_or(root, |(_, rest)| rest);
    let needed = if root.to_ascii_lowercase().starts_with("hf://") {
        3 // datasets/OWNER/NAME/
    } else {
        1 // BUCKET/ or HOST/
    };
    if after_scheme.matches('/').count() < needed {
        return Err(RemoteError::invalid(
            input,
            "braces and list entries may only vary below the bucket, host or repository",
        ));
    }
    Ok(())
}
