//! hf:// inputs against a fake Hub (tests/common) named by HF_ENDPOINT: the tree API
//! (paginated), resolve URLs redirecting to a "CDN" on another host name, HF_TOKEN sent as
//! bearer to the Hub only, errors for a missing or gated repository.
//!
//! One test function: it sets environment variables, which must not race other threads.

mod common;

use std::io::Read;

use common::{Route, Server, make_tar, runtime};
use shardprep_remote::{RemoteError, is_under, list, open_blocking};

const TOKEN: &str = "hf_test_token_123";

#[test]
fn hub_listing_and_reads() {
    let server = Server::start();
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", server.url(""));
        std::env::set_var("HF_TOKEN", TOKEN);
        std::env::remove_var("HUGGING_FACE_HUB_TOKEN");
    }
    let shard0 = make_tar(4, 30_000, 10);
    let shard1 = make_tar(2, 70_000, 11);
    let sha0 = "a".repeat(64);
    let page1 = format!(
        r#"[
 {{"type":"file","oid":"1111","size":{},"path":"data/data-000000.tar",
   "lfs":{{"oid":"{sha0}","size":{},"pointerSize":134}}}},
 {{"type":"file","oid":"2222","size":120,"path":"data/README.md"}},
 {{"type":"directory","oid":"3333","size":0,"path":"data/sub"}}
]"#,
        shard0.len(),
        shard0.len()
    );
    let page2 = format!(
        r#"[{{"type":"file","oid":"4444","size":{},"path":"data/sub/data-000001.tar","xetHash":"x1"}}]"#,
        shard1.len()
    );
    let tree = "/api/datasets/o/n/tree/main/data";
    let next = format!("{tree}?recursive=true&cursor=p2");
    server.route(
        tree,
        Route::Json {
            body: page1,
            link: Some(format!("<{}>; rel=\"next\"", server.url(&next))),
        },
    );
    server.route(
        &next,
        Route::Json {
            body: page2,
            link: None,
        },
    );
    // The Hub redirects file downloads to a CDN host: here "localhost" instead of
    // 127.0.0.1, another origin, so the client must not forward the token there.
    let cdn = format!("http://localhost:{}", server.addr.port());
    server.route(
        "/datasets/o/n/resolve/main/data/data-000000.tar",
        Route::Redirect(format!("{cdn}/cdn/0.tar")),
    );
    server.route(
        "/datasets/o/n/resolve/main/data/sub/data-000001.tar",
        Route::Redirect(format!("{cdn}/cdn/1.tar")),
    );
    server.route("/cdn/0.tar", Route::file(&shard0, "cdn0"));
    server.route("/cdn/1.tar", Route::file(&shard1, "cdn1"));
    server.route("/api/datasets/o/gated/tree/main", Route::Status(401));
    let rt = runtime();

    let listing = rt.block_on(list("hf://datasets/o/n/data")).unwrap();
    assert_eq!(listing.root, "hf://datasets/o/n/data/");
    let names: Vec<&str> = listing.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["data-000000.tar", "sub/data-000001.tar"]);
    assert_eq!(listing.shards[0].size, shard0.len() as u64);
    assert_eq!(
        listing.shards[0].version, sha0,
        "LFS sha256 identifies the file"
    );
    assert_eq!(listing.shards[1].version, "x1");
    assert_eq!(
        listing.shards[1].url,
        "hf://datasets/o/n/data/sub/data-000001.tar"
    );

    for (shard, original) in listing.shards.iter().zip([&shard0, &shard1]) {
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

    // A single file and a brace pattern go through HEAD on the resolve URLs.
    let single = rt
        .block_on(list("hf://datasets/o/n/data/sub/data-{000001..000001}.tar"))
        .unwrap();
    assert_eq!(single.root, "hf://datasets/o/n/data/sub/");
    assert_eq!(single.shards[0].size, shard1.len() as u64);

    let seen = server.seen();
    let bearer = format!("Bearer {TOKEN}");
    let hub_requests: Vec<_> = seen
        .iter()
        .filter(|s| s.path().starts_with("/api/") || s.path().starts_with("/datasets/"))
        .collect();
    assert!(hub_requests.len() >= 5, "{seen:?}");
    for request in &hub_requests {
        assert_eq!(
            request.header("authorization"),
            Some(bearer.as_str()),
            "{request:?}"
        );
    }
    assert!(
        seen.iter().any(|s| s.target == next),
        "second page followed"
    );
    let cdn_requests: Vec<_> = seen
        .iter()
        .filter(|s| s.path().starts_with("/cdn/"))
        .collect();
    assert!(!cdn_requests.is_empty());
    for request in cdn_requests {
        assert_eq!(
            request.header("authorization"),
            None,
            "token leaked: {request:?}"
        );
        assert_eq!(request.header("host"), Some(&cdn["http://".len()..]));
    }

    // Errors: repository not found, gated (401), never showing the token.
    let err = rt
        .block_on(list("hf://datasets/o/missing/data"))
        .unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("/api/datasets/o/missing/tree/main/data"),
        "{err}"
    );
    let err = rt.block_on(list("hf://datasets/o/gated")).unwrap_err();
    assert!(
        matches!(err, RemoteError::PermissionDenied { status: 401, .. }),
        "{err:?}"
    );
    println!("gated: {err}");
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    assert!(!err.to_string().contains(TOKEN));
    let err = rt.block_on(list("hf://datasets/o/n/empty")).unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err:?}");
    let err = rt.block_on(list("hf://models/o/n")).unwrap_err();
    assert!(matches!(err, RemoteError::InvalidInput { .. }), "{err:?}");
}
