//! HTTP(S) inputs against a real server on 127.0.0.1 (tests/common): brace listing, reads
//! through a redirect, resumption of a dropped connection with a Range request, retry limit,
//! bounded read-ahead, 404/403 errors naming the URL without secrets, input lists.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Route, Server, make_tar, pattern_byte, runtime, tar_names};
use shardprep_remote::{
    ReadOptions, RemoteError, is_under, list, list_file, open_blocking, open_blocking_with,
};

/// Log lines of every thread (the reader's task runs on the runtime's workers).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        struct Sink(&'static Mutex<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(buffer))
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buffer
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

fn read_all(url: &str, handle: tokio::runtime::Handle) -> Vec<u8> {
    let mut reader = open_blocking(url, handle).unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(reader.bytes_read(), out.len() as u64);
    assert_eq!(reader.size(), out.len() as u64);
    out
}

#[test]
fn brace_listing_redirect_and_resumed_read() {
    logs();
    let server = Server::start();
    let shard0 = make_tar(3, 50_000, 0);
    let shard1 = make_tar(3, 80_000, 1);
    let shard2 = make_tar(12, 300_000, 2); // ~3.6 MB: several 1 MiB chunks
    server.route("/shards/data-000000.tar", Route::file(&shard0, "etag-0"));
    server.route(
        "/shards/data-000001.tar",
        Route::Redirect(server.url("/blobs/data-000001.tar")),
    );
    server.route("/blobs/data-000001.tar", Route::file(&shard1, "etag-1"));
    server.route(
        "/shards/data-000002.tar",
        Route::DropOnce {
            data: Arc::new(shard2.clone()),
            etag: "etag-2".into(),
            dropped: AtomicBool::new(false),
        },
    );
    let rt = runtime();

    let pattern = server.url("/shards/data-{000000..000002}.tar");
    let listing = rt.block_on(list(&pattern)).unwrap();
    assert_eq!(listing.root, server.url("/shards/"));
    let names: Vec<&str> = listing.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["data-000000.tar", "data-000001.tar", "data-000002.tar"]
    );
    let originals = [&shard0, &shard1, &shard2];
    for (shard, (original, etag)) in listing
        .shards
        .iter()
        .zip(originals.iter().zip(["etag-0", "etag-1", "etag-2"]))
    {
        assert_eq!(shard.size, original.len() as u64, "{}", shard.name);
        assert_eq!(shard.version, etag);
        assert_eq!(shard.url, server.url(&format!("/shards/{}", shard.name)));
        assert!(is_under(&listing.root, &shard.url));
    }

    // Plain read, read through the 302, read resumed after the dropped connection.
    for (shard, original) in listing.shards.iter().zip(originals) {
        let url = shard.url.clone();
        let handle = rt.handle().clone();
        let bytes = std::thread::spawn(move || read_all(&url, handle))
            .join()
            .unwrap();
        assert!(bytes == *original, "{} differs", shard.name);
    }
    let gets: Vec<_> = server
        .seen_path("/shards/data-000002.tar")
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2, "one cut GET, one resumed GET: {gets:?}");
    let range = gets[1]
        .header("range")
        .expect("resumed with a Range request");
    let offset: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("unexpected range {range}"));
    assert!(offset > 0 && offset < shard2.len() as u64, "{range}");
    assert!(
        logged().contains("resuming with a range request"),
        "warn! log of the resume: {}",
        logged()
    );

    // What a worker does: a blocking tar reader fed by the stream.
    let url = listing.shards[1].url.clone();
    let handle = rt.handle().clone();
    let names = std::thread::spawn(move || tar_names(open_blocking(&url, handle).unwrap()))
        .join()
        .unwrap();
    assert_eq!(names, tar_names(shard1.as_slice()));
}

