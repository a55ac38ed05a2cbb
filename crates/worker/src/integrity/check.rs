//! One image member checked while its bytes pass through: its digests, its
//! header size and (when asked) a full decode; then the verdict against what
//! its JSON claims.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;
use std::str::FromStr;

use shardprep_core::issue::IssueKind;

use super::decode::{DEFAULT_MAX_PIXELS, DecodeError, decode_check, decode_file};
use super::dims::{DimsError, image_dims};
use super::hash::{Digests, HashSpec, ImageHasher, compare_digest};

/// Largest header prefix kept while looking for a size (JPEG frame headers
/// behind big EXIF/ICC segments); an image whose size is not found within it
/// is `unreadable_image_header`.
pub const HEADER_MAX: usize = 1 << 20;
/// Streamed members up to this size are held in memory for decoding; larger
/// ones are decoded from their written file (see [`ImageCheck::finish`]).
pub const DECODE_HOLD_MAX: u64 = 4 << 20;

/// Which size goes into the table's `width`/`height`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DimsSource {
    /// The JSON's (the seed's rows).
    #[default]
    Json,
    /// The image header's, where readable (else the JSON's).
    Image,
}

impl FromStr for DimsSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(DimsSource::Json),
            "image" => Ok(DimsSource::Image),
            other => Err(format!("--dims {other:?}: use json or image")),
        }
    }
}

/// What happens to the row and caption of an image found bad.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadImage {
    /// Counted and listed; the row stays (the seed's output).
    #[default]
    Keep,
    /// Counted and listed; the row and the caption are left out.
    Skip,
}

impl FromStr for OnBadImage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(OnBadImage::Keep),
            "skip" => Ok(OnBadImage::Skip),
            other => Err(format!("--on-bad-image {other:?}: use keep or skip")),
        }
    }
}

/// The integrity checks of a job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntegrityConfig {
    pub dims: DimsSource,
    /// `--check-images decode`: decode every image fully.
    pub check_decode: bool,
    /// `--check-hashes`: the JSON fields to verify (empty: none).
    pub hashes: Vec<HashSpec>,
    pub on_bad_image: OnBadImage,
    /// Images whose header claims more pixels are not decoded (`too_many_pixels`).
    pub max_pixels: u64,
}

impl Default for IntegrityConfig {
    /// Header sizes only (always on, nearly free): the seed's output.
    fn default() -> Self {
        IntegrityConfig {
            dims: DimsSource::Json,
            check_decode: false,
            hashes: Vec::new(),
            on_bad_image: OnBadImage::Keep,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl IntegrityConfig {
    /// Whether a row must wait for its image's verdict before it is written
    /// (its dims or its presence depend on the image).
    pub fn defers_rows(&self) -> bool {
        self.dims == DimsSource::Image || self.on_bad_image == OnBadImage::Skip
    }
}

/// Why an image is bad; `as_str` is the stable key in manifests and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    DimsMismatch,
    UnreadableImageHeader,
    DecodeFailed,
    TooManyPixels,
    HashMismatch,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::DimsMismatch,
        Reason::UnreadableImageHeader,
        Reason::DecodeFailed,
        Reason::TooManyPixels,
        Reason::HashMismatch,
    ];
    /// The kind of issue this reason is counted and listed as.
    pub fn kind(self) -> IssueKind {
        match self {
            Reason::DimsMismatch => IssueKind::DimsMismatch,
            Reason::UnreadableImageHeader => IssueKind::UnreadableImageHeader,
            Reason::DecodeFailed => IssueKind::DecodeFailed,
            Reason::TooManyPixels => IssueKind::TooManyPixels,
            Reason::HashMismatch => IssueKind::HashMismatch,
        }
    }
    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing wrong with one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub detail: String,
}

/// What the bytes of one image member showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// Bytes seen.
    pub bytes: u64,
    /// Size from the header.
    pub header: Result<(u32, u32), DimsError>,
    /// Full decode: `None` when not asked, or not possible (see [`ImageCheck::finish`]).
    pub decode: Option<Result<(u32, u32), DecodeError>>,
    pub digests: Digests,
}

/// What a JSON says of its image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub width: Option<i64>,
    pub height: Option<i64>,
    /// Values of the config's hash fields, in its order.
    pub hashes: Vec<Option<String>>,
}

/// The judgement of one image against its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub problems: Vec<Problem>,
    /// The header's size, where readable.
    pub image_dims: Option<(u32, u32)>,
}

