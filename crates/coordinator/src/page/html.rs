//! The page's sections as HTML. Every number taken from `report.json`
//! carries `data-k` (its path there, e.g. `totals.rows`; `data-agg="sum"`
//! for the sum of a map, `data-scale` and `data-digits` for a unit change
//! and rounding), so a test can compare the page with the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::stats::{Buckets, CLIP_TOKENS, Stats};
use super::{Page, as_text, charts};
use crate::report::{Report, ShardReport};
use shardprep_core::index_format::IndexFormat;

const STYLE: &str = include_str!("page.css");

/// HTML-escapes `s`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count from the report at `key`.
fn n(key: &str, v: u64) -> String {
    format!(
        r#"<span class="n" data-k="{}">{}</span>"#,
        esc(key),
        grouped(v)
    )
}

/// The sum of the report's map at `key`.
fn sum(key: &str, m: &BTreeMap<String, u64>) -> String {
    format!(
        r#"<span class="n" data-k="{}" data-agg="sum">{}</span>"#,
        esc(key),
        grouped(m.values().sum())
    )
}

/// A report number at `key`, times `scale`, with `digits` decimals.
fn dec(key: &str, v: f64, scale: f64, digits: usize) -> String {
    format!(
        r#"<span class="n" data-k="{}" data-scale="{scale}" data-digits="{digits}">{:.*}</span>"#,
        esc(key),
        digits,
        v * scale
    )
}

