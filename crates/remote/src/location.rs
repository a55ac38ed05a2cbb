//! Parsing of remote locations and construction of the object_store that serves them.

use std::sync::{Arc, Once};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::{Path, PathPart};
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};

use crate::RemoteError;

/// Default Hugging Face Hub endpoint, replaced by `HF_ENDPOINT`.
pub const HF_DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Install rustls' ring provider as the process default once (reqwest is built without a
/// provider of its own). Keeps a provider another part of the program installed first.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An object store kind addressed as `SCHEME://BUCKET/KEY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketKind {
    S3,
    Gcs,
    Azure,
}

impl BucketKind {
    fn scheme(self) -> &'static str {
        match self {
            BucketKind::S3 => "s3",
            BucketKind::Gcs => "gs",
            BucketKind::Azure => "az",
        }
    }

    /// Where this store's credentials come from, for permission errors.
    pub(crate) fn credential_hint(self) -> &'static str {
        match self {
            BucketKind::S3 => {
                " (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL)"
            }
            BucketKind::Gcs => " (GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS)",
            BucketKind::Azure => {
                " (AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY or a SAS)"
            }
        }
    }
}

/// A dataset repository on the Hugging Face Hub: `hf://datasets/OWNER/NAME[@REV][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HubPath {
    pub owner: String,
    pub name: String,
    /// Branch, tag or commit; `main` when absent.
    pub revision: Option<String>,
    /// Path inside the repository, without leading or trailing '/'.
    pub path: String,
}

impl HubPath {
    /// `hf://datasets/OWNER/NAME[@REV]`, the part every URL of this repository starts with.
    pub fn repo_url(&self) -> String {
        match &self.revision {
            Some(rev) => format!("hf://datasets/{}/{}@{rev}", self.owner, self.name),
            None => format!("hf://datasets/{}/{}", self.owner, self.name),
        }
    }

    /// The revision as one encoded URL segment (`refs/pr/1` → `refs%2Fpr%2F1`).
    pub fn revision_segment(&self) -> String {
        let rev = self.revision.as_deref().unwrap_or("main");
        encode_segment(&percent_decode(rev))
    }
}

/// A parsed remote location.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// s3://, gs://, az://; `key` is the raw key or prefix (no leading '/').
    Bucket {
        kind: BucketKind,
        bucket: String,
        key: String,
    },
    /// http:// or https://.
    Http { url: url::Url },
    /// hf://datasets/...
    Hub(HubPath),
}

impl Location {
    pub fn parse(input: &str) -> Result<Location, RemoteError> {
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(RemoteError::invalid(input, "not a URL"));
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "s3" => BucketKind::S3,
            "gs" => BucketKind::Gcs,
            "az" => BucketKind::Azure,
            "http" | "https" => {
                let url = url::Url::parse(input)
                    .map_err(|e| RemoteError::invalid(input, format!("bad URL: {e}")))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(RemoteError::invalid(input, "URL without a host"));
                }
                return Ok(Location::Http { url });
            }
            "hf" => return parse_hub(input, rest).map(Location::Hub),
            other => {
                return Err(RemoteError::invalid(
                    input,
                    format!(
                        "unsupported scheme {other:?} (use s3://, gs://, az://, http(s):// or hf://)"
                    ),
                ));
            }
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RemoteError::invalid(input, "missing bucket name"));
        }
        if rest.contains(['?', '#']) {
            return Err(RemoteError::invalid(
                input,
                "query strings are not supported in bucket URLs",
            ));
        }
        Ok(Location::Bucket {
            kind,
            bucket: bucket.to_string(),
            key: key.trim_start_matches('/').to_string(),
        })
    }

    /// Scheme and authority (`s3://bucket`, `https://host:port`, `hf://datasets/o/n`): entries
    /// of one input list must share it.
    pub fn store_key(&self) -> String {
        match self {
            Location::Bucket { kind, bucket, .. } => format!("{}://{bucket}", kind.scheme()),
            Location::Http { url } => url.origin().ascii_serialization(),
            Location::Hub(hub) => hub.repo_url(),
        }
    }
}

