//! Errors of the remote layer. Every message names the (redacted) location it is about and
//! never carries credentials: URLs go through [`crate::redact`], store messages through
//! [`scrub`].

use std::io;

/// An error listing or reading remote shards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The input is not a location this crate understands.
    #[error("invalid input {input}: {reason}")]
    InvalidInput { input: String, reason: String },
    /// A brace pattern is malformed, or expands to nothing.
    #[error("brace pattern {pattern}: {reason}")]
    Braces { pattern: String, reason: String },
    /// The bucket or container of an s3://, gs:// or az:// input does not exist.
    #[error("{url}: bucket {bucket:?} does not exist (or the endpoint is wrong): {detail}")]
    MissingBucket {
        url: String,
        bucket: String,
        detail: String,
    },
    /// HTTP 404 or the store's equivalent.
    #[error("{url}: not found (404): {detail}")]
    NotFound { url: String, detail: String },
    /// HTTP 401/403 or the store's equivalent: missing or insufficient credentials.
    #[error("{url}: access denied ({status}); check the credentials{hint}: {detail}")]
    PermissionDenied {
        url: String,
        status: u16,
        hint: &'static str,
        detail: String,
    },
    /// Listing found no `*.tar` object under the input location.
    #[error("{root}: no *.tar shards found")]
    NoShards { root: String },
    /// The store refused the request for good (e.g. a server that ignores range requests).
    #[error("{url}: {detail}")]
    Unsupported { url: String, detail: String },
    /// Any other failure of the store or of the HTTP request.
    #[error("{url}: {detail}")]
    Store { url: String, detail: String },
    /// A read failed and the retries with range requests were exhausted.
    #[error("{url}: read failed at byte {offset} after {attempts} attempts: {detail}")]
    ReadFailed {
        url: String,
        offset: u64,
        attempts: u32,
        detail: String,
    },
    /// The object changed between two requests of the same read.
    #[error("{url}: object changed while being read ({detail}); restart the shard")]
    Changed { url: String, detail: String },
    /// A local file of an input list could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl RemoteError {
    /// The HTTP-like status of the error, when there is one (404, 403, 401).
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::NotFound { .. } | RemoteError::MissingBucket { .. } => Some(404),
            RemoteError::PermissionDenied { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying the same request later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Store { .. } | RemoteError::ReadFailed { .. }
        )
    }

    pub(crate) fn invalid(input: &str, reason: impl Into<String>) -> Self {
        RemoteError::InvalidInput {
            input: crate::redact(input),
            reason: reason.into(),
        }
    }

    /// Map an object_store error about `url`. Some stores report a 404/403 of a list request
    /// as a generic error: the status is then read from its message.
    pub(crate) fn from_store(url: &str, err: &object_store::Error) -> Self {
        let url = crate::redact(url);
        let chain = error_chain(err);
        let status = match err {
            object_store::Error::NotFound { .. } => Some(404),
            object_store::Error::PermissionDenied { .. } => Some(403),
            object_store::Error::Unauthenticated { .. } => Some(401),
            _ => status_in(&chain),
        };
        let detail = tidy(&scrub(&chain));
        match status {
            Some(404) => RemoteError::NotFound { url, detail },
            _ if matches!(
                err,
                object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotModified { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ) =>
            {
                RemoteError::Unsupported { url, detail }
            }
            Some(status @ (401 | 403)) => RemoteError::PermissionDenied {
                url,
                status,
                hint: "",
                detail,
            },
            _ => RemoteError::Store { url, detail },
        }
    }

    /// Add a hint on where credentials come from to a permission error.
    pub(crate) fn with_hint(mut self, new_hint: &'static str) -> Self {
        if let RemoteError::PermissionDenied { hint, .. } = &mut self {
            *hint = new_hint;
        }
        self
    }
}

impl From<RemoteError> for io::Error {
    fn from(e: RemoteError) -> Self {
        let kind = match &e {
            RemoteError::NotFound { .. } | RemoteError::MissingBucket { .. } => {
                io::ErrorKind::NotFound
            }
            RemoteError::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
            RemoteError::InvalidInput { .. } | RemoteError::Braces { .. } => {
                io::ErrorKind::InvalidInput
            }
            RemoteError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// The error and its sources joined with ": ", without repeating a source the parent
/// message already contains.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Redact every URL-looking token in a free-form message (store errors quote request URLs,
/// which may carry presigned query strings or userinfo).
pub(crate) fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(pos) = rest.find("://") {
        // Start of the scheme: walk back over scheme characters.
        let scheme_start = rest[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |i| i + 1);
        let end = rest[pos..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| pos + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&crate::redact(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The HTTP status quoted in an object_store message ("... status code: 404 Not Found ...").
fn status_in(message: &str) -> Option<u16> {
    let rest = &message[message.find("status code: ")? + "status code: ".len()..];
    rest.get(..3)?.parse().ok()
}

/// Shorten an XML error body (S3, Azure) to its code and message.
pub(crate) fn tidy(detail: &str) -> String {
    let Some(start) = detail.find("<?xml").or_else(|| detail.find("<Error>")) else {
        return detail.to_string();
    };
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let from = detail.find(&open)? + open.len();
        let len = detail[from..].find("</")?;
        Some(detail[from..from + len].to_string())
    };
    let mut out = detail[..start].trim_end().to_string();
    for part in [tag("Code"), tag("Message")].into_iter().flatten() {
        out.push(' ');
        out.push_str(&part);
    }
    out
}
