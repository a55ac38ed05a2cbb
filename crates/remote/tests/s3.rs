//! s3:// inputs against a real S3 API: moto_server on a free port of 127.0.0.1, loaded with
//! boto3 (an independent client). Needs SHARDPREP_PYTHON (a python with `moto[server]` and
//! boto3); without it the test prints "skipped" and returns.
//!
//! One test function: it sets the AWS_* environment variables, which must not race other
//! threads.

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{make_tar, runtime};
use shardprep_remote::{RemoteError, is_under, list, open_blocking};

/// Kills the moto server (a child of this test) when the test ends, even on panic.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const LOAD: &str = r#"
import json, os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket="shards")
etags = {}
for path in sys.argv[1:]:
    key = "dalle3/" + os.path.relpath(path, os.environ["LOAD_ROOT"])
    with open(path, "rb") as f:
        s3.put_object(Bucket="shards", Key=key, Body=f.read())
    etags[key] = s3.head_object(Bucket="shards", Key=key)["ETag"].strip('"')
print(json.dumps(etags))
"#;

#[test]
fn s3_listing_and_reads_against_moto() {
    let Ok(python) = std::env::var("SHARDPREP_PYTHON") else {
        println!("skipped: set SHARDPREP_PYTHON to a python with moto[server] and boto3");
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let moto = Moto(
        Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto.server"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe {
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ] {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_SESSION_TOKEN");
    }

    // Shards under dalle3/data/, plus objects the listing must skip.
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("data/data-000000.tar", make_tar(3, 40_000, 20)),
        ("data/data-000001.tar", make_tar(20, 100_000, 21)), // ~2 MB: several chunks
        ("data/nested/data-000002.tar", make_tar(1, 10, 22)),
        ("data/README.md", b"not a shard".to_vec()),
        ("data2/data-000009.tar", make_tar(1, 10, 23)),
    ];
    let mut paths = Vec::new();
    for (name, bytes) in &files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    let output = Command::new(&python)
        .arg("-c")
        .arg(LOAD)
        .args(&paths)
        .env("LOAD_ROOT", dir.path())
        .output()
        .expect("run boto3 loader");
    assert!(
        output.status.success(),
        "boto3 load failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let etags: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&output.stdout).unwrap();

    let rt = runtime();
    let listing = rt.block_on(list("s3://shards/dalle3/data/")).unwrap();
    assert_eq!(listing.root, "s3://shards/dalle3/data/");
    let names: Vec<&str> = listing.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "data-000000.tar",
            "data-000001.tar",
            "nested/data-000002.tar"
        ]
    );
    for shard in &listing.shards {
        let (_, original) = files
            .iter()
            .find(|(n, _)| *n == format!("data/{}", shard.name))
            .unwrap();
        assert_eq!(shard.size, original.len() as u64);
        let key = format!("dalle3/data/{}", shard.name);
        assert_eq!(shard.version, etags[&key].as_str().unwrap(), "{key}");
        assert!(is_under(&listing.root, &shard.url));

        let url = shard.url.clone();
        let handle = rt.handle().clone();
        let bytes = std::thread::spawn(move || {
            let mut out = Vec::new();
            open_blocking(&url, handle)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        })
        .join()
        .unwrap();
        assert!(bytes == *original, "{} differs", shard.name);
    }

    // Same prefix without the trailing slash; a brace pattern; a single key.
    let again = rt.block_on(list("s3://shards/dalle3/data")).unwrap();
    assert_eq!(again, listing);
    let braces = rt
        .block_on(list("s3://shards/dalle3/data/data-{000000..000001}.tar"))
        .unwrap();
    assert_eq!(braces.shards[..], listing.shards[..2]);

    // Errors.
    let err = rt.block_on(list("s3://nobucket/dalle3/data/")).unwrap_err();
    assert!(matches!(err, RemoteError::MissingBucket { .. }), "{err:?}");
    let text = err.to_string();
    println!("missing bucket: {text}");
    assert!(
        text.contains("nobucket") && text.contains("does not exist"),
        "{text}"
    );
    assert!(
        !text.contains("AWS_SECRET") && !text.contains("Credential=test"),
        "{text}"
    );
    let err = rt.block_on(list("s3://shards/nothing/here/")).unwrap_err();
    assert!(matches!(err, RemoteError::NoShards { .. }), "{err:?}");
    let err =
        open_blocking("s3://shards/dalle3/data/missing.tar", rt.handle().clone()).unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err:?}");
    println!("missing key: {err}");
    assert!(
        err.to_string()
            .contains("s3://shards/dalle3/data/missing.tar")
    );
    drop(moto);
}
