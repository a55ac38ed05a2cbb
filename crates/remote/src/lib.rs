//! Remote webdataset shards for shardprep.
//!
//! [`list`] turns an input location into a sorted [`Listing`] of `*.tar` shards, each with an
//! identity (size and ETag or last-modified); [`open_blocking`] streams one shard into a
//! blocking [`std::io::Read`] with bounded read-ahead, resuming dropped connections with range
//! requests. Locations:
//!
//! - `s3://BUCKET/PREFIX/` (also `gs://`, `az://`): every `*.tar` under the prefix, with
//!   credentials, region and endpoint from the standard environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//!   `AWS_ALLOW_HTTP=true` for a plain-http MinIO/Ceph endpoint, ...).
//! - `https://HOST/PATH/data-{000000..000068}.tar`: webdataset brace notation, see
//!   [`expand_braces`]; every URL is checked with a HEAD request.
//! - `hf://datasets/OWNER/NAME[@REVISION][/PATH]`: listed through the Hub's tree API and read
//!   through its `resolve` URLs, with `HF_TOKEN` as bearer token and `HF_ENDPOINT` replacing
//!   `https://huggingface.co`.
//! - A single `*.tar` URL of any of these kinds, or a brace pattern of any of them.
//!
//! All I/O goes through the `object_store` crate. Error messages name the URL, passed
//! through [`redact`]: never credentials or presigned query strings.

mod braces;
mod error;
mod hub;
mod list;
mod location;
mod ranged;
mod reader;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use braces::{MAX_EXPANSION, expand_braces};
pub use error::RemoteError;
pub use list::{list, list_file};
pub use location::HF_DEFAULT_ENDPOINT;
pub use ranged::{MAX_SPAN, MIN_SPAN, RangedObject, open_ranged};
pub use reader::{ReadOptions, RemoteReader, open_blocking, open_blocking_with};

/// One shard of a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemoteShard {
    /// Shard id relative to the listing's root, e.g. `data-000000.tar` (may contain '/').
    pub name: String,
    /// Full URL to open (or, for a local entry of an input list, its absolute path).
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag (without quotes), else last-modified (RFC 3339), else the Hub's LFS/Xet/git
    /// hash; `""` when the server gives none. Size + version identify the content.
    pub version: String,
}

/// The shards of one input location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The input location, ending with '/': every shard URL starts with it and workers
    /// accept only URLs under it ([`is_under`]).
    pub root: String,
    /// Shards sorted by name, names unique.
    pub shards: Vec<RemoteShard>,
}

impl Listing {
    /// The listing of `shards` under `root`: sorted by name; a name listed
    /// twice, or no shard at all, is an error.
    pub(crate) fn from_shards(
        root: String,
        shards: Vec<RemoteShard>,
    ) -> Result<Listing, RemoteError> {
        let mut by_name = BTreeMap::new();
        for shard in shards {
            if let Some(previous) = by_name.insert(shard.name.clone(), shard) {
                return Err(RemoteError::invalid(
                    &previous.url,
                    "listed twice (shard names must be unique)",
                ));
            }
        }
        if by_name.is_empty() {
            return Err(RemoteError::NoShards {
                root: redact(&root),
            });
        }
        Ok(Listing {
            root,
            shards: by_name.into_values().collect(),
        })
    }

    /// Sum of the shard sizes.
    pub fn total_size(&self) -> u64 {
        self.shards.iter().map(|s| s.size).sum()
    }
}

/// A `hf://datasets/OWNER/NAME[@REVISION][/PATH]` location, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubLocation {
    pub owner: String,
    pub name: String,
    /// Branch, tag or commit as written; `None` means `main`.
    pub revision: Option<String>,
    /// Path inside the repository, without leading or trailing '/' (may be empty).
    pub path: String,
}

/// The Hub dataset location `input` names; `Ok(None)` for any other scheme or a local path.
pub fn hub_location(input: &str) -> Result<Option<HubLocation>, RemoteError> {
    let input = input.trim();
    let is_hub = input
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("hf://"));
    if !is_hub {
        return Ok(None);
    }
    match location::Location::parse(input)? {
        location::Location::Hub(h) => Ok(Some(HubLocation {
            owner: h.owner,
            name: h.name,
            revision: h.revision,
            path: h.path,
        })),
        _ => Ok(None),
    }
}

const REMOTE_SCHEMES: [&str; 6] = ["s3://", "gs://", "az://", "http://", "https://", "hf://"];

/// Whether `input` names a remote location (`s3://`, `gs://`, `az://`, `http://`,
/// `https://` or `hf://`, case-insensitive) rather than a local path.
pub fn is_remote(input: &str) -> bool {
    let input = input.trim_start();
    REMOTE_SCHEMES.iter().any(|scheme| {
        input
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
    })
}

/// Whether `url` lies under `root` (a [`Listing::root`]): `url` extends `root` past a '/'
/// boundary (or equals a `root` naming a file), and contains no `.`/`..` segment (also percent-encoded) nor, for a
/// URL, a backslash — HTTP clients normalise those, which could escape the root. Workers use
/// it to refuse URLs outside the input location.
pub fn is_under(root: &str, url: &str) -> bool {
    if root.is_empty() || url.contains('\0') || has_dot_segment(url) {
        return false;
    }
    if is_remote(url) && url.contains('\\') {
        return false;
    }
    if url == root {
        return !root.ends_with('/');
    }
    let dir = root.trim_end_matches('/');
    url.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

fn has_dot_segment(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    path.split(['/', '\\']).any(|segment| {
        let decoded = location::percent_decode(segment);
        decoded == "." || decoded == ".."
    })
}

/// Query parameters known to carry no secret, shown by [`redact`].
const PLAIN_QUERY_KEYS: [&str; 9] = [
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "recursive",
    "expand",
    "X-Amz-Algorithm",
    "X-Amz-Date",
    "X-Amz-Expires",
];

/// `url` for messages: userinfo replaced by `***`, query values by `***` (but for a few
/// harmless listing and presigning parameters), fragment dropped.
/// Strings without `://` (local paths) are returned unchanged.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***@");
            out.push_str(&authority[at + 1..]);
        }
        None => out.push_str(authority),
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, v))
                    if !v.is_empty()
                        && !PLAIN_QUERY_KEYS.iter().any(|p| p.eq_ignore_ascii_case(k)) =>
                {
                    format!("{k}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&redacted.join("&"));
    }
    out
}
