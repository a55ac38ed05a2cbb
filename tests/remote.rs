//! Remote shards end to end: the real binary (`shardprep run`, coordinator + worker
//! processes) reading shards from real servers this file starts on free ports of
//! 127.0.0.1, compared with a run on the same shards in a local folder.
//!
//! - S3: `moto.server` (needs `SHARDPREP_PYTHON`, a python with `moto[server]` and boto3;
//!   without it the test prints a skip line and returns), loaded with boto3.
//! - HTTP(S) brace URLs, `--input-list` and a fake Hugging Face Hub: the small HTTP/1.1
//!   server of `crates/remote/tests/common/server.rs` (Range requests, ETags, redirects,
//!   fixed statuses, a connection dropped mid-body once, HEAD answered 200 while GET
//!   fails), which records every request.
//!
//! "Identical" means: the same parquet bytes, the same data/ tree, the same counts in
//! report.json (totals and per shard), the same multidatabackend.json up to the output path,
//! and what the seed's steps give for the shards (`assert_matches_seed`).
//! No test changes the environment of this process: variables go to the child processes.
//! Every run of the binary is bounded in time; every server stops when its test ends.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Seek};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// Longest a single run of the binary may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The warning the remote reader logs when it resumes a dropped connection
/// (crates/remote/src/reader.rs, `pump`).
const RESUME_LOG: &str = "remote read interrupted; resuming with a range request";

/// Shards per test set, samples per shard.
const SHARDS: usize = 3;
const SAMPLES: usize = 20;

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// What one bounded run of the binary gave.
struct Ran {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn explain(&self) -> String {
        format!(
            "command: shardprep {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }

    fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "expected success\n{}",
            self.explain()
        );
    }

    /// stdout and stderr together.
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Whether a variable of this process must not reach the binary: its own settings,
/// credentials and endpoints of the stores, proxies (the servers are on loopback).
fn scrubbed(name: &OsStr) -> bool {
    let upper = name.to_string_lossy().to_ascii_uppercase();
    is_shardprep_var(name)
        || ["AWS_", "HF_", "HUGGING_FACE", "GOOGLE_", "AZURE_"]
            .iter()
            .any(|p| upper.starts_with(p))
        || ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "RUST_LOG"].contains(&upper.as_str())
}

/// Removes from `cmd` every variable of this process that [`scrubbed`] names.
fn scrub(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if scrubbed(&k) {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `shardprep ARGS` with a clean environment plus `envs`, at most [`RUN_TIMEOUT`]
/// (then SIGTERM, so that `run` stops its workers, then SIGKILL, and the test fails).
fn shardprep(args: &[&str], envs: &[(&str, &str)]) -> Ran {
    let mut out = tempfile::tempfile().expect("temp file for stdout");
    let mut err = tempfile::tempfile().expect("temp file for stderr");
    let mut cmd = command(args);
    scrub(&mut cmd)
        .env("RUST_LOG", "info")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .envs(envs.iter().copied())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let mut proc = Proc::spawn("shardprep", &mut cmd);
    let start = Instant::now();
    let status = proc
        .wait_timeout(RUN_TIMEOUT)
        .unwrap_or_else(|| proc.stop());
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    let ran = Ran {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    };
    assert!(
        start.elapsed() <= RUN_TIMEOUT,
        "shardprep did not finish within {RUN_TIMEOUT:?}\n{}",
        ran.explain()
    );
    assert!(
        !ran.stderr.contains("panicked"),
        "the binary panicked\n{}",
        ran.explain()
    );
    ran
}

/// `shardprep run --input INPUT --output OUT --workers 2 EXTRA...`
fn run_input(input: &str, out: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Ran {
    let mut args = vec![
        "run",
        "--input",
        input,
        "--output",
        path_str(out),
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    shardprep(&args, envs)
}

/// `shardprep run --input-list LIST --output OUT --workers 2`
fn run_list(list: &Path, out: &Path, envs: &[(&str, &str)]) -> Ran {
    shardprep(
        &[
            "run",
            "--input-list",
            path_str(list),
            "--output",
            path_str(out),
            "--workers",
            "2",
        ],
        envs,
    )
}

// ---------------------------------------------------------------------------------------
// Shards, the local reference run, comparisons
// ---------------------------------------------------------------------------------------

/// A temp dir with generated shards in `in/` and the output of a local-folder run of
/// them in `local/`.
struct Fixture {
    tmp: TestDir,
    shards: Vec<PathBuf>,
    local: PathBuf,
}

impl Fixture {
    fn new(seed: u64) -> Fixture {
        let tmp = tempdir();
        let input = tmp.path().join("in");
        let shards = make_shards(&input, SHARDS, SAMPLES, seed);
        let local = tmp.path().join("local");
        run_input(path_str(&input), &local, &[], &[]).assert_ok();
        assert_matches_seed(&local, &shards);
        Fixture { tmp, shards, local }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn out(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The shard set with data-000001.tar replaced by `changed`, copied into one folder
    /// (the oracle orders shards by path).
    fn with_shard_1(&self, changed: &Path) -> Vec<PathBuf> {
        let dir = self.tmp.path().join("now");
        std::fs::create_dir_all(&dir).unwrap();
        self.shards
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let to = dir.join(p.file_name().unwrap());
                std::fs::copy(if i == 1 { changed } else { p }, &to).unwrap();
                to
            })
            .collect()
    }

    /// (name, bytes) of every shard.
    fn shard_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.shards
            .iter()
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(p).unwrap(),
                )
            })
            .collect()
    }
}

