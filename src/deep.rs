//! `shardprep verify --deep`: re-checks the images in `data/` as the job's
//! workers checked them (header size against each JSON, and the full decode
//! and hashes when the report says they were made), and compares what it
//! finds with what the report lists. A problem the report does not know of
//! (a file changed or damaged since the job) fails the verification; the
//! ones it lists are named as known.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use shardprep_coordinator::pairs::{PairCheck, PairVerdict};
use shardprep_coordinator::report::Report;
use shardprep_core::fields::FieldMap;
use shardprep_core::manifest::ImageChecks;
use shardprep_worker::integrity::{
    CheckingReader, Claims, ImageCheck, IntegrityConfig, Verdict, hash_claims, judge,
};
use shardprep_worker::sample::{Parsed, parse_sample};
use shardprep_worker::shard::MAX_JSON_BYTES;

/// Problems named one by one, at most.
const NAMED: usize = 20;

/// What the report says of the images.
struct Reported {
    checks: ImageChecks,
    /// (image, reason) pairs the shards listed.
    listed: HashSet<(String, String)>,
    /// Some shard listed fewer problems than it counted.
    capped: bool,
    counts: BTreeMap<String, u64>,
}

impl Reported {
    fn of(report: &Report) -> Reported {
        let mut listed = HashSet::new();
        let mut capped = false;
        for s in &report.shards {
            capped |= s.image_issues_not_listed > 0;
            for i in &s.image_issues {
                // The kind as the report writes it.
                let kind = match serde_json::to_value(&i.kind) {
                    Ok(serde_json::Value::String(k)) => k,
                    _ => continue,
                };
                listed.insert((i.member.clone(), kind));
            }
        }
        Reported {
            checks: report.image_checks.clone(),
            listed,
            capped,
            counts: report.totals.image_problems.clone().into_iter().collect(),
        }
    }
}

/// The deep check's findings: lines checked and problems.
#[derive(Default)]
pub struct Deep {
    pub checked: Vec<String>,
    pub problems: Vec<String>,
}

