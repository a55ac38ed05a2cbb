//! Helpers shared by the integration tests: temp dirs, running the binary
//! with diagnostics on failure, and an independent oracle of the seed's
//! three steps (tar xf, compile.py, extract-captions.py).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use shardprep_fixtures::{GenOptions, Sample, generate, write_shard};

/// A path as a `&'static str` for argument lists (leaks a little; tests only).
pub fn path_str(p: impl AsRef<Path>) -> &'static str {
    Box::leak(p.as_ref().to_string_lossy().into_owned().into_boxed_str())
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardprep"))
}

/// A temp dir that survives the test when `KEEP_TEST_DIRS` is set.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shardprep-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Runs the binary; returns its output (not checked).
pub fn run_raw(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("start shardprep")
}

/// Formats a command's result for a failure message.
pub fn explain(args: &[&str], out: &Output) -> String {
    format!(
        "command: shardprep {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the binary and asserts it exits 0.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run_raw(args, &[]);
    assert!(
        out.status.success(),
        "expected success\n{}",
        explain(args, &out)
    );
    out
}

/// `shardprep run --input IN --output OUT --workers 2 EXTRA...`, asserted to succeed.
pub fn run_job(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--input",
        path_str(input),
        "--output",
        path_str(out),
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// Generates `shards` DALLE-3-style shards with `seed` into `dir`.
pub fn make_shards(dir: &Path, shards: usize, samples: usize, seed: u64) -> Vec<PathBuf> {
    generate(
        dir,
        &GenOptions {
            shards,
            samples_per_shard: samples,
            image_bytes: 700,
            seed,
            no_width_every: 7,
            ..GenOptions::default()
        },
    )
    .expect("generate shards")
}

/// One parquet row.
pub type Row = (i64, i64, String, String);

/// What the seed's pipeline produces.
#[derive(Debug, Default)]
pub struct Expected {
    /// Every file of data/ (relative path → bytes), captions included.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// Rows in shard order, then member order.
    pub rows: Vec<Row>,
    /// The seed's `find data -name '*.json' | wc -l` before overwrites: JSON members.
    pub json_members: u64,
}

fn py_int(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_else(|| n.as_f64().unwrap() as i64),
        serde_json::Value::String(s) => s.trim().parse().unwrap(),
        other => panic!("oracle: int({other})"),
    }
}

/// The seed's three steps, computed independently with the `tar` crate and
/// `serde_json::Value` (only for well-formed shards).
pub fn oracle(shards: &[PathBuf], caption_field: &str) -> Expected {
    let mut e = Expected::default();
    let mut captions = Vec::new();
    let mut sorted = shards.to_vec();
    sorted.sort();
    for shard in &sorted {
        let mut ar = tar::Archive::new(std::fs::File::open(shard).unwrap());
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if path.to_string_lossy().ends_with(".json") {
                e.json_members += 1;
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                if v.get("width").is_some() {
                    let name = v["image_name"].as_str().unwrap().to_string();
                    let caption = v[caption_field].as_str().unwrap().to_string();
                    let stem = match name.rfind('.') {
                        Some(i) => name[..i].to_string(),
                        None => name.clone(),
                    };
                    captions.push((
                        PathBuf::from(format!("{stem}.txt")),
                        caption.clone().into_bytes(),
                    ));
                    e.rows
                        .push((py_int(&v["width"]), py_int(&v["height"]), caption, name));
                }
            }
            e.files.insert(path, data);
        }
    }
    // extract-captions.py runs after every shard is extracted.
    for (p, c) in captions {
        e.files.insert(p, c);
    }
    e
}

/// Every regular file under `dir` (relative path → bytes).
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

/// Rows of a parquet file with the seed's four columns.
pub fn read_rows(path: &Path) -> Vec<Row> {
    use arrow_array::{Array, Int64Array, StringArray};
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let w = b
            .column_by_name("width")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let h = b
            .column_by_name("height")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let c = b
            .column_by_name("caption")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let n = b
            .column_by_name("filename")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            assert!(!w.is_null(i) && !n.is_null(i));
            rows.push((
                w.value(i),
                h.value(i),
                c.value(i).to_string(),
                n.value(i).to_string(),
            ));
        }
    }
    rows
}

/// The parsed report.json of an output folder.
pub fn report(out: &Path) -> serde_json::Value {
    let p = out.join("report.json");
    serde_json::from_slice(
        &std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
    )
    .unwrap()
}

/// Asserts that `out` holds exactly what the seed's pipeline gives for `shards`.
pub fn assert_matches_seed(out: &Path, shards: &[PathBuf]) {
    let e = oracle(shards, "short_caption");
    let got = read_tree(&out.join("data"));
    let want_names: Vec<_> = e.files.keys().collect();
    let got_names: Vec<_> = got.keys().collect();
    assert_eq!(
        got_names.len(),
        want_names.len(),
        "different number of files in data/"
    );
    assert_eq!(got_names, want_names, "different file names in data/");
    for (k, v) in &e.files {
        assert!(
            got[k] == *v,
            "file data/{} differs from the seed's",
            k.display()
        );
    }
    let rows = read_rows(&out.join("dalle3.parquet"));
    assert_eq!(rows.len(), e.rows.len(), "row count");
    assert_eq!(rows, e.rows, "rows (shard order, then member order)");
    let r = report(out);
    assert_eq!(r["verdict"], "ok", "report: {r:#}");
    assert_eq!(r["found_json"], e.json_members);
    assert_eq!(r["rows"], e.rows.len() as u64);
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