/// What must be equal between two runs of the same shards, per shard.
fn shard_view(r: &Value) -> Vec<(Value, Value, Value, Value)> {
    r["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no shards in the report: {r:#}"))
        .iter()
        .map(|s| {
            (
                s["name"].clone(),
                s["state"].clone(),
                s["counts"].clone(),
                s["issues"].clone(),
            )
        })
        .collect()
}

/// `remote` holds exactly what the local run `local` holds, and what the seed gives.
fn assert_same_outputs(local: &Path, remote: &Path, shards: &[PathBuf]) {
    compare_outputs(local, remote, shards, true);
}

/// As [`assert_same_outputs`]; with `same_names` false the shards may have other names
/// (in the same order).
fn compare_outputs(local: &Path, remote: &Path, shards: &[PathBuf], same_names: bool) {
    let parquet = |out: &Path| std::fs::read(out.join("dalle3.parquet")).unwrap();
    let (a, b) = (parquet(local), parquet(remote));
    assert!(
        a == b,
        "the parquet differs from the local run's ({} vs {} bytes)",
        b.len(),
        a.len()
    );
    let (ta, tb) = (
        read_tree(&local.join("data")),
        read_tree(&remote.join("data")),
    );
    assert_eq!(
        tb.keys().collect::<Vec<_>>(),
        ta.keys().collect::<Vec<_>>(),
        "file names in data/"
    );
    for (k, v) in &ta {
        assert!(
            tb[k] == *v,
            "data/{} differs from the local run's",
            k.display()
        );
    }
    let (ra, rb) = (report(local), report(remote));
    for key in [
        "verdict",
        "problems",
        "found_json",
        "rows",
        "fragment_rows",
        "shards_total",
        "shards_done",
        "shards_failed",
        "shards_recovered",
        "totals",
        "duplicate_filenames",
        "failures",
    ] {
        assert_eq!(rb[key], ra[key], "report.json {key}: {rb:#}");
    }
    let view = |r: &Value| {
        let mut v = shard_view(r);
        if !same_names {
            v.iter_mut().for_each(|s| s.0 = Value::Null);
        }
        v
    };
    assert_eq!(view(&rb), view(&ra), "per-shard report");
    let backend = |out: &Path| {
        std::fs::read_to_string(out.join("multidatabackend.json"))
            .unwrap()
            .replace(path_str(out), "OUT")
    };
    assert_eq!(backend(remote), backend(local), "multidatabackend.json");
    assert_matches_seed(remote, shards);
}

/// `text` without ANSI colour sequences (the human log format colours its fields).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The report's entry of one shard.
fn shard_entry<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no shard {name} in the report: {r:#}"))
}