impl Verdict {
    pub fn is_bad(&self) -> bool {
        !self.problems.is_empty()
    }
    /// Whether the row (and caption) is written under `cfg`.
    pub fn keep_row(&self, cfg: &IntegrityConfig) -> bool {
        cfg.on_bad_image == OnBadImage::Keep || !self.is_bad()
    }
    /// The table's `(width, height)` under `cfg`, given the JSON's.
    pub fn table_dims(&self, cfg: &IntegrityConfig, json: (i64, i64)) -> (i64, i64) {
        match (cfg.dims, self.image_dims) {
            (DimsSource::Image, Some((w, h))) => (w as i64, h as i64),
            _ => json,
        }
    }
}

/// Judges an image's facts against its JSON's claims (`None`: no JSON
/// names it; only the image's own faults count).
pub fn judge(cfg: &IntegrityConfig, facts: &ImageFacts, claims: Option<&Claims>) -> Verdict {
    let mut problems = Vec::new();
    let mut push = |reason, detail: String| problems.push(Problem { reason, detail });
    let image_dims = match &facts.header {
        Ok(d) => Some(*d),
        Err(e) => {
            push(Reason::UnreadableImageHeader, header_detail(e, facts.bytes));
            None
        }
    };
    if let (Some((w, h)), Some(c)) = (image_dims, claims)
        && let (Some(cw), Some(ch)) = (c.width, c.height)
        && (cw != w as i64 || ch != h as i64)
    {
        push(
            Reason::DimsMismatch,
            format!("the JSON says {cw}x{ch}, the image is {w}x{h}"),
        );
    }
    match &facts.decode {
        Some(Err(e @ DecodeError::TooManyPixels { .. })) => {
            push(Reason::TooManyPixels, e.to_string())
        }
        Some(Err(e)) => push(Reason::DecodeFailed, e.to_string()),
        _ => {}
    }
    if let Some(c) = claims {
        for (spec, claimed) in cfg.hashes.iter().zip(&c.hashes) {
            if let Some(claimed) = claimed
                && let Err(detail) = compare_digest(spec, claimed, &facts.digests)
            {
                push(Reason::HashMismatch, detail);
            }
        }
    }
    Verdict {
        problems,
        image_dims,
    }
}

fn header_detail(e: &DimsError, bytes: u64) -> String {
    match e {
        DimsError::NeedMore { need, .. } if bytes < *need as u64 => {
            format!("the file ends after {bytes} bytes, inside its header ({need} needed)")
        }
        DimsError::NeedMore { .. } => {
            format!("no image size within the first {HEADER_MAX} bytes")
        }
        other => other.to_string(),
    }
}

/// Checks one image member fed chunk by chunk, never reading it twice.
pub struct ImageCheck<'c> {
    cfg: &'c IntegrityConfig,
    size: u64,
    seen: u64,
    hasher: ImageHasher,
    header: HeaderSniffer,
    /// The member's bytes, kept for decoding (only up to [`DECODE_HOLD_MAX`]).
    held: Option<Vec<u8>>,
}

impl<'c> ImageCheck<'c> {
    /// A check of a member of `size` bytes.
    pub fn new(cfg: &'c IntegrityConfig, size: u64) -> Self {
        let hold = cfg.check_decode && size <= DECODE_HOLD_MAX;
        ImageCheck {
            cfg,
            size,
            seen: 0,
            hasher: ImageHasher::for_specs(&cfg.hashes),
            header: HeaderSniffer::default(),
            held: hold.then(|| Vec::with_capacity(size as usize)),
        }
    }

    /// Checks a member held whole in memory (no copy is made).
    pub fn whole(cfg: &IntegrityConfig, bytes: &[u8]) -> ImageFacts {
        let digests = if cfg.hashes.is_empty() {
            Digests::default()
        } else {
            let mut hasher = ImageHasher::for_specs(&cfg.hashes);
            hasher.update(bytes);
            hasher.finish()
        };
        let decode = cfg
            .check_decode
            .then(|| decode_check(bytes, cfg.max_pixels));
        ImageFacts {
            bytes: bytes.len() as u64,
            header: image_dims(&bytes[..bytes.len().min(HEADER_MAX)]),
            decode,
            digests,
        }
    }

    /// Feeds the next bytes of the member.
    pub fn update(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        self.hasher.update(chunk);
        self.header.update(chunk);
        if let Some(held) = &mut self.held {
            held.extend_from_slice(chunk);
        }
    }

