//! Issue 20 end to end: `shardprep generate` makes shards with known faults
//! (lying JSONs, truncated images, wrong hashes), `run` finds and names each
//! in report.json and the summary, the default output stays the seed's, and
//! `verify --deep` repeats the checks on `data/`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::util::*;

/// `shardprep generate` of 2 shards of 30 samples with `faults` flags.
fn generate_cli(dir: &Path, faults: &[&str]) {
    let mut args = vec![
        "generate",
        "--output",
        path_str(dir),
        "--shards",
        "2",
        "--samples",
        "30",
        "--seed",
        "5",
    ];
    args.extend_from_slice(faults);
    run_ok(&args);
}

fn shards_of(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    v.sort();
    v
}

/// (member, kind) of every image issue of every shard.
fn image_issues(r: &serde_json::Value) -> BTreeSet<(String, String)> {
    r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["image_issues"].as_array().unwrap().clone())
        .map(|i| {
            (
                i["member"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn kinds(issues: &BTreeSet<(String, String)>, kind: &str) -> usize {
    issues.iter().filter(|i| i.1 == kind).count()
}

/// A JSON of `data/` with width whose image the report does not name.
fn honest_json(
    data: &Path,
    issues: &BTreeSet<(String, String)>,
) -> (std::path::PathBuf, serde_json::Value) {
    let mut names: Vec<_> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p, j)
        })
        .find(|(_, j)| {
            j.get("width").is_some()
                && !issues
                    .iter()
                    .any(|i| Some(i.0.as_str()) == j["image_name"].as_str())
        })
        .expect("an honest JSON")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn faults_are_named_and_the_default_output_stays_the_seeds() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    // Every 4th JSON lies (samples 3, 7, ..., 27: 7 per shard); every 9th
    // lacks width (8, 17, 26: not rows, their images are checked alone).
    generate_cli(&input, &["--lying-dims-every", "4"]);
    let out = tmp.path().join("out");
    let run = run_job(&input, &out, &[]);
    assert_matches_seed(&out, &shards_of(&input));
    let r = report(&out);
    let issues = image_issues(&r);
    assert_eq!(kinds(&issues, "dims_mismatch"), 14, "{issues:?}");
    assert_eq!(r["totals"]["image_problems"]["dims_mismatch"], 14);
    assert_eq!(r["totals"]["images_checked"], 60);
    assert_eq!(r["image_checks"]["dims"], "json");
    let summary = stdout(&run);
    assert!(
        summary.contains("image problems     dims_mismatch=14"),
        "{summary}"
    );
    let deep = run_ok(&["verify", "--deep", path_str(&out)]);
    let text = stdout(&deep);
    // --deep re-checks the rows' images (54: 6 JSONs lack width).
    assert!(text.contains("54 images of data/ re-checked"), "{text}");
    assert!(text.contains("dims_mismatch=14"), "{text}");
    // A lie told after the job is found by --deep and not by the report.
    let (path, mut j) = honest_json(&out.join("data"), &issues);
    j["width"] = serde_json::json!(j["width"].as_i64().unwrap() + 1);
    std::fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
    let after = run_raw(&["verify", "--deep", path_str(&out)], &[]);
    assert!(!after.status.success(), "{}", stdout(&after));
    assert!(
        stdout(&after).contains("not in report.json"),
        "{}",
        stdout(&after)
    );
}

#[test]
fn truncated_images_fail_decoding_and_skip_leaves_their_rows_out() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    generate_cli(&input, &["--truncated-every", "5", "--no-width-every", "0"]);
    let plain = tmp.path().join("plain");
    run_job(&input, &plain, &[]);
    assert!(
        report(&plain)["totals"]["image_problems"]
            .get("decode_failed")
            .is_none()
    );
    let out = tmp.path().join("out");
    let run = run_job(
        &input,
        &out,
        &["--check-images", "decode", "--on-bad-image", "skip"],
    );
    let r = report(&out);
    let issues = image_issues(&r);
    assert_eq!(kinds(&issues, "decode_failed"), 12, "{issues:?}");
    assert_eq!(r["totals"]["skipped"]["bad_image"], 12);
    assert_eq!(r["rows"], 48);
    let rows = read_rows(&out.join("dalle3.parquet"));
    let bad: BTreeSet<&str> = issues.iter().map(|i| i.0.as_str()).collect();
    assert!(rows.iter().all(|row| !bad.contains(row.3.as_str())));
    assert!(stdout(&run).contains("12 left out"), "{}", stdout(&run));
    let deep = run_ok(&["verify", "--deep", path_str(&out)]);
    assert!(stdout(&deep).contains("full decode"), "{}", stdout(&deep));
    assert!(
        stdout(&deep).contains("decode_failed=12"),
        "{}",
        stdout(&deep)
    );
}

#[test]
fn wrong_hashes_are_found_with_check_hashes_and_by_verify_deep() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    generate_cli(
        &input,
        &["--wrong-hash-every", "6", "--no-width-every", "0"],
    );
    let out = tmp.path().join("out");
    run_job(&input, &out, &["--check-hashes"]);
    let r = report(&out);
    let issues = image_issues(&r);
    assert_eq!(kinds(&issues, "hash_mismatch"), 10, "{issues:?}");
    // md5_file_hash and sha512_hash are both wrong in each.
    assert_eq!(r["totals"]["image_problems"]["hash_mismatch"], 20);
    assert_eq!(
        r["image_checks"]["hash_fields"],
        serde_json::json!(["md5_file_hash=md5", "sha512_hash=sha512"])
    );
    // Default rows: nothing left out.
    assert_eq!(r["rows"], 60);
    // A flipped byte in an image whose hash was right is found by --deep.
    let data = out.join("data");
    let victim = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_str().unwrap().to_string();
            !n.ends_with(".json") && !n.ends_with(".txt") && !issues.iter().any(|i| i.0 == n)
        })
        .unwrap();
    run_ok(&["verify", "--deep", path_str(&out)]);
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let after = run_raw(&["verify", "--deep", path_str(&out)], &[]);
    let text = stdout(&after);
    assert!(!after.status.success(), "{text}");
    assert!(text.contains("hash_mismatch"), "{text}");
}

#[test]
fn hash_field_flag_and_env_are_checked_before_the_job() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    generate_cli(&input, &[]);
    let out = tmp.path().join("out");
    let bad = run_raw(
        &[
            "run",
            "--input",
            path_str(&input),
            "--output",
            path_str(&out),
            "--hash-field",
            "md5_file_hash=crc32",
        ],
        &[],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("crc32"),
        "{}",
        explain(&[], &bad)
    );
    let ok = run_raw(
        &[
            "run",
            "--input",
            path_str(&input),
            "--output",
            path_str(&out),
        ],
        &[("SHARDPREP_HASH_FIELDS", "sha512_hash=sha512")],
    );
    assert!(ok.status.success(), "{}", explain(&[], &ok));
    let r = report(&out);
    assert_eq!(
        r["image_checks"]["hash_fields"],
        serde_json::json!(["sha512_hash=sha512"])
    );
    assert!(r["totals"]["image_problems"].get("hash_mismatch").is_none());
}