/// Every file of `out` outside data/ (report, manifests, fragments, logs) as text.
fn text_outside_data(out: &Path) -> String {
    let mut all = String::new();
    for (path, bytes) in read_tree(out) {
        if !path.starts_with("data") {
            all.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    all
}

/// A content hash as ETag.
fn etag_of(data: &[u8]) -> String {
    format!("{:016x}", shardprep_core::layout::fnv1a64(data))
}

// ---------------------------------------------------------------------------------------
// A small HTTP/1.1 server on 127.0.0.1 (`crate::server`, shared with the remote crate's tests)
// ---------------------------------------------------------------------------------------

use crate::server::{Route, Seen, Server};

/// A file route whose ETag is derived from its bytes.
fn file_route(data: &[u8]) -> Route {
    Route::file(data, &etag_of(data))
}

/// Serves every shard as `{prefix}{name}`.
fn serve_shards(server: &Server, prefix: &str, shards: &[(String, Vec<u8>)]) {
    for (name, data) in shards {
        server.route(&format!("{prefix}{name}"), file_route(data));
    }
}

// ---------------------------------------------------------------------------------------
// moto_server
// ---------------------------------------------------------------------------------------

/// The dummy secret key given to the binary: it must never be printed.
const AWS_SECRET: &str = "moto-secret-key-0f3a9c71e2";

/// Creates the bucket if needed, uploads KEY=PATH pairs, prints {key: etag} as JSON.
const S3_PUT: &str = r#"
import json, sys, boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=bucket)
etags = {}
for pair in sys.argv[3:]:
    key, path = pair.split("=", 1)
    with open(path, "rb") as f:
        s3.put_object(Bucket=bucket, Key=key, Body=f.read())
    etags[key] = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
print(json.dumps(etags))
"#;

/// A moto S3 server on a free port of 127.0.0.1, stopped when dropped (even on panic).
struct Moto {
    proc: Proc,
    python: String,
    endpoint: String,
}

impl Moto {
    fn start(python: &str) -> Moto {
        let port = free_port();
        let proc = Proc::spawn(
            "moto.server",
            Command::new(python)
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let mut moto = Moto {
            proc,
            python: python.to_string(),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.proc.poll() {
                panic!(
                    "moto.server exited at start ({status}): is moto[server] installed for {python}?"
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto.server did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Environment of the binary for this endpoint.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIDMOTOTEST".into()),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Uploads `objects` (key, file) into `bucket` with boto3; returns their ETags.
    fn put(&self, bucket: &str, objects: &[(String, PathBuf)]) -> BTreeMap<String, String> {
        let mut cmd = Command::new(&self.python);
        scrub(&mut cmd)
            .arg("-c")
            .arg(S3_PUT)
            .arg(&self.endpoint)
            .arg(bucket)
            .stdin(Stdio::null());
        for (key, path) in objects {
            cmd.arg(format!("{key}={}", path.display()));
        }
        let out = cmd.output().expect("run the boto3 loader");
        assert!(
            out.status.success(),
            "boto3 upload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ETags from the loader")
    }
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// 1 (and 5, 6 on S3): `--input s3://BUCKET/PREFIX/` against moto gives the local run's
/// outputs; a missing bucket fails naming the URL, without the secret key; an object
/// re-uploaded with other content (new ETag) is redone on the next run, the others recovered.
#[test]
fn s3_prefix_via_moto_matches_a_local_run() {
    let Ok(python) = std::env::var("SHARDPREP_PYTHON") else {
        println!(
            "skipped remote::s3_prefix_via_moto_matches_a_local_run: set SHARDPREP_PYTHON to a python with moto[server] and boto3 (CI does)"
        );
        return;
    };
    let fx = Fixture::new(7101);
    let moto = Moto::start(&python);
    let readme = fx.dir().join("README.md");
    std::fs::write(&readme, "not a shard").unwrap();
    let mut objects: Vec<(String, PathBuf)> = fx
        .shards
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            (format!("dalle3/data/{name}"), p.clone())
        })
        .collect();
    objects.push(("dalle3/data/README.md".into(), readme));
    // Outside the prefix: must not be listed.
    objects.push(("dalle3/other/data-000009.tar".into(), fx.shards[0].clone()));
    let etags = moto.put("shards", &objects);
    let env = moto.env();
    let env = env_refs(&env);

    let out = fx.out("s3");
    let ran = run_input("s3://shards/dalle3/data/", &out, &[], &env);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);
    let r = report(&out);
    assert_eq!(r["input"], "s3://shards/dalle3/data/", "{r:#}");
    assert!(!ran.all().contains(AWS_SECRET), "{}", ran.explain());
    assert!(!text_outside_data(&out).contains(AWS_SECRET));

    // A bucket that does not exist.
    let ran = run_input(
        "s3://no-such-bucket/dalle3/data/",
        &fx.out("s3-missing"),
        &[],
        &env,
    );
    assert!(!ran.status.success(), "{}", ran.explain());
    println!(
        "missing bucket: {}",
        ran.stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default()
    );
    assert!(
        ran.stderr.contains("s3://no-such-bucket/dalle3/data/")
            && ran.stderr.contains("does not exist"),
        "the error names the bucket URL\n{}",
        ran.explain()
    );
    assert!(!ran.all().contains(AWS_SECRET), "{}", ran.explain());

    // Re-upload data-000001.tar with other content: a new ETag.
    let other = make_shards(&fx.dir().join("other"), SHARDS, SAMPLES, 7199);
    let new_etags = moto.put(
        "shards",
        &[("dalle3/data/data-000001.tar".into(), other[1].clone())],
    );
    let key = "dalle3/data/data-000001.tar";
    assert_ne!(
        etags[key], new_etags[key],
        "moto gave the new content a new ETag"
    );
    let ran = run_input("s3://shards/dalle3/data/", &out, &[], &env);
    ran.assert_ok();
    let r = report(&out);
    assert_eq!(r["shards_recovered"], 2, "{r:#}");
    assert_eq!(shard_entry(&r, "data-000000.tar")["recovered"], true);
    assert_eq!(shard_entry(&r, "data-000001.tar")["recovered"], false);
    assert_eq!(shard_entry(&r, "data-000002.tar")["recovered"], true);
    let now = fx.with_shard_1(&other[1]);
    assert_matches_seed(&out, &now);
    drop(moto);
}

/// 2: brace URLs over HTTP, one shard behind a 302, one whose first GET is cut mid-body:
/// the run finishes with the local run's outputs, and the worker logged the resume.
#[test]
fn http_brace_urls_with_redirect_and_dropped_connection_match_a_local_run() {
    let fx = Fixture::new(7201);
    let server = Server::start();
    let shards = fx.shard_bytes();
    server.route("/shards/data-000000.tar", file_route(&shards[0].1));
    server.route(
        "/shards/data-000001.tar",
        Route::Redirect(server.url("/blobs/data-000001.tar")),
    );
    server.route("/blobs/data-000001.tar", file_route(&shards[1].1));
    server.route(
        "/shards/data-000002.tar",
        Route::DropOnce {
            data: Arc::new(shards[2].1.clone()),
            etag: etag_of(&shards[2].1),
            dropped: AtomicBool::new(false),
        },
    );

    let out = fx.out("http");
    let input = server.url("/shards/data-{000000..000002}.tar");
    let ran = run_input(&input, &out, &[], &[]);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);
    assert_eq!(report(&out)["input"], input.as_str());

    // The redirect was followed for the read.
    assert!(server.count("GET", "/blobs/data-000001.tar") >= 1);
    // The cut GET was resumed with a range request from where it stopped.
    let gets: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path() == "/shards/data-000002.tar")
        .collect();
    assert_eq!(gets.len(), 2, "one cut GET, one resumed GET: {gets:?}");
    let half = shards[2].1.len() / 2;
    assert_eq!(
        gets[1].header("range"),
        Some(format!("bytes={half}-").as_str())
    );
    let resumed: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.contains(RESUME_LOG))
        .collect();
    assert_eq!(resumed.len(), 1, "one resume logged\n{}", ran.explain());
    assert!(
        resumed[0].contains(&server.url("/shards/data-000002.tar")),
        "the resume names the URL: {}",
        resumed[0]
    );
    let r = report(&out);
    assert_eq!(shard_entry(&r, "data-000002.tar")["attempts"], 1, "{r:#}");
}

/// 3: `hf://datasets/OWNER/NAME/PATH` against a fake Hub named by HF_ENDPOINT (tree API,
/// resolve URLs, one redirected to a "CDN" on another host name): the local run's outputs;
/// HF_TOKEN reached the Hub as a bearer token (never the CDN) and is printed nowhere.
#[test]
fn hub_tree_and_resolve_urls_match_a_local_run() {
    const TOKEN: &str = "hf_e2e_secret_token_5521";
    let fx = Fixture::new(7301);
    let server = Server::start();
    let shards = fx.shard_bytes();
    let mut entries: Vec<String> = shards
        .iter()
        .map(|(name, data)| {
            format!(
                r#"{{"type":"file","oid":"{}","size":134,"path":"data/{name}","lfs":{{"oid":"{}","size":{},"pointerSize":134}}}}"#,
                etag_of(name.as_bytes()),
                etag_of(data).repeat(4),
                data.len()
            )
        })
        .collect();
    entries.push(r#"{"type":"file","oid":"77","size":11,"path":"data/README.md"}"#.into());
    entries.push(r#"{"type":"directory","oid":"78","size":0,"path":"data/sub"}"#.into());
    server.route(
        "/api/datasets/acme/dalle3-mini/tree/main/data",
        Route::Json {
            body: format!("[{}]", entries.join(",")),
            link: None,
        },
    );
    let resolve = "/datasets/acme/dalle3-mini/resolve/main/data/";
    server.route(
        &format!("{resolve}data-000000.tar"),
        file_route(&shards[0].1),
    );
    server.route(
        &format!("{resolve}data-000001.tar"),
        file_route(&shards[1].1),
    );
    let cdn = format!("http://localhost:{}", server.addr.port());
    server.route(
        &format!("{resolve}data-000002.tar"),
        Route::Redirect(format!("{cdn}/cdn/2.tar")),
    );
    server.route("/cdn/2.tar", file_route(&shards[2].1));

    let out = fx.out("hub");
    let endpoint = server.url("");
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", TOKEN)];
    let ran = run_input("hf://datasets/acme/dalle3-mini/data", &out, &[], &env);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);

    let seen = server.seen();
    let bearer = format!("Bearer {TOKEN}");
    let api: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path().starts_with("/api/"))
        .collect();
    assert_eq!(api.len(), 1, "one tree API request: {seen:#?}");
    assert!(api[0].target.contains("recursive=true"), "{:?}", api[0]);
    let hub: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path().starts_with("/api/") || s.path().starts_with("/datasets/"))
        .collect();
    assert!(hub.len() >= 4, "tree + 3 resolve GETs: {seen:#?}");
    for request in &hub {
        assert_eq!(
            request.header("authorization"),
            Some(bearer.as_str()),
            "the Hub got the token: {request:?}"
        );
    }
    let cdn_requests: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path().starts_with("/cdn/"))
        .collect();
    assert!(
        !cdn_requests.is_empty(),
        "the redirect was followed: {seen:#?}"
    );
    for request in cdn_requests {
        assert_eq!(
            request.header("authorization"),
            None,
            "token sent to the CDN: {request:?}"
        );
    }
    assert!(!ran.all().contains(TOKEN), "{}", ran.explain());
    assert!(!text_outside_data(&out).contains(TOKEN));
}