/// Re-checks every image a top-level JSON of `out/data/` names.
pub fn deep_check(out: &Path) -> Deep {
    let mut d = Deep::default();
    let report = match std::fs::read(out.join("report.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Report>(&b).ok())
    {
        Some(r) => r,
        None => {
            d.problems
                .push("--deep: report.json cannot be read; it says which checks to repeat".into());
            return d;
        }
    };
    let reported = Reported::of(&report);
    let cfg = match IntegrityConfig::from_checks(&reported.checks) {
        Ok(c) => c,
        Err(e) => {
            d.problems.push(format!(
                "--deep: the report's image checks cannot be read: {e}"
            ));
            return d;
        }
    };
    match scan(&out.join("data"), &cfg) {
        Ok(scan) => judge_scan(&scan, &reported, &cfg, &mut d),
        Err(e) => d.problems.push(format!("--deep: cannot read data/: {e}")),
    }
    d
}

/// What the images of `data/` are.
#[derive(Default)]
struct Scan {
    images: u64,
    /// (image, reason, detail), in JSON name order.
    found: Vec<(String, String, String)>,
}

fn scan(data: &Path, cfg: &IntegrityConfig) -> io::Result<Scan> {
    let mut jsons: Vec<_> = std::fs::read_dir(data)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    jsons.sort();
    let fields = FieldMap::dalle3();
    let mut s = Scan::default();
    for json in jsons {
        let Some(checked) = check_row(data, &json, cfg, &fields)? else {
            continue;
        };
        s.images += 1;
        for p in checked.verdict.problems {
            let reason = p.reason.as_str().to_string();
            s.found.push((checked.image.clone(), reason, p.detail));
        }
    }
    Ok(s)
}

/// The row a JSON of `data/` makes, with its image checked.
struct CheckedRow {
    image: String,
    json_dims: (i64, i64),
    verdict: Verdict,
}

/// Checks the image the JSON at `json` names (in `data`, at the top) against
/// the row that JSON makes; `None` without a row or without its image (plain
/// verify names rows without their image).
fn check_row(
    data: &Path,
    json: &Path,
    cfg: &IntegrityConfig,
    fields: &FieldMap,
) -> io::Result<Option<CheckedRow>> {
    let mut bytes = Vec::new();
    File::open(json)?
        .take(MAX_JSON_BYTES)
        .read_to_end(&mut bytes)?;
    let Ok(Parsed::Row(row)) = parse_sample(&bytes, fields) else {
        return Ok(None);
    };
    let image = data.join(&row.filename);
    if row.filename.contains('/') || !image.is_file() {
        return Ok(None);
    }
    let claims = Claims {
        width: Some(row.width),
        height: Some(row.height),
        hashes: hash_claims(&bytes, &cfg.hashes),
    };
    let verdict = check_file(&image, cfg, &claims)?;
    Ok(Some(CheckedRow {
        image: row.filename,
        json_dims: (row.width, row.height),
        verdict,
    }))
}

/// The job's end's check of a row paired with an image another shard wrote:
/// the check `verify --deep` makes, with the job's image checks and fields.
pub struct PairImageCheck {
    pub cfg: IntegrityConfig,
    pub fields: FieldMap,
}

impl PairCheck for PairImageCheck {
    fn check(&self, data: &Path, json: &str) -> Option<PairVerdict> {
        let checked = check_row(data, &data.join(json), &self.cfg, &self.fields).ok()??;
        let problems = checked.verdict.problems.iter();
        Some(PairVerdict {
            problems: problems
                .map(|p| (p.reason.as_str().to_string(), p.detail.clone()))
                .collect(),
            dims: checked.verdict.table_dims(&self.cfg, checked.json_dims),
        })
    }
}

/// One image file read once: header, digests, and the decode if asked.
fn check_file(path: &Path, cfg: &IntegrityConfig, claims: &Claims) -> io::Result<Verdict> {
    let size = std::fs::metadata(path)?.len();
    let mut check = ImageCheck::new(cfg, size);
    let mut reader = CheckingReader {
        inner: File::open(path)?,
        check: &mut check,
    };
    io::copy(&mut reader, &mut io::sink())?;
    let facts = check.finish(Some(path));
    Ok(judge(cfg, &facts, Some(claims)))
}

fn judge_scan(scan: &Scan, reported: &Reported, cfg: &IntegrityConfig, d: &mut Deep) {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (image, reason, detail) in &scan.found {
        *counts.entry(reason.clone()).or_default() += 1;
        if !reported.listed.contains(&(image.clone(), reason.clone())) {
            unknown.push(format!("data/{image}: {reason}: {detail}"));
        }
    }
    let mut made = vec!["header size".to_string()];
    if cfg.check_decode {
        made.push("full decode".into());
    }
    if !cfg.hashes.is_empty() {
        let names: Vec<String> = cfg.hashes.iter().map(|h| h.to_string()).collect();
        made.push(format!("hashes {}", names.join(" ")));
    }
    d.checked.push(format!(
        "--deep: {} images of data/ re-checked ({}): {}",
        scan.images,
        made.join(", "),
        if counts.is_empty() {
            "no problem".to_string()
        } else {
            let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} (report: {:?})", parts.join(", "), reported.counts)
        }
    ));
    // With capped lists, an unlisted problem is unknown only beyond the counts.
    let beyond_counts = counts
        .iter()
        .any(|(k, v)| *v > reported.counts.get(k).copied().unwrap_or(0));
    if unknown.is_empty() || (reported.capped && !beyond_counts) {
        if !scan.found.is_empty() {
            d.checked.push(format!(
                "--deep: the {} image problems found are the ones report.json names",
                scan.found.len()
            ));
        }
        return;
    }
    for u in unknown.iter().take(NAMED) {
        d.problems
            .push(format!("{u} (not in report.json: changed since the job?)"));
    }
    if unknown.len() > NAMED {
        d.problems.push(format!(
            "... and {} more image problems report.json does not name",
            unknown.len() - NAMED
        ));
    }
}
