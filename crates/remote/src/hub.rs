//! Listing a folder of a Hugging Face Hub dataset through the tree API:
//! `GET {endpoint}/api/datasets/OWNER/NAME/tree/REV/PATH?recursive=true` returns a JSON array
//! of `{type, path, size, oid, lfs?: {oid, size}, xetHash?}`, paginated with a
//! `Link: <...>; rel="next"` header.

use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use serde::Deserialize;

use crate::error::{error_chain, scrub};
use crate::location::{
    HubPath, api_client_options, encode_segment, ensure_crypto_provider, hub_auth_headers,
    hub_endpoint,
};
use crate::{Listing, RemoteError, RemoteShard, redact};

/// Tries of one API request (429, 5xx and transport errors are retried).
const API_ATTEMPTS: u32 = 4;

/// Pages followed at most (1000 entries each on huggingface.co).
const MAX_PAGES: usize = 100_000;

#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    lfs: Option<LfsInfo>,
    #[serde(default, rename = "xetHash")]
    xet_hash: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    oid: String,
    #[serde(default)]
    size: Option<u64>,
}

const HUB_HINT: &str = " (set HF_TOKEN; a gated dataset also needs its terms accepted on the Hub; \
the Hub answers 401 for a repository that does not exist)";

/// All `*.tar` files under `hub.path`, recursively.
pub(crate) async fn list_tree(hub: &HubPath) -> Result<Listing, RemoteError> {
    ensure_crypto_provider();
    let endpoint = hub_endpoint();
    let root = match hub.path.as_str() {
        "" => format!("{}/", hub.repo_url()),
        p => format!("{}/{p}/", hub.repo_url()),
    };
    let mut url = format!(
        "{endpoint}/api/datasets/{}/{}/tree/{}",
        encode_segment(&hub.owner),
        encode_segment(&hub.name),
        hub.revision_segment()
    );
    for segment in hub.path.split('/').filter(|s| !s.is_empty()) {
        url.push('/');
        url.push_str(&encode_segment(segment));
    }
    url.push_str("?recursive=true");

    let client = ReqwestConnector::default()
        .connect(&api_client_options())
        .map_err(|e| RemoteError::from_store(&endpoint, &e))?;
    let auth = hub_auth_headers();
    let prefix = match hub.path.as_str() {
        "" => String::new(),
        p => format!("{p}/"),
    };

    let mut shards = Vec::new();
    let mut next = Some(url);
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(RemoteError::Store {
                url: redact(&url),
                detail: format!("more than {MAX_PAGES} pages"),
            });
        }
        let (body, link) = get_page(&client, &url, auth.as_ref()).await?;
        let entries: Vec<TreeEntry> =
            serde_json::from_slice(&body).map_err(|e| RemoteError::Store {
                url: redact(&url),
                detail: format!("unexpected tree API response: {e}"),
            })?;
        for entry in entries {
            if entry.kind != "file" || !entry.path.ends_with(".tar") {
                continue;
            }
            let Some(name) = entry.path.strip_prefix(&prefix) else {
                continue;
            };
            let size = entry
                .lfs
                .as_ref()
                .and_then(|l| l.size)
                .unwrap_or(entry.size);
            let version = entry
                .lfs
                .as_ref()
                .map(|l| l.oid.clone())
                .or(entry.xet_hash.clone())
                .unwrap_or(entry.oid.clone());
            shards.push(RemoteShard {
                name: name.to_string(),
                url: format!("{root}{name}"),
                size,
                version,
            });
        }
        next = match link.as_deref().and_then(next_link) {
            Some(link) => Some(same_endpoint(&endpoint, &url, link)?),
            None => None,
        };
    }
    Listing::from_shards(root, shards)
}

/// GET one page of the tree API, retrying 429, 5xx and transport errors a few times.
/// Returns the body and the `Link` header.
async fn get_page(
    client: &HttpClient,
    url: &str,
    auth: Option<&object_store::HeaderMap>,
) -> Result<(bytes::Bytes, Option<String>), RemoteError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .header(http::header::ACCEPT, "application/json");
        for (name, value) in auth.into_iter().flatten() {
            request = request.header(name, value);
        }
        let request = request
            .body(HttpRequestBody::empty())
            .map_err(|e| RemoteError::invalid(url, e.to_string()))?;
        let error = match client.execute(request).await {
            Ok(response) => {
                let status = response.status();
                let link = response
                    .headers()
                    .get(http::header::LINK)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match response.into_body().bytes().await {
                    Ok(body) if status.is_success() => return Ok((body, link)),
                    Ok(body) => status_error(url, status.as_u16(), &body),
                    Err(e) => RemoteError::Store {
                        url: redact(url),
                        detail: scrub(&error_chain(&e)),
                    },
                }
            }
            Err(e) => RemoteError::Store {
                url: redact(url),
                detail: scrub(&error_chain(&e)),
            },
        };
        if !error.is_transient() || attempt >= API_ATTEMPTS {
            return Err(error);
        }
        let delay = std::time::Duration::from_secs(1 << (attempt - 1));
        tracing::warn!(%error, attempt, delay_s = delay.as_secs(), "Hub API request failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

fn status_error(url: &str, status: u16, body: &[u8]) -> RemoteError {
    let text = String::from_utf8_lossy(body);
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.chars().take(200).collect());
    let detail = scrub(&detail);
    let url = redact(url);
    match status {
        404 => RemoteError::NotFound { url, detail },
        401 | 403 => RemoteError::PermissionDenied {
            url,
            status,
            hint: HUB_HINT,
            detail,
        },
        429 | 500..=599 => RemoteError::Store {
            url,
            detail: format!("HTTP {status}: {detail}"),
        },
        _ => RemoteError::InvalidInput {
            input: url,
            reason: format!("HTTP {status}: {detail}"),
        },
    }
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| target.trim().trim_start_matches('<').trim_end_matches('>'))
    })
}

/// Resolve a next-page link and refuse one leaving the endpoint (the token goes with it).
fn same_endpoint(endpoint: &str, current: &str, link: &str) -> Result<String, RemoteError> {
    let base =
        url::Url::parse(current).map_err(|e| RemoteError::invalid(current, e.to_string()))?;
    let next = base
        .join(link)
        .map_err(|e| RemoteError::invalid(link, e.to_string()))?;
    let allowed = url::Url::parse(endpoint)
        .map(|e| e.origin() == next.origin())
        .unwrap_or(false);
    if !allowed {
        return Err(RemoteError::Store {
            url: redact(current),
            detail: format!(
                "next page {} leaves the Hub endpoint",
                redact(next.as_str())
            ),
        });
    }
    Ok(next.to_string())
}