/// 4a: `--input-list` of HTTP URLs (a comment, a blank line, a brace line) gives the local
/// run's outputs.
#[test]
fn input_list_of_http_urls_matches_a_local_run() {
    let fx = Fixture::new(7401);
    let server = Server::start();
    serve_shards(&server, "/mirror/shards/", &fx.shard_bytes());
    let list = fx.dir().join("shards.txt");
    std::fs::write(
        &list,
        format!(
            "# the mini set\n{}\n\n  {}  \n",
            server.url("/mirror/shards/data-000000.tar"),
            server.url("/mirror/shards/data-{000001..000002}.tar"),
        ),
    )
    .unwrap();
    let out = fx.out("list-http");
    let ran = run_list(&list, &out, &[]);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);
    for name in ["data-000000.tar", "data-000001.tar", "data-000002.tar"] {
        assert_eq!(
            server.count("GET", &format!("/mirror/shards/{name}")),
            1,
            "{name}"
        );
    }
}

/// 4b: `--input-list` of local paths (relative to the list's folder, with `./` and `..`,
/// and absolute) gives the local run's outputs.
#[test]
fn input_list_of_local_paths_matches_a_local_run() {
    let fx = Fixture::new(7402);
    let list = fx.dir().join("lists").join("shards.txt");
    std::fs::create_dir_all(list.parent().unwrap()).unwrap();
    std::fs::write(
        &list,
        format!(
            "../in/data-000000.tar\n./../in/../in/data-000001.tar\n{}\n",
            fx.shards[2].display()
        ),
    )
    .unwrap();
    let out = fx.out("list-local");
    let ran = run_list(&list, &out, &[]);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);
}

