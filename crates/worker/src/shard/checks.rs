//! The checks of the images themselves within a pass: each top-level image's
//! facts (header size, and decode and digests when asked) are paired with
//! the JSON row naming it by a [`Ledger`]; rows are released in JSON order.
//!
//! By default (sizes from the JSON, bad images kept) rows go to the fragment
//! as their JSON is read, exactly as without the checks, and the ledger only
//! judges; with `--dims image` or `--on-bad-image skip` rows wait in the
//! ledger for their image (at most [`crate::integrity::MAX_WAITING`]).

use std::io;

use shardprep_core::issue::IssueKind;
use std::path::PathBuf;

use super::json_rows::JsonId;

use crate::integrity::{
    Claims, Digests, DimsError, HEADER_MAX, ImageFacts, IntegrityConfig, Ledger, Resolved, Verdict,
    image_dims,
};
use crate::sample::Row;
use crate::window::Window;

use super::tally::Tally;

/// A row held back until its image is judged, with what its caption needs.
pub(super) struct Pending {
    pub row: Row,
    /// The width and height its JSON claims (the row's may become the image's).
    pub json_dims: (i64, i64),
    /// The JSON member's name in the tar.
    pub member: String,
    /// The JSON member's path under `data/`.
    pub rel: PathBuf,
    /// Which JSON member at that path it is (a later one replaces it).
    pub json: JsonId,
}

/// A row the ledger let go: to be written (its sizes as the table takes them).
pub(super) type Released = Pending;

/// The pass's image checks.
pub(super) struct ImageChecks {
    ledger: Ledger<Option<Pending>>,
}

impl ImageChecks {
    pub(super) fn new(cfg: &IntegrityConfig) -> Self {
        ImageChecks {
            ledger: Ledger::new(cfg.clone()),
        }
    }

    pub(super) fn cfg(&self) -> &IntegrityConfig {
        self.ledger.config()
    }

    /// Whether rows wait for their image instead of going out at once.
    pub(super) fn defers_rows(&self) -> bool {
        self.cfg().defers_rows()
    }

    /// A top-level image's facts.
    pub(super) fn image(&mut self, name: &str, facts: ImageFacts) {
        self.ledger.image(name, facts);
    }

    /// A JSON's row naming `image`; `pending` is `None` when the row was
    /// already written.
    pub(super) fn json(&mut self, image: &str, claims: Claims, pending: Option<Pending>) {
        self.ledger.json(image, claims, pending);
    }

    /// The end of the shard: everything still waiting is released.
    pub(super) fn finish(&mut self) {
        self.ledger.finish();
    }

    /// Counts the verdicts settled so far and returns the rows to write.
    pub(super) fn settle(&mut self, tally: &mut Tally) -> Vec<Released> {
        let mut out = Vec::new();
        while let Some(done) = self.ledger.pop_ready() {
            match done {
                Resolved::Row {
                    row,
                    image,
                    verdict,
                } => {
                    if let Some(v) = &verdict {
                        record(tally, &image, v);
                    }
                    if let Some(p) = row {
                        self.release(tally, p, verdict.as_ref(), &mut out);
                    }
                }
                Resolved::LoneImage { image, verdict } => record(tally, &image, &verdict),
            }
        }
        out
    }

    /// A held row: written with the table's sizes, or left out (skip).
    fn release(
        &self,
        tally: &mut Tally,
        mut p: Pending,
        verdict: Option<&Verdict>,
        out: &mut Vec<Released>,
    ) {
        let cfg = self.cfg();
        if let Some(v) = verdict {
            if !v.keep_row(cfg) {
                let reasons: Vec<&str> = v.problems.iter().map(|p| p.reason.as_str()).collect();
                let detail = format!(
                    "its image {} is bad ({}); left out with --on-bad-image skip",
                    p.row.filename,
                    reasons.join(", ")
                );
                tally.skip(&p.member, IssueKind::BadImage, detail);
                tally.samples.bad.insert(p.row.filename.as_bytes());
                return;
            }
            (p.row.width, p.row.height) = v.table_dims(cfg, (p.row.width, p.row.height));
        }
        out.push(p);
    }
}

/// The facts of an image read by its head only, at `offset` of `win`: the
/// header size, exactly as [`crate::integrity::ImageCheck`] finds it reading
/// every byte (the first bytes, more while the header needs them, up to
/// [`HEADER_MAX`]). Nothing else is read, so no decode and no digests.
pub(super) fn head_facts(win: &mut Window, offset: u64, size: u64) -> io::Result<ImageFacts> {
    let header = match buffered_dims(win, offset, size)? {
        Some(done) => done,
        None => read_dims(win, offset, size)?,
    };
    Ok(ImageFacts {
        bytes: size,
        header,
        decode: None,
        digests: Digests::default(),
    })
}

/// What [`image_dims`] makes of the bytes of an image `size` bytes long.
type Dims = Result<(u32, u32), DimsError>;

/// Whether `dims`, from the first `have` bytes of an image `size` bytes
/// long, asks for more bytes than it had, and more can be read.
fn needs_more(dims: &Dims, have: usize, size: u64) -> bool {
    matches!(dims, Err(DimsError::NeedMore { need, .. }) if *need > have)
        && (have as u64) < size
        && have < HEADER_MAX
}

/// The header from the bytes the window already holds at `offset` (the
/// window the member's header was read through), without a copy; `None`
/// when the header needs more than it holds.
fn buffered_dims(win: &mut Window, offset: u64, size: u64) -> io::Result<Option<Dims>> {
    let buffered = win.bytes_at(offset)?;
    let head = &buffered[..buffered.len().min(size as usize).min(HEADER_MAX)];
    let dims = image_dims(head);
    Ok((!needs_more(&dims, head.len(), size)).then_some(dims))
}

/// The header read from `offset` on: the first bytes, more while it needs them.
fn read_dims(win: &mut Window, offset: u64, size: u64) -> io::Result<Dims> {
    let mut want = size.min(4096) as usize;
    let mut buf = vec![0u8; want];
    loop {
        let got = win.read_exact_at(offset, &mut buf)?;
        buf.truncate(got);
        let dims = image_dims(&buf);
        match &dims {
            Err(DimsError::NeedMore { need, .. })
                if got == want && needs_more(&dims, got, size) =>
            {
                want = ((*need).min(HEADER_MAX) as u64).min(size) as usize;
                buf.resize(want, 0);
            }
            _ => return Ok(dims),
        }
    }
}

/// Counts and lists each problem of one image.
fn record(tally: &mut Tally, image: &str, v: &Verdict) {
    tally.counts.images_checked += 1;
    for p in &v.problems {
        tally.image_problem(image, p.reason.kind(), &p.detail);
    }
}