    /// The facts, once every byte went through `update`. A member too large
    /// to be held is decoded from `written` (its file in `data/`, closed);
    /// without one it is not decoded (`decode: None`).
    pub fn finish(self, written: Option<&Path>) -> ImageFacts {
        let max = self.cfg.max_pixels;
        let decode = match (self.cfg.check_decode, &self.held, written) {
            (false, _, _) => None,
            (true, Some(held), _) if held.len() as u64 == self.size => {
                Some(decode_check(held, max))
            }
            (true, _, Some(path)) => Some(decode_file(path, max)),
            (true, _, None) => None,
        };
        ImageFacts {
            bytes: self.seen,
            header: self.header.finish(),
            decode,
            digests: self.hasher.finish(),
        }
    }
}

/// Finds the header size in the first chunks, copying bytes only while the
/// first chunk is not enough.
#[derive(Default)]
struct HeaderSniffer {
    prefix: Vec<u8>,
    need: usize,
    result: Option<Result<(u32, u32), DimsError>>,
}

impl HeaderSniffer {
    fn update(&mut self, chunk: &[u8]) {
        if self.result.is_some() || chunk.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            match image_dims(chunk) {
                Err(DimsError::NeedMore { need, .. }) => self.need = need,
                done => {
                    self.result = Some(done);
                    return;
                }
            }
        }
        let room = HEADER_MAX - self.prefix.len();
        self.prefix
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        if self.prefix.len() > chunk.len() && self.prefix.len() >= self.need {
            self.retry();
        }
        if self.result.is_none() && self.prefix.len() >= HEADER_MAX {
            self.result = Some(image_dims(&self.prefix));
        }
    }

    fn retry(&mut self) {
        match image_dims(&self.prefix) {
            Err(DimsError::NeedMore { need, .. }) => self.need = need,
            done => {
                self.result = Some(done);
                self.prefix = Vec::new();
            }
        }
    }

    fn finish(self) -> Result<(u32, u32), DimsError> {
        match self.result {
            Some(r) => r,
            None => image_dims(&self.prefix),
        }
    }
}

/// A reader that feeds every byte it hands out to an [`ImageCheck`]: wrap a
/// tar entry in it before writing the member, and the check costs no read.
pub struct CheckingReader<'a, 'c, R> {
    pub inner: R,
    pub check: &'a mut ImageCheck<'c>,
}

impl<R: Read> Read for CheckingReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.check.update(&buf[..n]);
        Ok(n)
    }
}

impl IntegrityConfig {
    /// The config a job's [`ImageChecks`](shardprep_core::manifest::ImageChecks)
    /// spell; an error names the bad value.
    pub fn from_checks(c: &shardprep_core::manifest::ImageChecks) -> Result<Self, String> {
        let dims = match c.dims.as_str() {
            "" => DimsSource::Json,
            other => other.parse()?,
        };
        let hashes = c
            .hash_fields
            .iter()
            .map(|h| h.parse::<HashSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IntegrityConfig {
            dims,
            check_decode: c.decode,
            hashes,
            on_bad_image: if c.skip_bad {
                OnBadImage::Skip
            } else {
                OnBadImage::Keep
            },
            max_pixels: if c.max_pixels == 0 {
                DEFAULT_MAX_PIXELS
            } else {
                c.max_pixels
            },
        })
    }

    /// The [`ImageChecks`](shardprep_core::manifest::ImageChecks) spelling this config.
    pub fn to_checks(&self) -> shardprep_core::manifest::ImageChecks {
        shardprep_core::manifest::ImageChecks {
            dims: match self.dims {
                DimsSource::Json => "json".into(),
                DimsSource::Image => "image".into(),
            },
            decode: self.check_decode,
            skip_bad: self.on_bad_image == OnBadImage::Skip,
            hash_fields: self.hashes.iter().map(|h| h.to_string()).collect(),
            max_pixels: self.max_pixels,
        }
    }
}

impl IntegrityConfig {
    /// The config of a job spec. A value this worker cannot read (a newer
    /// coordinator) is logged and the seed's behaviour used instead.
    pub fn from_spec(spec: &shardprep_core::proto::JobSpec) -> Self {
        let checks = shardprep_core::manifest::ImageChecks::from_proto(spec);
        IntegrityConfig::from_checks(&checks).unwrap_or_else(|e| {
            tracing::error!("the job's image checks cannot be read ({e}); checking image headers only: update this worker");
            IntegrityConfig::default()
        })
    }
}