/// 5: bad remote inputs fail before any work with exit 2 and one clear message naming the
/// URL, never the credentials.
#[test]
fn bad_remote_inputs_fail_with_a_message_naming_the_url() {
    const TOKEN: &str = "hf_bad_inputs_secret_8812";
    let tmp = tempdir();
    let server = Server::start();
    let shard = make_shards(&tmp.path().join("in"), 1, 4, 7501);
    let data = std::fs::read(&shard[0]).unwrap();
    for i in 0..3 {
        server.route(&format!("/shards/data-00000{i}.tar"), file_route(&data));
    }
    server.route("/private/data-000000.tar", Route::Status(403));
    let host = server.addr.to_string();
    let u = |path: &str| server.url(path);
    let endpoint = server.url("");
    let hub_env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_TOKEN", TOKEN)];

    // (input, substrings the message must hold, substrings it must not hold)
    let cases: Vec<(String, Vec<String>, Vec<String>)> = vec![
        (
            u("/shards/data-{000000..000003}.tar"),
            vec![u("/shards/data-000003.tar"), "not found (404)".into()],
            vec![],
        ),
        (
            u("/private/data-000000.tar"),
            vec![u("/private/data-000000.tar"), "access denied (403)".into()],
            vec![],
        ),
        (
            u("/shards/data-{000000..000002.tar"),
            vec!["brace pattern".into(), "unmatched '{'".into()],
            vec![],
        ),
        (
            u("/shards/data-{0..9..0}.tar"),
            vec!["brace pattern".into(), "zero step".into()],
            vec![],
        ),
        (
            u("/shards/data-{0..99999999}.tar"),
            vec!["brace pattern".into(), "more than 1000000 names".into()],
            vec![],
        ),
        (
            "http://127.0.0.1:{1..2}/data.tar".into(),
            vec!["may only vary below the bucket, host".into()],
            vec![],
        ),
        (
            format!("http://alice:hunter2@{host}/shards/missing-{{0..1}}.tar"),
            vec![format!("/shards/missing-0.tar"), "not found (404)".into()],
            vec!["hunter2".into(), "alice:".into()],
        ),
        (
            u("/shards/"),
            vec![u("/shards/"), "cannot be listed".into()],
            vec![],
        ),
        (
            "hf://datasets/acme/missing/data".into(),
            vec![
                "/api/datasets/acme/missing/tree/main/data".into(),
                "not found (404)".into(),
            ],
            vec![TOKEN.into()],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (input, want, never)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let ran = run_input(input, &out, &[], &hub_env);
        check_refused(&ran, want, never, &mut failures);
    }

    // Input lists.
    let list = |name: &str, text: String| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let other_host = format!("http://localhost:{}", server.addr.port());
    let list_cases: Vec<(PathBuf, Vec<String>)> = vec![
        (
            list(
                "two-hosts.txt",
                format!(
                    "{}\n{other_host}/shards/data-000001.tar\n",
                    u("/shards/data-000000.tar")
                ),
            ),
            vec!["entries must share one location".into()],
        ),
        (
            list(
                "escape.txt",
                format!(
                    "{}\n{}\n",
                    u("/shards/data-000000.tar"),
                    u("/shards/../private/data-000000.tar")
                ),
            ),
            vec![
                u("/shards/../private/data-000000.tar"),
                "not under the input location".into(),
            ],
        ),
        (
            list(
                "mixed.txt",
                format!("{}\n{}\n", u("/shards/data-000000.tar"), shard[0].display()),
            ),
            vec!["mixes remote URLs and local paths".into()],
        ),
        (
            list("empty.txt", "# nothing here\n\n".into()),
            vec!["the input list has no entries".into()],
        ),
        (
            list(
                "missing.txt",
                format!(
                    "{}\n{}\n",
                    u("/shards/data-000000.tar"),
                    u("/shards/data-000007.tar")
                ),
            ),
            vec![u("/shards/data-000007.tar"), "not found (404)".into()],
        ),
    ];
    for (i, (path, want)) in list_cases.iter().enumerate() {
        let out = tmp.path().join(format!("out-list-{i}"));
        let ran = run_list(path, &out, &[]);
        check_refused(&ran, want, &[], &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A refused input: exit 2, an `error:` line holding every `want` and no `never`, and no
/// shard processed.
fn check_refused(ran: &Ran, want: &[String], never: &[String], failures: &mut Vec<String>) {
    let error = ran
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    println!("refused as expected: {error}");
    let mut wrong = Vec::new();
    if ran.status.code() != Some(2) {
        wrong.push(format!("exit {:?}, want 2", ran.status.code()));
    }
    for w in want {
        if !error.contains(w.as_str()) {
            wrong.push(format!("the error line lacks {w:?}"));
        }
    }
    for n in never {
        if ran.all().contains(n.as_str()) {
            wrong.push(format!("the output shows {n:?}"));
        }
    }
    if ran.stderr.contains("processing shard") {
        wrong.push("a shard was processed".into());
    }
    if !wrong.is_empty() {
        failures.push(format!("{}\n{}", wrong.join("; "), ran.explain()));
    }
}

/// 5 (read time): shards whose HEAD succeeds but whose GET answers 404 or 403 fail, named
/// with their URL in the report's failures; the other shards are done; exit 1. Once the
/// server serves them, a re-run keeps the done shards and completes.
#[test]
fn shards_failing_at_read_time_are_reported_with_their_url() {
    let tmp = tempdir();
    let shards = make_shards(&tmp.path().join("in"), 4, SAMPLES, 7502);
    let bytes: Vec<(String, Vec<u8>)> = shards
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(p).unwrap(),
            )
        })
        .collect();
    let server = Server::start();
    serve_shards(&server, "/shards/", &bytes);
    for (i, status) in [(1, 404), (2, 403)] {
        server.route(
            &format!("/shards/{}", bytes[i].0),
            Route::HeadOkGetStatus {
                len: bytes[i].1.len(),
                etag: etag_of(&bytes[i].1),
                status,
            },
        );
    }
    let out = tmp.path().join("out");
    let input = server.url("/shards/data-{000000..000003}.tar");
    let ran = run_input(&input, &out, &["--max-attempts", "2"], &[]);
    assert_eq!(
        ran.status.code(),
        Some(1),
        "a failed job exits 1\n{}",
        ran.explain()
    );
    let r = report(&out);
    assert_eq!(r["verdict"], "failed", "{r:#}");
    assert_eq!(r["shards_done"], 2, "{r:#}");
    assert_eq!(r["shards_failed"], 2, "{r:#}");
    let failures = r["failures"].as_array().unwrap();
    let failed: BTreeMap<&str, &Value> = failures
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f))
        .collect();
    assert_eq!(
        failed.keys().copied().collect::<Vec<_>>(),
        ["data-000001.tar", "data-000002.tar"],
        "{r:#}"
    );
    for (name, status) in [("data-000001.tar", "404"), ("data-000002.tar", "403")] {
        let error = failed[name]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&server.url(&format!("/shards/{name}"))) && error.contains(status),
            "{name}: the error names the URL and the status: {error}"
        );
        assert_eq!(failed[name]["state"], "failed");
        assert_eq!(failed[name]["attempts"], 2, "retried up to --max-attempts");
    }
    for name in ["data-000000.tar", "data-000003.tar"] {
        let e = shard_entry(&r, name);
        assert_eq!(e["state"], "done", "{e:#}");
        assert_eq!(e["counts"]["json_files"], SAMPLES, "{e:#}");
    }
    assert!(
        !out.join("dalle3.parquet").exists(),
        "no parquet after a failed job"
    );

    // The server serves them now: the done shards are kept, the failed ones done.
    serve_shards(&server, "/shards/", &bytes);
    let ran = run_input(&input, &out, &[], &[]);
    ran.assert_ok();
    let r = report(&out);
    assert_eq!(r["shards_recovered"], 2, "{r:#}");
    assert_eq!(shard_entry(&r, "data-000000.tar")["recovered"], true);
    assert_eq!(shard_entry(&r, "data-000001.tar")["recovered"], false);
    assert_matches_seed(&out, &shards);
}