/// A number the page computed (not in the report).
fn calc(v: u64) -> String {
    format!(r#"<span class="c">{}</span>"#, grouped(v))
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "–".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// The whole page.
pub fn render(p: &Page) -> String {
    let r = p.report;
    let mut h = String::with_capacity(64 << 10);
    let title = format!("shardprep report: {}", r.dataset_id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
    );
    if let Some(l) = &p.live {
        let _ = write!(
            h,
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            l.refresh_secs
        );
    }
    let _ = write!(
        h,
        "<title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    h.push_str(&header(p, &title));
    h.push_str(&verdict_section(p));
    h.push_str(&counts_section(r));
    h.push_str(&output_section(p));
    h.push_str(&dataset_sections(p));
    shards_section(&mut h, r);
    h.push_str(&problems_section(p));
    let _ = writeln!(
        h,
        "<footer>shardprep {} · report.json is the machine-readable twin of this page</footer></body></html>",
        esc(&r.shardprep_version)
    );
    h
}

fn header(p: &Page, title: &str) -> String {
    let r = p.report;
    let verdict = match &p.live {
        Some(l) => l.phase.clone(),
        None => as_text(&r.verdict),
    };
    let class = match verdict.as_str() {
        "ok" | "finished" => "ok",
        "failed" => "bad",
        _ => "run",
    };
    let mut h = format!(
        "<header><h1>{}</h1><p class=\"verdict {class}\">verdict: <b data-k=\"verdict\">{}</b></p>",
        esc(title),
        esc(&verdict.to_uppercase())
    );
    if let Some(l) = &p.live {
        let _ = write!(
            h,
            "<p class=\"live\">Live page of a running job: it reloads every {} s. {}</p>",
            l.refresh_secs,
            esc(&l.note)
        );
    }
    let _ = write!(
        h,
        "<p class=\"meta\">mode <b>{}</b> · input <code>{}</code> · started {} · finished {}</p></header>",
        esc(&r.mode),
        esc(&r.input),
        esc(&r.started_at),
        esc(if r.finished_at.is_empty() {
            "(running)"
        } else {
            &r.finished_at
        })
    );
    h
}

fn verdict_section(p: &Page) -> String {
    let r = p.report;
    let mut h = String::from("<section><h2>Verdict and what to do</h2>");
    if r.problems.is_empty() && p.live.is_none() {
        h.push_str("<p>Every shard was read, the table and the counts verified: the output is ready for the trainer (see “Where the output is”).</p>");
    }
    if !r.problems.is_empty() {
        h.push_str("<ul class=\"problems\">");
        for pr in &r.problems {
            let _ = write!(h, "<li>{}</li>", esc(pr));
        }
        h.push_str("</ul>");
    }
    let advice = advice_lines(p);
    if !advice.is_empty() {
        h.push_str("<ul class=\"advice\">");
        for (what, todo) in advice {
            let _ = write!(h, "<li><b>{}</b>: {}</li>", esc(&what), esc(&todo));
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>");
    h
}

/// One line per kind of problem found, with what to do about it.
fn advice_lines(p: &Page) -> Vec<(String, String)> {
    let t = &p.report.totals;
    let mut out = Vec::new();
    for (kind, count) in t
        .image_problems
        .iter()
        .chain(&t.skipped)
        .chain(&t.rejected_members)
    {
        out.push((format!("{count} × {kind}"), advice(kind).to_string()));
    }
    if let Ok(s) = &p.stats {
        let b = s.buckets(&p.rule);
        if b.too_small > 0 {
            out.push((
                format!("{} images under minimum_image_size", b.too_small),
                "the trainer drops them as too_small; lower minimum_image_size in the entry to keep them, or leave them out".into(),
            ));
        }
    }
    out
}

/// What to do about one kind of problem.
fn advice(kind: &str) -> &'static str {
    use shardprep_core::issue::IssueKind as K;
    const LISTED: &str = "listed by member below and in report.json";
    let Ok(kind) = kind.parse::<K>() else {
        return LISTED;
    };
    match kind {
        K::DimsMismatch => {
            "the JSON's width/height are not the image's, and the trainer buckets by the table: run again with --dims image to put the real size in the table, or --on-bad-image skip to leave them out"
        }
        K::UnreadableImageHeader | K::DecodeFailed => {
            "the trainer fails on these when it encodes them, hours in: replace them in their shard, or run again with --on-bad-image skip"
        }
        K::TooManyPixels => {
            "larger than --max-pixels (a decompression-bomb guard): raise --max-pixels if they are genuine, else --on-bad-image skip"
        }
        K::HashMismatch => {
            "the bytes are not those the JSON's digest names: download the shard again"
        }
        K::BadImage => "left out by --on-bad-image skip (listed under image problems)",
        K::EmptyName | K::AbsolutePath | K::ParentDirPath | K::NulInName | K::UnsafeFilename => {
            "a member or file name escaping the output was refused: nothing was written for it"
        }
        K::Symlink | K::HardLink | K::Device | K::Fifo => {
            "links and special files are never extracted: nothing was written for them"
        }
        K::MissingHeight
        | K::InvalidWidth
        | K::InvalidHeight
        | K::MissingFilename
        | K::FilenameNotString => {
            "the JSON has no usable size or file name, so it has no row; fix the JSON, or name other fields with --width-field/--height-field/--filename-field"
        }
        K::InvalidJson | K::JsonNotObject => {
            "the JSON does not parse; fix or remove it in its shard"
        }
        K::CaptionNotString | K::MissingCaption | K::EmptyCaption => {
            "the row's caption is empty: check --caption-field"
        }
        _ => LISTED,
    }
}

/// The counts rows of names several members or shards share.
fn name_rows(r: &Report) -> Vec<(&'static str, String)> {
    let t = &r.totals;
    vec![
        (
            "duplicate names",
            format!(
                "{} across shards, {} within shards",
                n("duplicate_filenames", r.duplicate_filenames),
                n("totals.duplicate_members", t.duplicate_members)
            ),
        ),
        (
            "JSONs a later shard replaced",
            format!(
                "{} (their {} rows left out of the table)",
                n("json_replaced", r.json_replaced),
                n("rows_shadowed", r.rows_shadowed)
            ),
        ),
        (
            "rows paired with another shard's image",
            format!(
                "{} (images checked again; {} caption files written again)",
                n("rows_paired_across_shards", r.rows_paired_across_shards),
                n("captions_rewritten", r.captions_rewritten)
            ),
        ),
    ]
}

/// The rows of the timings, throughput and memory.
fn timing_rows(r: &Report) -> Vec<(&'static str, String)> {
    let t = &r.totals;
    vec![
        (
            "wall time",
            format!("{} s", dec("wall_ms", r.wall_ms as f64, 0.001, 1)),
        ),
        (
            "throughput",
            format!("{} MB/s read", dec("mb_per_s", r.mb_per_s, 1.0, 1)),
        ),
        (
            "bytes read",
            format!(
                "{} MB",
                dec("totals.bytes_read", t.bytes_read as f64, 1e-6, 1)
            ),
        ),
        (
            "peak memory",
            format!(
                "coordinator {} MiB, largest worker {} MiB",
                dec(
                    "resources.coordinator_peak_rss_bytes",
                    r.resources.coordinator_peak_rss_bytes as f64,
                    1.0 / 1048576.0,
                    0
                ),
                dec(
                    "resources.worker_peak_rss_bytes",
                    r.resources.worker_peak_rss_bytes as f64,
                    1.0 / 1048576.0,
                    0
                )
            ),
        ),
    ]
}

fn counts_section(r: &Report) -> String {
    let t = &r.totals;
    let rows: Vec<(&str, String)> = vec![
        (
            "shards",
            format!(
                "{} done, {} failed, {} total ({} from an earlier run)",
                n("shards_done", r.shards_done as u64),
                n("shards_failed", r.shards_failed as u64),
                n("shards_total", r.shards_total as u64),
                n("shards_recovered", r.shards_recovered as u64)
            ),
        ),
        (
            "JSON files",
            format!(
                "{} (expected {})",
                n("found_json", r.found_json),
                r.expected_json
                    .map_or("not given".into(), |e| n("expected_json", e))
            ),
        ),
        ("rows in the table", n("rows", r.rows)),
        ("images", n("totals.images", t.images)),
        (
            "captions written",
            format!(
                "{} (+{} for images without a row)",
                n("totals.captions_written", t.captions_written),
                n(
                    "totals.captions_for_unlisted_images",
                    t.captions_for_unlisted_images
                )
            ),
        ),
        (
            "images checked",
            n("totals.images_checked", t.images_checked),
        ),
        (
            "image problems",
            sum("totals.image_problems", &t.image_problems),
        ),
        ("skipped JSONs", sum("totals.skipped", &t.skipped)),
        (
            "refused members",
            sum("totals.rejected_members", &t.rejected_members),
        ),
        (
            "caption warnings",
            sum("totals.caption_warnings", &t.caption_warnings),
        ),
    ];
    let mut h = String::from("<section><h2>Counts and timings</h2><table class=\"kv\">");
    for (k, v) in rows.into_iter().chain(name_rows(r)).chain(timing_rows(r)) {
        let _ = write!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    if let Some(f) = &r.index_formats {
        let s = &f.summary;
        let _ = write!(
            h,
            "<tr><th>--index-format {}</th><td>{} of {} samples kept in every format</td></tr>",
            esc(&f.formats),
            n("index_formats.summary.kept", s.kept),
            n("index_formats.summary.samples", s.samples)
        );
    }
    if let Some(ix) = r.index.as_ref().filter(|_| webshart_written(r)) {
        let _ = write!(
            h,
            "<tr><th>index entries</th><td>{} ({} images with a size, {} without, {} disagree with their JSON)</td></tr>",
            n("index.entries", ix.entries),
            n("index.images_with_dimensions", ix.images_with_dimensions),
            n(
                "index.images_without_dimensions",
                ix.images_without_dimensions
            ),
            n("index.dimension_mismatches", ix.dimension_mismatches)
        );
    }
    h.push_str("</table></section>");
    h
}

fn output_section(p: &Page) -> String {
    let r = p.report;
    let mut h = format!(
        "<section><h2>Where the output is</h2><table class=\"kv\"><tr><th>output folder</th><td><code>{}</code></td></tr>",
        esc(&r.output)
    );
    if let Some(pq) = &r.parquet {
        let _ = write!(
            h,
            "<tr><th>table</th><td><code>{}</code></td></tr>",
            esc(pq)
        );
    }
    let _ = write!(
        h,
        "<tr><th>captions</th><td>{} (field <code>{}</code>)</td></tr></table>",
        esc(&r.captions),
        esc(&r.caption_field)
    );
    match &p.entry {
        Some(e) => {
            let text = serde_json::to_string_pretty(e).unwrap_or_default();
            let _ = write!(
                h,
                "<p>The dataloader entry to use: add it to SimpleTuner's <code>multidatabackend.json</code> (or point the trainer at <code>{}/multidatabackend.json</code>):</p><pre>{}</pre>",
                esc(&r.output),
                esc(&text)
            );
        }
        None if !webshart_written(r) => h.push_str(&other_trainers(r)),
        None => h.push_str(
            "<p>No <code>multidatabackend.json</code> yet: it is written when the job ends.</p>",
        ),
    }
    h.push_str("</section>");
    h
}

fn dataset_sections(p: &Page) -> String {
    let s = match &p.stats {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "<section><h2>The data set</h2><p class=\"bad\">The samples could not be read: {}</p></section>",
                esc(e)
            );
        }
    };
    let b = s.buckets(&p.rule);
    let mut h = buckets_section(p, s, &b);
    h.push_str(&sizes_section(p, s));
    h.push_str(&captions_section(s));
    h
}

fn chart_or_note(c: Result<String, super::PageError>) -> String {
    match c {
        Ok(svg) => format!("<figure>{svg}</figure>"),
        Err(e) => format!("<p class=\"bad\">{}</p>", esc(&e.to_string())),
    }
}

fn buckets_section(p: &Page, s: &Stats, b: &Buckets) -> String {
    let rule = &p.rule;
    let min = rule
        .minimum_image_size
        .map_or("none".to_string(), |m| m.to_string());
    let mut h = format!(
        "<section><h2>The trainer's aspect buckets</h2><p>As SimpleTuner 4.10.1 forms them from {}, for the entry's settings: \
         <code>resolution</code> {}, <code>resolution_type</code> {}, <code>minimum_image_size</code> {min} \
         (<code>maximum_image_size</code> and <code>target_downsample_size</code> do not change buckets without <code>crop</code>). \
         <b>Assumed</b>: bucket alignment {} px (SimpleTuner sets 64 for SDXL, SD3, Sana and HiDream; <code>shardprep report --bucket-alignment N</code> for another model family), \
         aspect rounding to {} decimals, one sample per file name (the first row of a duplicated name). \
         A bucket with fewer samples than the batch size (× repeats + 1) is dropped at training time.</p>",
        esc(&s.source),
        rule.resolution,
        rule.resolution_type.as_str(),
        rule.alignment,
        rule.rounding
    );
    h.push_str(&chart_or_note(charts::buckets(b)));
    let total = s.samples();
    h.push_str("<table class=\"grid\" id=\"buckets\"><tr><th>bucket</th><th>samples</th><th>share</th><th>sizes in it</th></tr>");
    for (a, (count, sizes)) in &b.by_aspect {
        let shown: Vec<String> = sizes
            .iter()
            .take(4)
            .map(|((w, hh), k)| format!("{w}×{hh} ({})", grouped(*k)))
            .collect();
        let more = if sizes.len() > 4 {
            format!(" +{} more", sizes.len() - 4)
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr data-bucket=\"{}\"><td>{}</td><td class=\"r\" data-count=\"{count}\">{}</td><td class=\"r\">{}</td><td>{}{more}</td></tr>",
            a.name(),
            a.name(),
            grouped(*count),
            pct(*count, total),
            shown.join(", ")
        );
    }
    let _ = write!(
        h,
        "<tr class=\"drop\" data-dropped=\"too_small\"><td>too small (dropped)</td><td class=\"r\" data-count=\"{}\">{}</td><td class=\"r\">{}</td><td>under minimum_image_size</td></tr>",
        b.too_small,
        grouped(b.too_small),
        pct(b.too_small, total)
    );
    if b.invalid > 0 {
        let _ = write!(
            h,
            "<tr class=\"drop\" data-dropped=\"invalid\"><td>no usable size</td><td class=\"r\" data-count=\"{}\">{}</td><td class=\"r\">{}</td><td>zero or missing width/height</td></tr>",
            b.invalid,
            grouped(b.invalid),
            pct(b.invalid, total)
        );
    }
    let _ = write!(
        h,
        "</table><p>{} samples: {} in {} buckets, {} dropped. {} rows repeat an earlier row's file name.</p>",
        calc(total),
        calc(b.bucketed()),
        b.by_aspect.len(),
        calc(b.too_small + b.invalid),
        calc(s.duplicate_rows)
    );
    let unlisted = p.report.totals.captions_for_unlisted_images;
    if p.report.mode != "index" && unlisted > 0 {
        let _ = write!(
            h,
            "<p>Besides, {} images of <code>data/</code> have no row (their JSON lacks a size): the trainer skips them as <code>metadata_missing</code>.</p>",
            n("totals.captions_for_unlisted_images", unlisted)
        );
    }
    h.push_str("</section>");
    h
}

fn sizes_section(p: &Page, s: &Stats) -> String {
    let mut h = String::from(
        "<section><h2>Image sizes</h2><p>Width × height of every sample (disc area ∝ samples; the red line is <code>minimum_image_size</code>: the trainer drops what lies below it).</p>",
    );
    h.push_str(&chart_or_note(charts::sizes(s, &p.rule)));
    let mut top: Vec<(&(u64, u64), &u64)> = s.sizes.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    h.push_str("<table class=\"grid\"><tr><th>size</th><th>samples</th></tr>");
    for ((w, hh), k) in top.iter().take(12) {
        let _ = write!(
            h,
            "<tr><td>{w} × {hh}</td><td class=\"r\">{}</td></tr>",
            grouped(**k)
        );
    }
    let _ = write!(
        h,
        "</table><p>{} distinct sizes; {} samples without a size.</p></section>",
        calc(s.sizes.len() as u64),
        calc(s.no_size)
    );
    h
}

/// The value below which `q` of the samples lie.
fn quantile(counts: &BTreeMap<u64, u64>, q: f64) -> u64 {
    let total: u64 = counts.values().sum();
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (v, n) in counts {
        seen += n;
        if seen >= want.max(1) {
            return *v;
        }
    }
    0
}

fn captions_section(s: &Stats) -> String {
    let total = s.samples();
    let over = s.over_clip();
    let mut h = format!(
        "<section><h2>Captions</h2><p>{} captions: median {} characters and {} words (95% under {} characters). \
         <b>Estimated</b> {} ({}) exceed the {CLIP_TOKENS} tokens of a CLIP text encoder and would be cut \
         (an estimate from CLIP's word pieces, not its vocabulary; a T5 encoder takes more).</p>",
        calc(total),
        quantile(&s.chars, 0.5),
        quantile(&s.words, 0.5),
        quantile(&s.chars, 0.95),
        calc(over),
        pct(over, total)
    );
    if s.caption_missing > 0 {
        let _ = write!(
            h,
            "<p class=\"bad\">{} images have no caption in their index entry: SimpleTuner skips them (caption_missing).</p>",
            calc(s.caption_missing)
        );
    }
    h.push_str("<h3>Characters</h3>");
    h.push_str(&chart_or_note(charts::histogram(
        "caption characters",
        &s.chars,
        "characters",
        None,
    )));
    h.push_str("<h3>Words</h3>");
    h.push_str(&chart_or_note(charts::histogram(
        "caption words",
        &s.words,
        "words",
        None,
    )));
    h.push_str("<h3>Estimated CLIP tokens (red: cut at 77)</h3>");
    h.push_str(&chart_or_note(charts::histogram(
        "caption tokens",
        &s.tokens,
        "tokens (estimated)",
        Some(CLIP_TOKENS),
    )));
    h.push_str("</section>");
    h
}

/// Written into the page itself: with 10,000 shards the table is ~7 MiB,
/// and a copy of it would raise the job's peak memory at its very end.
fn shards_section(h: &mut String, r: &Report) {
    h.push_str("<section class=\"shards\"><h2>Shards: time and throughput</h2>");
    h.push_str(&chart_or_note(charts::shard_seconds(&r.shards)));
    h.push_str("<table class=\"grid\"><tr><th>shard</th><th>state</th><th>attempts</th><th>worker</th><th>seconds</th><th>MB/s</th><th>JSON files</th><th>rows</th></tr>");
    // About 700 bytes a row: grown once, not doubled step by step.
    h.reserve(r.shards.len() * 720);
    for (i, s) in r.shards.iter().enumerate() {
        h.push_str(&shard_row(i, s));
    }
    h.push_str("</table></section>");
}

fn shard_row(i: usize, s: &ShardReport) -> String {
    let k = |f: &str| format!("shards.{i}.{f}");
    let secs = s.elapsed_ms.map_or("–".into(), |ms| {
        dec(&k("elapsed_ms"), ms as f64, 0.001, 2)
    });
    let rate = s
        .input_mb_per_s
        .map_or("–".into(), |v| dec(&k("input_mb_per_s"), v, 1.0, 1));
    let (json, rows) = match &s.counts {
        Some(c) => (
            n(&k("counts.json_files"), c.json_files),
            n(&k("counts.rows"), c.rows),
        ),
        None => ("–".into(), "–".into()),
    };
    let mut state = esc(s.state.as_str());
    if s.recovered {
        state.push_str(" (earlier run)");
    }
    if let Some(e) = &s.error {
        let _ = write!(state, ": {}", esc(e));
    }
    format!(
        "<tr><td>{}</td><td>{state}</td><td class=\"r\">{}</td><td>{}</td><td class=\"r\">{secs}</td><td class=\"r\">{rate}</td><td class=\"r\">{json}</td><td class=\"r\">{rows}</td></tr>",
        esc(&s.name),
        n(&k("attempts"), s.attempts as u64),
        esc(s.worker.as_deref().unwrap_or("–"))
    )
}

fn problems_section(p: &Page) -> String {
    let r = p.report;
    let mut h = String::from("<section><h2>Problems, member by member</h2>");
    if !p.thumbs.is_empty() {
        h.push_str("<h3>Image problems</h3><div class=\"thumbs\">");
        for t in &p.thumbs {
            let pic = match &t.picture {
                Ok(uri) => format!("<img src=\"{uri}\" alt=\"{}\">", esc(&t.member)),
                Err(why) => format!("<div class=\"nopic\">{}</div>", esc(why)),
            };
            let _ = write!(
                h,
                "<figure class=\"thumb\">{pic}<figcaption><b>{}</b> {}/{}<br>{}</figcaption></figure>",
                esc(&t.kind),
                esc(&t.shard),
                esc(&t.member),
                esc(&t.detail)
            );
        }
        h.push_str("</div>");
    }
    // Image problems past those shown as thumbnails, then skips and refusals.
    let images = r
        .shards
        .iter()
        .flat_map(|s| s.image_issues.iter().map(move |i| (s.name.as_str(), i)))
        .skip(p.thumbs.len());
    let others = r
        .shards
        .iter()
        .flat_map(|s| s.issues.iter().map(move |i| (s.name.as_str(), i)));
    let listed: Vec<(&str, &shardprep_core::manifest::MemberIssue)> =
        images.chain(others).collect();
    if listed.is_empty() && p.thumbs.is_empty() {
        h.push_str("<p>None: no member was skipped or refused, no image problem was found.</p>");
    }
    if !listed.is_empty() {
        h.push_str("<table class=\"grid\"><tr><th>kind</th><th>shard</th><th>member</th><th>detail</th></tr>");
        for (shard, i) in listed.iter().take(500) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(&as_text(&i.kind)),
                esc(shard),
                esc(&i.member),
                esc(&i.detail)
            );
        }
        h.push_str("</table>");
    }
    let unlisted: u64 = r
        .shards
        .iter()
        .map(|s| s.issues_not_listed + s.image_issues_not_listed)
        .sum();
    if unlisted > 0 || listed.len() > 500 {
        let _ = write!(
            h,
            "<p>More members had problems than are listed here ({} not listed per shard); the counts above hold them all.</p>",
            calc(unlisted)
        );
    }
    h.push_str("</section>");
    h
}

/// Whether the job wrote webshart's index (extract mode writes none).
fn webshart_written(r: &Report) -> bool {
    match r.written_formats() {
        Some(Ok(f)) => f.contains(IndexFormat::Webshart),
        Some(Err(_)) => true,
        None => false,
    }
}

/// Where each trainer reads an index job's other formats (no webshart
/// index, so no SimpleTuner entry).
fn other_trainers(r: &Report) -> String {
    let formats = r.index_formats.as_ref().map_or("", |f| f.formats.as_str());
    let out = esc(&r.output);
    let mut at = Vec::new();
    for (name, reader, path) in [
        ("energon", "Megatron-Energon", "energon"),
        ("dali", "DALI (the lists in)", "dali/dali.json"),
        ("wids", "wids", "wids/wids.json"),
    ] {
        if formats.split(',').any(|f| f == name) {
            at.push(format!("{reader} <code>{out}/{path}</code>"));
        }
    }
    format!(
        "<p>No SimpleTuner entry: this job wrote no webshart index (<code>--index-format {}</code>). Point each trainer at its own index: {}.</p>",
        esc(formats),
        at.join(", ")
    )
}