#[test]
fn single_url_and_list_items() {
    let server = Server::start();
    let shard = make_tar(2, 1000, 7);
    server.route("/a/b/one.tar", Route::file(&shard, "e1"));
    server.route("/a/c/two.tar", Route::file(&shard, "e2"));
    let rt = runtime();

    let listing = rt.block_on(list(&server.url("/a/b/one.tar"))).unwrap();
    assert_eq!(listing.root, server.url("/a/b/"));
    assert_eq!(listing.shards.len(), 1);
    assert_eq!(listing.shards[0].name, "one.tar");

    // A presigned URL keeps its query for the requests, not in the shard name.
    let signed = server.url("/a/b/one.tar?X-Amz-Signature=abc123&X-Amz-Expires=60");
    let listing = rt.block_on(list(&signed)).unwrap();
    assert_eq!(listing.shards[0].name, "one.tar");
    assert_eq!(listing.shards[0].url, signed);
    let handle = rt.handle().clone();
    let bytes = std::thread::spawn(move || read_all(&signed, handle))
        .join()
        .unwrap();
    assert_eq!(bytes, shard);
    let queries: Vec<_> = server
        .seen_path("/a/b/one.tar")
        .into_iter()
        .filter(|s| s.target.contains("X-Amz-Signature=abc123"))
        .map(|s| s.method)
        .collect();
    assert_eq!(queries, ["HEAD", "GET"]);

    let dir = tempfile::tempdir().unwrap();
    let list_path = dir.path().join("shards.txt");
    std::fs::write(
        &list_path,
        format!(
            "# remote shards\n{}\n\n  {}  \n",
            server.url("/a/c/two.tar"),
            server.url("/a/b/one.tar")
        ),
    )
    .unwrap();
    let listing = rt.block_on(list_file(&list_path)).unwrap();
    assert_eq!(listing.root, server.url("/a/"));
    let names: Vec<&str> = listing.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b/one.tar", "c/two.tar"]);
    assert_eq!(listing.shards[1].version, "e2");

    // Entries on two hosts have no common root.
    std::fs::write(
        &list_path,
        format!(
            "{}\nhttp://localhost:{}/a/b/one.tar\n",
            server.url("/a/c/two.tar"),
            server.addr.port()
        ),
    )
    .unwrap();
    let err = rt.block_on(list_file(&list_path)).unwrap_err();
    assert!(err.to_string().contains("share one location"), "{err}");

    // Local entries: relative to the list's folder, urls absolute, readable.
    std::fs::create_dir_all(dir.path().join("local/sub")).unwrap();
    std::fs::write(dir.path().join("local/x.tar"), &shard).unwrap();
    std::fs::write(dir.path().join("local/sub/y.tar"), b"yy").unwrap();
    std::fs::write(&list_path, "local/x.tar\n./local/sub/../sub/y.tar\n").unwrap();
    let listing = rt.block_on(list_file(&list_path)).unwrap();
    let local_root = format!("{}/", dir.path().join("local").display());
    assert_eq!(listing.root, local_root);
    let names: Vec<&str> = listing.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sub/y.tar", "x.tar"]);
    assert_eq!(listing.shards[1].url, format!("{local_root}x.tar"));
    assert_eq!(listing.shards[1].size, shard.len() as u64);
    assert!(listing.shards[1].version.starts_with("mtime:"));
    let mut local = Vec::new();
    open_blocking(&listing.shards[1].url, rt.handle().clone())
        .unwrap()
        .read_to_end(&mut local)
        .unwrap();
    assert_eq!(local, shard);

    std::fs::write(
        &list_path,
        format!("local/x.tar\n{}\n", server.url("/a/b/one.tar")),
    )
    .unwrap();
    let err = rt.block_on(list_file(&list_path)).unwrap_err();
    assert!(
        err.to_string().contains("mixes remote URLs and local"),
        "{err}"
    );
}