/// 6: after a run, one object changes on the server (other content, new ETag): the next run
/// redoes that shard only (the others are recovered without being downloaded again); a
/// third run with nothing changed downloads nothing.
#[test]
fn changed_remote_object_is_redone_on_resume() {
    let fx = Fixture::new(7601);
    let server = Server::start();
    serve_shards(&server, "/shards/", &fx.shard_bytes());
    let out = fx.out("http");
    let input = server.url("/shards/data-{000000..000002}.tar");
    run_input(&input, &out, &[], &[]).assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);

    // Other samples (other member names) under the same URL.
    let other = make_shards(&fx.dir().join("other"), SHARDS, SAMPLES, 7699);
    let changed = std::fs::read(&other[1]).unwrap();
    server.route("/shards/data-000001.tar", file_route(&changed));
    let gets = |name: &str| server.count("GET", &format!("/shards/{name}"));
    let before: Vec<usize> = (0..SHARDS)
        .map(|i| gets(&format!("data-00000{i}.tar")))
        .collect();
    let ran = run_input(&input, &out, &[], &[]);
    ran.assert_ok();
    let r = report(&out);
    assert_eq!(r["shards_recovered"], 2, "{r:#}");
    assert_eq!(shard_entry(&r, "data-000000.tar")["recovered"], true);
    assert_eq!(shard_entry(&r, "data-000001.tar")["recovered"], false);
    assert_eq!(shard_entry(&r, "data-000002.tar")["recovered"], true);
    let after: Vec<usize> = (0..SHARDS)
        .map(|i| gets(&format!("data-00000{i}.tar")))
        .collect();
    assert_eq!(
        after,
        [before[0], before[1] + 1, before[2]],
        "only the changed shard was downloaded again"
    );
    let now = fx.with_shard_1(&other[1]);
    assert_matches_seed(&out, &now);

    // Nothing changed: every shard is recovered, the job is already complete (the report of
    // the run that made the output is kept).
    let fingerprint = r["fingerprint"].clone();
    let ran = run_input(&input, &out, &[], &[]);
    ran.assert_ok();
    let log = strip_ansi(&ran.stderr);
    assert!(
        log.contains("recovered=3") && log.contains("nothing to redo"),
        "{}",
        ran.explain()
    );
    assert_eq!(report(&out)["fingerprint"], fingerprint);
    let last: Vec<usize> = (0..SHARDS)
        .map(|i| gets(&format!("data-00000{i}.tar")))
        .collect();
    assert_eq!(last, after, "nothing downloaded when nothing changed");
    assert_matches_seed(&out, &now);
}