fn parse_hub(input: &str, rest: &str) -> Result<HubPath, RemoteError> {
    let Some(rest) = rest.strip_prefix("datasets/") else {
        return Err(RemoteError::invalid(
            input,
            "only dataset repositories are supported: hf://datasets/OWNER/NAME[/PATH]",
        ));
    };
    let mut parts = rest.splitn(3, '/');
    let owner = parts.next().unwrap_or_default();
    let name_rev = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default().trim_matches('/');
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r.to_string())),
        Some(_) => return Err(RemoteError::invalid(input, "empty revision after '@'")),
        None => (name_rev, None),
    };
    if owner.is_empty() || name.is_empty() {
        return Err(RemoteError::invalid(
            input,
            "expected hf://datasets/OWNER/NAME[@REVISION][/PATH]",
        ));
    }
    if path.contains(['?', '#']) {
        return Err(RemoteError::invalid(
            input,
            "query strings are not supported in hf:// URLs",
        ));
    }
    Ok(HubPath {
        owner: owner.to_string(),
        name: name.to_string(),
        revision,
        path: path.to_string(),
    })
}

/// What a store is built for: listing (object_store's own retries, 30 s request timeout) or
/// streaming one object (no overall timeout and no object_store retries: the reader has its
/// own idle timeout and resumes with range requests itself).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    List,
    Read,
}

impl Purpose {
    fn retry(self) -> RetryConfig {
        match self {
            Purpose::List => RetryConfig::default(),
            Purpose::Read => RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::from_secs(60),
            },
        }
    }

    /// Client settings as (key, value) pairs, applied unless the user set the key.
    fn client_settings(self) -> Vec<(ClientConfigKey, String)> {
        match self {
            Purpose::List => Vec::new(),
            // One GET streams a whole shard at the pace of its consumer: an overall request
            // timeout would cut it. Stalls are caught by the reader's own idle timeout, which
            // (unlike reqwest's read timeout) does not count time spent waiting for the
            // consumer.
            Purpose::Read => vec![(ClientConfigKey::Timeout, "7days".to_string())],
        }
    }

    fn client_options(self) -> ClientOptions {
        let mut options = ClientOptions::new().with_allow_http(true);
        for (key, value) in self.client_settings() {
            options = options.with_config(key, value);
        }
        options
    }
}

/// The store for a bucket, configured from the standard environment variables.
pub(crate) fn bucket_store(
    kind: BucketKind,
    bucket: &str,
    purpose: Purpose,
) -> Result<Arc<dyn ObjectStore>, RemoteError> {
    ensure_crypto_provider();
    let url = format!("{}://{bucket}/", kind.scheme());
    let map = |e: object_store::Error| RemoteError::from_store(&url, &e);
    let store: Arc<dyn ObjectStore> = match kind {
        BucketKind::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(purpose.retry());
            for (key, value) in purpose.client_settings() {
                let key = AmazonS3ConfigKey::Client(key);
                if b.get_config_value(&key).is_none() {
                    b = b.with_config(key, value);
                }
            }
            Arc::new(b.build().map_err(map)?)
        }
        BucketKind::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(purpose.retry());
            for (key, value) in purpose.client_settings() {
                let key = GoogleConfigKey::Client(key);
                if b.get_config_value(&key).is_none() {
                    b = b.with_config(key, value);
                }
            }
            Arc::new(b.build().map_err(map)?)
        }
        BucketKind::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(purpose.retry());
            for (key, value) in purpose.client_settings() {
                let key = AzureConfigKey::Client(key);
                if b.get_config_value(&key).is_none() {
                    b = b.with_config(key, value);
                }
            }
            Arc::new(b.build().map_err(map)?)
        }
    };
    Ok(store)
}

/// An HTTP store rooted at `base` (plain http allowed: the URL was given by the user),
/// sending `headers` with every request (reqwest drops `Authorization` on a redirect to
/// another host).
pub(crate) fn http_store(
    base: &str,
    headers: Option<object_store::HeaderMap>,
    purpose: Purpose,
) -> Result<Arc<dyn ObjectStore>, RemoteError> {
    ensure_crypto_provider();
    let mut options = purpose.client_options();
    if let Some(headers) = headers {
        options = options.with_default_headers(headers);
    }
    let store = HttpBuilder::new()
        .with_url(base)
        .with_client_options(options)
        .with_retry(purpose.retry())
        .build()
        .map_err(|e| RemoteError::from_store(base, &e))?;
    Ok(Arc::new(store))
}

/// Client options for plain HTTP calls (the Hub's JSON API).
pub(crate) fn api_client_options() -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(true)
        .with_timeout(Duration::from_secs(60))
}

