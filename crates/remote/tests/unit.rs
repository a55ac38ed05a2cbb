//! Pure functions: brace expansion, root containment, redaction, scheme detection.

use shardprep_remote::{RemoteError, expand_braces, is_remote, is_under, redact};

#[test]
fn braces_expand_like_webdataset() {
    let urls = expand_braces("https://h/p/data-{000000..000068}.tar").unwrap();
    assert_eq!(urls.len(), 69);
    assert_eq!(urls[0], "https://h/p/data-000000.tar");
    assert_eq!(urls[68], "https://h/p/data-000068.tar");

    assert_eq!(expand_braces("x{1..3}").unwrap(), ["x1", "x2", "x3"]);
    assert_eq!(expand_braces("{8..11}").unwrap(), ["8", "9", "10", "11"]);
    assert_eq!(expand_braces("{08..11}").unwrap(), ["08", "09", "10", "11"]);
    assert_eq!(expand_braces("{3..1}").unwrap(), ["3", "2", "1"]);
    assert_eq!(expand_braces("{0..10..4}").unwrap(), ["0", "4", "8"]);
    assert_eq!(expand_braces("{a..c}").unwrap(), ["a", "b", "c"]);
    assert_eq!(
        expand_braces("{train,val}-{0..1}.tar").unwrap(),
        ["train-0.tar", "train-1.tar", "val-0.tar", "val-1.tar"]
    );
    assert_eq!(expand_braces("{a,b{1..2}}").unwrap(), ["a", "b1", "b2"]);
    assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
    assert_eq!(expand_braces("{x}").unwrap(), ["{x}"]);

    for bad in [
        "data-{0..3.tar",
        "data-0..3}.tar",
        "{0..4..0}",
        "{0..99999999}",
    ] {
        let err = expand_braces(bad).unwrap_err();
        assert!(matches!(err, RemoteError::Braces { .. }), "{bad}: {err:?}");
    }
}

#[test]
fn is_under_keeps_workers_inside_the_root() {
    let root = "https://h/p/data/";
    assert!(is_under(root, "https://h/p/data/x.tar"));
    assert!(is_under(root, "https://h/p/data/sub/x.tar"));
    assert!(is_under("https://h/p/data", "https://h/p/data/x.tar"));
    assert!(is_under("/shards/", "/shards/a.tar"));
    assert!(is_under("s3://b/", "s3://b/k.tar"));

    assert!(!is_under(root, "https://h/p/data2/x.tar"));
    assert!(!is_under(root, "https://h/p/other.tar"));
    assert!(!is_under(root, "https://evil/p/data/x.tar"));
    assert!(!is_under(root, "https://h/p/data/../secret.tar"));
    assert!(!is_under(root, "https://h/p/data/%2e%2E/secret.tar"));
    assert!(!is_under(root, "https://h/p/data/.%2e/secret.tar"));
    assert!(!is_under(root, "https://h/p/data/..\\secret.tar"));
    assert!(!is_under(root, "https://h/p/data/"));
    assert!(!is_under("/shards/", "/shards/../etc/passwd"));
    assert!(!is_under("/shards", "/shardsX/a.tar"));
    assert!(!is_under("", "https://h/p/data/x.tar"));
}

#[test]
fn redact_hides_userinfo_and_query_values() {
    assert_eq!(
        redact("https://user:pw@host:9000/b/k.tar?X-Amz-Signature=abc&x=1&X-Amz-Expires=60#frag"),
        "https://***@host:9000/b/k.tar?X-Amz-Signature=***&x=***&X-Amz-Expires=60"
    );
    assert_eq!(redact("s3://bucket/key.tar"), "s3://bucket/key.tar");
    assert_eq!(redact("/local/path.tar"), "/local/path.tar");
    assert_eq!(
        redact("http://h/data-{000..002}.tar"),
        "http://h/data-{000..002}.tar"
    );
}

#[test]
fn remote_schemes() {
    for yes in [
        "s3://b/p/",
        "gs://b/p",
        "az://c/p",
        "http://h/x.tar",
        "HTTPS://h/x.tar",
        "hf://datasets/o/n",
    ] {
        assert!(is_remote(yes), "{yes}");
    }
    for no in [
        "/data/shards",
        "shards",
        "file:///x.tar",
        "s3:/b",
        "ftp://h/x",
    ] {
        assert!(!is_remote(no), "{no}");
    }
}