/// Credentials in a URL (userinfo) and signatures in query strings (presigned URLs) appear
/// in no log line, report or file of the output; the signed URLs are what the reads use.
/// (The userinfo is not sent as basic auth at all; the run works
/// because this server does not ask for it.)
#[test]
fn credentials_in_urls_stay_out_of_logs_and_outputs() {
    let fx = Fixture::new(7701);
    let server = Server::start();
    serve_shards(&server, "/shards/", &fx.shard_bytes());
    let host = server.addr.to_string();

    let out = fx.out("userinfo");
    let input = format!("http://alice:hunter2@{host}/shards/data-{{000000..000002}}.tar");
    let ran = run_input(&input, &out, &[], &[]);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);
    assert!(!ran.all().contains("hunter2"), "{}", ran.explain());
    assert!(!text_outside_data(&out).contains("hunter2"));

    let list = fx.dir().join("presigned.txt");
    let lines: Vec<String> = (0..SHARDS)
        .map(|i| {
            server.url(&format!(
                "/shards/data-00000{i}.tar?X-Amz-Expires=600&X-Amz-Signature=SIGSECRET{i}"
            ))
        })
        .collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let out = fx.out("presigned");
    let ran = run_list(&list, &out, &[]);
    ran.assert_ok();
    assert_same_outputs(&fx.local, &out, &fx.shards);
    assert!(!ran.all().contains("SIGSECRET"), "{}", ran.explain());
    assert!(!text_outside_data(&out).contains("SIGSECRET"));
    assert!(
        server
            .seen()
            .iter()
            .any(|s| s.method == "GET" && s.target.contains("X-Amz-Signature=SIGSECRET1")),
        "the signed URL was used for the read"
    );
}