#[test]
fn errors_name_the_url_without_secrets() {
    let server = Server::start();
    server.route("/private/x.tar", Route::Status(403));
    let rt = runtime();

    let missing = server.url("/data/missing-{0..1}.tar");
    let err = rt.block_on(list(&missing)).unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err:?}");
    assert_eq!(err.status(), Some(404));
    assert!(
        err.to_string().contains(&server.url("/data/missing-0.tar")),
        "{err}"
    );

    let forbidden = server.url("/private/x.tar");
    let err = rt.block_on(list(&forbidden)).unwrap_err();
    assert!(
        matches!(err, RemoteError::PermissionDenied { status: 403, .. }),
        "{err:?}"
    );
    println!("403: {err}");
    assert!(err.to_string().contains(&forbidden), "{err}");

    let err = open_blocking(&server.url("/data/gone.tar"), rt.handle().clone()).unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&server.url("/data/gone.tar")),
        "{err}"
    );

    let secret = format!(
        "http://user:hunter2@{}/data/missing.tar?X-Amz-Signature=topsecret&X-Amz-Credential=AKIDSECRET",
        server.addr
    );
    let listed = rt.block_on(list(&secret)).unwrap_err().to_string();
    let opened = open_blocking(&secret, rt.handle().clone())
        .unwrap_err()
        .to_string();
    for message in [listed, opened] {
        println!("redacted: {message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            !message.contains("topsecret") && !message.contains("AKIDSECRET"),
            "{message}"
        );
        assert!(message.contains("/data/missing.tar"), "{message}");
    }

    let err = rt.block_on(list(&server.url("/folder/"))).unwrap_err();
    assert!(matches!(err, RemoteError::InvalidInput { .. }), "{err:?}");
}

#[test]
fn read_fails_after_the_retries() {
    let server = Server::start();
    let data = common::noise(400_000, 3);
    server.route(
        "/flaky.tar",
        Route::DropAlways {
            data: Arc::new(data.clone()),
            etag: "f".into(),
            calls: AtomicUsize::new(0),
        },
    );
    let rt = runtime();
    let options = ReadOptions {
        chunk_size: 64 << 10,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..ReadOptions::default()
    };
    let url = server.url("/flaky.tar");
    let handle = rt.handle().clone();
    let (got, err) = std::thread::spawn(move || {
        let mut reader = open_blocking_with(&url, handle, &options).unwrap();
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).unwrap_err();
        // Later reads repeat the failure instead of a silent EOF.
        assert!(reader.read(&mut [0u8; 16]).is_err());
        (got, err)
    })
    .join()
    .unwrap();
    let message = err.to_string();
    println!("retries exhausted: {message}");
    assert!(message.contains(&server.url("/flaky.tar")), "{message}");
    assert!(message.contains("after 6 attempts"), "{message}");
    // The bytes before the cut were delivered, and they are the right ones.
    assert!(!got.is_empty() && got.len() < data.len());
    assert_eq!(got, data[..got.len()]);
    let gets = server
        .seen_path("/flaky.tar")
        .into_iter()
        .filter(|s| s.method == "GET")
        .count();
    assert_eq!(gets, 6, "first GET + 5 range GETs");
}

#[test]
fn read_ahead_is_bounded() {
    let server = Server::start();
    let sent = Arc::new(AtomicU64::new(0));
    let len: u64 = 128 << 20;
    server.route(
        "/big.tar",
        Route::Generated {
            len,
            sent: Arc::clone(&sent),
        },
    );
    let rt = runtime();
    let url = server.url("/big.tar");
    let handle = rt.handle().clone();
    std::thread::spawn(move || {
        let mut reader = open_blocking(&url, handle).unwrap();
        assert_eq!(reader.size(), len);
        let mut head = vec![0u8; 4096];
        reader.read_exact(&mut head).unwrap();
        assert!(
            head.iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64))
        );
        std::thread::sleep(Duration::from_millis(1500));
    })
    .join()
    .unwrap();
    let sent = sent.load(Ordering::SeqCst);
    // 6 MiB of read-ahead plus socket buffers; far from the 128 MiB object.
    assert!(
        sent < 40 << 20,
        "server sent {sent} bytes to a reader that read 4 KiB"
    );
}

#[test]
fn stalled_connection_is_resumed_after_the_idle_timeout() {
    let server = Server::start();
    let data = common::noise(300_000, 4);
    server.route(
        "/stall.tar",
        Route::StallOnce {
            data: Arc::new(data.clone()),
            stalled: AtomicBool::new(false),
        },
    );
    let rt = runtime();
    let options = ReadOptions {
        idle_timeout: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(5),
        ..ReadOptions::default()
    };
    let url = server.url("/stall.tar");
    let handle = rt.handle().clone();
    let got = std::thread::spawn(move || {
        let mut out = Vec::new();
        open_blocking_with(&url, handle, &options)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    })
    .join()
    .unwrap();
    assert!(got == data);
    let ranges: Vec<_> = server
        .seen_path("/stall.tar")
        .into_iter()
        .filter_map(|s| s.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [format!("bytes={}-", data.len() / 2)]);
}

