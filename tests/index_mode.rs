//! `--mode index`: a webshart index per shard instead of extracted files,
//! through the real binary (coordinator, workers, gRPC, files on disk).

use std::path::Path;

use serde_json::Value;

use crate::util::*;

fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

/// Shards with lying dimensions too, so that the mismatch count is not zero.
fn shards(dir: &Path) -> Vec<std::path::PathBuf> {
    generate(
        dir,
        &GenOptions {
            shards: 3,
            samples_per_shard: 12,
            image_bytes: 700,
            seed: 19,
            no_width_every: 5,
            lying_dims_every: 4,
            ..GenOptions::default()
        },
    )
    .expect("generate shards")
}

fn verify(out: &Path) -> std::process::Output {
    run_raw(&["verify", path_str(out)], &[])
}

fn files_under(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

#[test]
fn index_mode_writes_an_index_per_shard_and_the_extract_modes_parquet() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let (out, ext) = (dir.path().join("out"), dir.path().join("ext"));
    run_job(&input, &out, &["--mode", "index"]);
    run_job(&input, &ext, &[]);

    for tar in &tars {
        let name = tar.file_name().unwrap().to_str().unwrap();
        let index = out.join("index").join(name.replace(".tar", ".json"));
        let doc = read_json(&index);
        assert_eq!(
            doc["filesize"].as_u64(),
            Some(std::fs::metadata(tar).unwrap().len())
        );
        assert!(doc["files"].as_object().is_some_and(|f| !f.is_empty()));
    }
    assert_eq!(files_under(&out.join("index")), tars.len());
    assert_eq!(
        std::fs::read(out.join("dalle3.parquet")).unwrap(),
        std::fs::read(ext.join("dalle3.parquet")).unwrap(),
        "index mode must give the extract mode's parquet byte for byte"
    );
    assert_eq!(
        files_under(&out.join("data")),
        0,
        "index mode extracts nothing"
    );

    let report = read_json(&out.join("report.json"));
    assert_eq!(report["verdict"], "ok");
    assert_eq!(report["mode"], "index");
    let ext_report = read_json(&ext.join("report.json"));
    assert_eq!(report["found_json"], ext_report["found_json"]);
    assert_eq!(report["rows"], ext_report["rows"]);
    let ix = &report["index"];
    assert_eq!(
        ix["entries"].as_u64(),
        report["totals"]["members"].as_u64(),
        "every member of these shards is a regular file with a safe name: {ix}"
    );
    assert_eq!(ix["images_with_dimensions"], report["totals"]["images"]);
    assert!(ix["dimension_mismatches"].as_u64().unwrap() > 0, "{ix}");

    let entry = read_json(&out.join("multidatabackend.json"));
    let e = &entry[0];
    assert_eq!(e["type"], "webshart");
    assert_eq!(
        e["source"],
        std::path::absolute(&input).unwrap().to_str().unwrap()
    );
    assert_eq!(
        e["metadata"],
        std::path::absolute(out.join("index"))
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(e["webshart"]["shard_cache_gb"], 0);

    let v = verify(&out);
    assert!(v.status.success(), "{}", explain(&["verify"], &v));
}

#[test]
fn a_rerun_of_an_index_job_is_a_no_op_and_a_lost_index_is_redone() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let out = dir.path().join("out");
    run_job(&input, &out, &["--mode", "index"]);
    let index = out.join("index").join("data-000001.json");
    let first = std::fs::read(&index).unwrap();
    let report = read_json(&out.join("report.json"));

    run_job(&input, &out, &["--mode", "index"]);
    let again = read_json(&out.join("report.json"));
    assert_eq!(
        again["finished_at"], report["finished_at"],
        "a re-run rewrites nothing"
    );

    std::fs::remove_file(&index).unwrap();
    let out2 = run_job(&input, &out, &["--mode", "index"]);
    assert_eq!(
        std::fs::read(&index).unwrap(),
        first,
        "the same tar gives the same bytes"
    );
    let redone = read_json(&out.join("report.json"));
    assert_eq!(
        redone["shards_recovered"].as_u64(),
        Some(tars.len() as u64 - 1)
    );
    assert!(
        String::from_utf8_lossy(&out2.stderr).contains("index file is missing"),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
}

#[test]
fn a_truncated_shard_gets_no_index_and_the_report_names_it() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let cut = &tars[1];
    let len = std::fs::metadata(cut).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(cut).unwrap();
    f.set_len(len / 2 + 100).unwrap();
    drop(f);
    let out = dir.path().join("out");
    let args = [
        "run",
        "--input",
        path_str(&input),
        "--output",
        path_str(&out),
        "--workers",
        "2",
        "--mode",
        "index",
    ];
    let r = run_raw(&args, &[]);
    assert!(!r.status.success(), "{}", explain(&args, &r));
    assert!(!out.join("index").join("data-000001.json").exists());
    assert!(out.join("index").join("data-000000.json").is_file());
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["verdict"], "failed");
    let failures = report["failures"].to_string();
    assert!(
        failures.contains("data-000001.tar") && failures.contains("truncated"),
        "{failures}"
    );
    assert!(!verify(&out).status.success());
}

#[test]
fn verify_catches_a_tampered_index() {
    let dir = tempdir();
    let input = dir.path().join("in");
    shards(&input);
    let out = dir.path().join("out");
    run_job(&input, &out, &["--mode", "index"]);
    let index = out.join("index").join("data-000000.json");
    let mut doc = read_json(&index);
    let image = doc["files"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, v)| !k.ends_with(".json") && v.get("width").is_some())
        .map(|(k, _)| k.clone())
        .expect("an image entry with dimensions");
    let e = &mut doc["files"][&image];
    e["offset"] = Value::from(e["offset"].as_u64().unwrap() + 512);
    std::fs::write(&index, serde_json::to_vec(&doc).unwrap()).unwrap();
    let v = verify(&out);
    let text = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success(), "{text}");
    assert!(
        text.contains("image signature") && text.contains(&image),
        "{text}"
    );

    // An entry past the end of the tar.
    e_past_end(&index, &image);
    let v = verify(&out);
    let text = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(text.contains("ends past the tar"), "{text}");
}

fn e_past_end(index: &Path, image: &str) {
    let mut doc = read_json(index);
    let size = doc["filesize"].as_u64().unwrap();
    doc["files"][image]["offset"] = Value::from(size);
    std::fs::write(index, serde_json::to_vec(&doc).unwrap()).unwrap();
}

#[test]
fn index_mode_refuses_remote_inputs_with_a_clear_message() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let args = [
        "run",
        "--input",
        "https://127.0.0.1:9/shards/data-{000000..000001}.tar",
        "--output",
        path_str(&out),
        "--mode",
        "index",
    ];
    let r = run_raw(&args, &[]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("--mode index reads local shards"), "{err}");
}
