//! The end-of-job summary (the same numbers as `report.json`) and the exit
//! code of a job that ran.

use std::collections::BTreeMap;
use std::process::ExitCode;

use shardprep_coordinator::report::Report;

/// Exit code of a job that ran but did not verify (failed shards, count mismatch).
pub const EXIT_JOB_FAILED: u8 = 1;

/// The exit code of a job that ran: 0 verified, [`EXIT_JOB_FAILED`] otherwise.
pub fn exit_code(verified: bool) -> ExitCode {
    if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_JOB_FAILED)
    }
}

/// `reason=count, ...` or `none`.
fn by_reason(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(", ")
}

/// Prints the end-of-job table (the same numbers as report.json).
pub fn print_summary(r: &Report) {
    let t = &r.totals;
    let secs = r.wall_ms as f64 / 1000.0;
    let expected = r
        .expected_json
        .map(|e| e.to_string())
        .unwrap_or_else(|| "(not given)".into());
    println!("shardprep summary");
    println!("  verdict            {}", r.verdict.as_str().to_uppercase());
    println!(
        "  shards             {} done, {} failed, {} total ({} from an earlier run)",
        r.shards_done, r.shards_failed, r.shards_total, r.shards_recovered
    );
    println!(
        "  JSON files         {} (expected {expected})",
        r.found_json
    );
    println!("  rows               {}", r.rows);
    println!(
        "  captions written   {} (+{} for images without a row, so a trainer finds one beside every image)",
        t.captions_written, t.captions_for_unlisted_images
    );
    println!(
        "  caption warnings   {}",
        match by_reason(&t.caption_warnings).as_str() {
            "none" => "none".to_string(),
            w => format!("{w} (textfile and parquet captions differ for these)"),
        }
    );
    if !t.member_warnings.is_empty() {
        println!(
            "  member warnings    {} (unknown type flags, extracted as regular files as tar xf does)",
            by_reason(&t.member_warnings)
        );
    }
    println!("  images             {}", t.images);
    if let Some(ix) = &r.index {
        println!(
            "  index              {} entries, {} images with dimensions, {} without, {} disagree with their JSON",
            ix.entries,
            ix.images_with_dimensions,
            ix.images_without_dimensions,
            ix.dimension_mismatches
        );
    }
    println!("  skipped            {}", by_reason(&t.skipped));
    println!("  members refused    {}", by_reason(&t.rejected_members));
    print_image_checks(r);
    println!(
        "  duplicate names    {} across shards, {} within shards",
        r.duplicate_filenames, t.duplicate_members
    );
    println!("  wall time          {secs:.1} s");
    println!(
        "  throughput         {:.1} MB/s, {:.0} files/s",
        r.mb_per_s,
        r.index.as_ref().map_or(t.files_extracted, |ix| ix.entries) as f64 / secs.max(0.001)
    );
    if let Some(p) = &r.parquet {
        println!("  parquet            {p}");
    }
    let page = std::path::Path::new(&r.output).join("report.html");
    if page.is_file() {
        println!("  report page        {}", page.display());
    }
    print_repairs(&r.repairs);
    for p in &r.problems {
        println!("  PROBLEM            {p}");
    }
}

/// The summary's lines on what this run found damaged and repaired.
fn print_repairs(repairs: &[shardprep_coordinator::report::Repair]) {
    use shardprep_coordinator::report::RepairAction;
    if repairs.is_empty() {
        return;
    }
    println!(
        "  repairs            {} (listed in report.json: repairs)",
        repairs.len()
    );
    for r in repairs {
        let did = match r.action {
            RepairAction::RedoShard => "redid the shard",
            RepairAction::Remerge => "merged the table again",
            RepairAction::RemoveFile => "removed it",
        };
        println!("    {}: {} → {did}", r.subject, r.found);
    }
}

/// Image problems listed in the summary, at most.
const IMAGE_ISSUES_SHOWN: usize = 10;

/// The summary's lines on the images themselves (issue 20).
fn print_image_checks(r: &Report) {
    let t = &r.totals;
    let c = &r.image_checks;
    let mut made = vec!["header size".to_string()];
    if c.decode {
        made.push("full decode".into());
    }
    if !c.hash_fields.is_empty() {
        made.push(format!("hashes {}", c.hash_fields.join(" ")));
    }
    println!(
        "  images checked     {} ({})",
        t.images_checked,
        made.join(", ")
    );
    println!("  image problems     {}", by_reason(&t.image_problems));
    let listed = r
        .shards
        .iter()
        .flat_map(|s| s.image_issues.iter().map(move |i| (s.name.as_str(), i)));
    for (shard, i) in listed.take(IMAGE_ISSUES_SHOWN) {
        println!("    {} {shard}/{}: {}", i.kind, i.member, i.detail);
    }
    let total: u64 = t.image_problems.values().sum();
    if total > IMAGE_ISSUES_SHOWN as u64 {
        println!("    ... (all listed in report.json, per shard: image_issues)");
    }
    if let Some(n) = t
        .skipped
        .get(shardprep_core::issue::IssueKind::BadImage.as_str())
    {
        println!("  bad-image rows     {n} left out (--on-bad-image skip)");
    }
}