#[test]
fn object_changed_during_read_fails() {
    let server = Server::start();
    let data = common::noise(200_000, 5);
    server.route(
        "/changing.tar",
        Route::ChangeAfterDrop {
            data: Arc::new(data),
            calls: AtomicUsize::new(0),
        },
    );
    let rt = runtime();
    let options = ReadOptions {
        initial_backoff: Duration::from_millis(5),
        ..ReadOptions::default()
    };
    let url = server.url("/changing.tar");
    let handle = rt.handle().clone();
    let err = std::thread::spawn(move || {
        let mut out = Vec::new();
        open_blocking_with(&url, handle, &options)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err()
    })
    .join()
    .unwrap();
    let message = err.to_string();
    assert!(message.contains("changed while being read"), "{message}");
    assert!(message.contains("/changing.tar"), "{message}");
}

#[test]
fn server_without_range_support_fails_at_once() {
    let server = Server::start();
    server.route(
        "/norange.tar",
        Route::NoRanges {
            data: Arc::new(common::noise(200_000, 6)),
            cut: AtomicBool::new(false),
        },
    );
    let rt = runtime();
    let url = server.url("/norange.tar");
    let handle = rt.handle().clone();
    let err = std::thread::spawn(move || {
        let mut out = Vec::new();
        open_blocking(&url, handle)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err()
    })
    .join()
    .unwrap();
    let message = err.to_string();
    println!("no range support: {message}");
    assert!(message.contains("/norange.tar"), "{message}");
    let gets = server
        .seen_path("/norange.tar")
        .into_iter()
        .filter(|s| s.method == "GET")
        .count();
    assert_eq!(gets, 2, "the cut GET and one range GET, no further retries");
}

/// Positioned reads by bounded range requests: the bytes at scattered offsets are the
/// object's and a seek transfers nothing of what it skips; reads that follow each other grow
/// the range (few requests); a new ETag between two requests fails the read.
#[test]
fn ranged_reads_fetch_only_what_is_asked() {
    use shardprep_remote::{MIN_SPAN, open_ranged};
    let server = Server::start();
    let data = common::noise(8 << 20, 77);
    server.route("/r/obj.tar", Route::file(&data, "e1"));
    let url = server.url("/r/obj.tar");
    let rt = runtime();
    let handle = rt.handle().clone();
    let server = Arc::new(server);
    let srv = Arc::clone(&server);
    std::thread::spawn(move || {
        let options = ReadOptions::default();
        let mut obj = open_ranged(&url, handle.clone(), &options).unwrap();
        assert_eq!(obj.size(), data.len() as u64);
        let mut buf = [0u8; 100];
        for pos in [10u64, 3_000_000, 6_500_000, data.len() as u64 - 40] {
            let n = obj.read_at(&mut buf, pos).unwrap();
            let p = pos as usize;
            assert_eq!(&buf[..n], &data[p..p + n], "bytes at {pos}");
            assert_eq!(n, 100.min(data.len() - p));
        }
        assert_eq!(obj.read_at(&mut buf, data.len() as u64).unwrap(), 0);
        assert_eq!(obj.requests(), 4, "one range per seek: {obj:?}");
        assert!(
            obj.bytes_fetched() <= 4 * MIN_SPAN as u64,
            "a seek transfers nothing of what it skips: {obj:?}"
        );

        let mut obj = open_ranged(&url, handle.clone(), &options).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1000];
        while got.len() < 2 << 20 {
            let n = obj.read_at(&mut chunk, got.len() as u64).unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data[..got.len()]);
        assert!(obj.requests() <= 8, "growing ranges: {obj:?}");

        srv.route("/r/obj.tar", Route::file(&data, "e2"));
        let err = obj.read_at(&mut buf, 7_000_000).unwrap_err().to_string();
        assert!(err.contains("object changed"), "{err}");
    })
    .join()
    .unwrap();
    drop(rt);
}