/// Shard names with folders (`a/data-000000.tar`): an input list whose entries lie in
/// several folders under one root, as a bucket prefix or a Hub folder gives them.
#[test]
fn input_list_with_shards_in_subfolders_matches_a_local_run() {
    let fx = Fixture::new(7801);
    let server = Server::start();
    let shards = fx.shard_bytes();
    let places = [
        "a/data-000000.tar",
        "b/data-000001.tar",
        "c/d/data-000002.tar",
    ];
    for (place, (_, data)) in places.iter().zip(&shards) {
        server.route(&format!("/mirror/{place}"), file_route(data));
    }
    let list = fx.dir().join("nested.txt");
    let lines: Vec<String> = places
        .iter()
        .map(|p| server.url(&format!("/mirror/{p}")))
        .collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let out = fx.out("nested");
    let ran = run_list(&list, &out, &[]);
    ran.assert_ok();
    let r = report(&out);
    let names: Vec<&str> = r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, places, "{r:#}");
    compare_outputs(&fx.local, &out, &fx.shards, false);

    // A second run recovers every shard (their names hold '/').
    let ran = run_list(&list, &out, &[]);
    ran.assert_ok();
    let log = strip_ansi(&ran.stderr);
    assert!(log.contains("recovered=3"), "{}", ran.explain());
    assert_matches_seed(&out, &fx.shards);
}

/// A read that fails for a reason another attempt can fix (here: the object was replaced
/// while being read, which the remote reader reports as "object changed while being read
/// ...; restart the shard") must be retried like any failed attempt (`--max-attempts`), not
/// failed at once as a corrupt tar: the run completes with the local run's outputs.
#[test]
fn a_remote_read_error_is_retried_not_reported_as_corrupt() {
    let fx = Fixture::new(7901);
    let server = Server::start();
    let shards = fx.shard_bytes();
    serve_shards(&server, "/shards/", &shards);
    server.route(
        "/shards/data-000001.tar",
        Route::ChangeAfterDrop {
            data: Arc::new(shards[1].1.clone()),
            calls: AtomicUsize::new(0),
        },
    );
    let out = fx.out("changed-mid-read");
    let input = server.url("/shards/data-{000000..000002}.tar");
    let ran = run_input(&input, &out, &[], &[]);
    let r = report(&out);
    let e = shard_entry(&r, "data-000001.tar");
    assert!(
        ran.status.success(),
        "the shard was not retried: {e:#}\n{}",
        ran.explain()
    );
    assert_eq!(e["attempts"], 2, "{e:#}");
    assert_same_outputs(&fx.local, &out, &fx.shards);
}