/// The Hub endpoint (`HF_ENDPOINT` or huggingface.co), without a trailing '/'.
pub(crate) fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| HF_DEFAULT_ENDPOINT.to_string())
        .trim()
        .trim_end_matches('/')
        .to_string()
}

/// `Authorization: Bearer $HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), marked sensitive.
pub(crate) fn hub_auth_headers() -> Option<object_store::HeaderMap> {
    let token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())?;
    let mut value = object_store::HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    let mut headers = object_store::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    Some(headers)
}

/// The `resolve` base URL of a Hub repository: `{endpoint}/datasets/O/N/resolve/REV`.
pub(crate) fn hub_resolve_base(hub: &HubPath) -> String {
    format!(
        "{}/datasets/{}/{}/resolve/{}",
        hub_endpoint(),
        encode_segment(&hub.owner),
        encode_segment(&hub.name),
        hub.revision_segment()
    )
}

/// An object_store path from raw (decoded) segments.
pub(crate) fn path_from_segments<'a>(segments: impl IntoIterator<Item = &'a str>) -> Path {
    segments
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(PathPart::from)
        .collect()
}

/// An object_store path for a raw bucket key or prefix.
pub(crate) fn bucket_path(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| path_from_segments(key.split('/')))
}

/// Percent-encode everything but RFC 3986 unreserved characters and sub-delims that are safe
/// in a path segment.
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes (invalid escapes are kept as they are).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// An object to head or read: its store and its path in that store.
pub(crate) struct Target {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// Where credentials come from, added to permission errors.
    pub hint: &'static str,
}

/// Stores already built during one call, by base URL (one client per bucket or host).
#[derive(Default)]
pub(crate) struct StoreCache {
    stores: std::collections::HashMap<String, Arc<dyn ObjectStore>>,
}

impl StoreCache {
    fn get_or_try(
        &mut self,
        key: String,
        make: impl FnOnce() -> Result<Arc<dyn ObjectStore>, RemoteError>,
    ) -> Result<Arc<dyn ObjectStore>, RemoteError> {
        if let Some(store) = self.stores.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = make()?;
        self.stores.insert(key, Arc::clone(&store));
        Ok(store)
    }
}

/// Resolve the URL of one object (not a prefix) to its store and path.
pub(crate) fn target(
    url: &str,
    purpose: Purpose,
    cache: &mut StoreCache,
) -> Result<Target, RemoteError> {
    match Location::parse(url)? {
        Location::Bucket { kind, bucket, key } => {
            if key.is_empty() || key.ends_with('/') {
                return Err(RemoteError::invalid(
                    url,
                    "expected an object, not a prefix",
                ));
            }
            let store = cache.get_or_try(format!("{}://{bucket}", kind.scheme()), || {
                bucket_store(kind, &bucket, purpose)
            })?;
            Ok(Target {
                store,
                path: bucket_path(&key),
                hint: kind.credential_hint(),
            })
        }
        Location::Http { url: parsed } => {
            if parsed.query().is_some() {
                // Keep the query (e.g. a presigned URL): the store's base is the whole URL.
                let mut base = parsed.clone();
                base.set_fragment(None);
                let store = http_store(base.as_str(), None, purpose)?;
                return Ok(Target {
                    store,
                    path: Path::default(),
                    hint: "",
                });
            }
            let segments: Vec<String> = parsed
                .path_segments()
                .map(|s| s.map(percent_decode).collect())
                .unwrap_or_default();
            if segments.last().is_none_or(String::is_empty) {
                return Err(RemoteError::invalid(
                    url,
                    "expected a file URL, not a folder",
                ));
            }
            let mut base = parsed.clone();
            base.set_path("/");
            base.set_fragment(None);
            let base = base.to_string();
            let store = cache.get_or_try(base.clone(), || http_store(&base, None, purpose))?;
            Ok(Target {
                store,
                path: path_from_segments(segments.iter().map(String::as_str)),
                hint: "",
            })
        }
        Location::Hub(hub) => {
            if hub.path.is_empty() {
                return Err(RemoteError::invalid(
                    url,
                    "expected a file in the repository",
                ));
            }
            let base = hub_resolve_base(&hub);
            let store = cache.get_or_try(base.clone(), || {
                http_store(&base, hub_auth_headers(), purpose)
            })?;
            Ok(Target {
                store,
                path: path_from_segments(hub.path.split('/')),
                hint: " (HF_TOKEN; gated datasets also need their terms accepted on the Hub)",
            })
        }
    }
}
