//! The service's guards: token on every RPC, TLS, limits against floods.

use std::process::Stdio;
use std::time::{Duration, Instant};

use shardprep_core::proto;
use shardprep_core::proto::coordinator_client::CoordinatorClient;

use crate::util::*;

/// A coordinator of this file's tests, stopped when dropped.
struct Coord {
    proc: Proc,
    url: String,
}

/// Starts a coordinator on a free port with `token`, a stall hook keeping the job open.
fn start_coordinator(tmp: &std::path::Path, extra: &[&str]) -> Coord {
    make_shards(&tmp.join("shards"), 2, 10, 9100);
    std::fs::write(tmp.join("token"), "right-token\n").unwrap();
    let port = free_port();
    let proc = Proc::spawn(
        "coordinator",
        command(&[
            "coordinator",
            "--input",
            path_str(&tmp.join("shards")),
            "--output",
            path_str(&tmp.join("out")),
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            path_str(&tmp.join("token")),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped()),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "coordinator did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Coord { proc, url }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn status_with(url: &str, token: Option<&str>) -> Result<proto::StatusResponse, tonic::Status> {
    rt().block_on(async {
        let mut c = CoordinatorClient::connect(url.to_string()).await.unwrap();
        let mut req = tonic::Request::new(proto::StatusRequest {});
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        c.status(req).await.map(|r| r.into_inner())
    })
}

#[test]
fn requests_without_the_right_token_are_refused() {
    let tmp = tempdir();
    let mut coord = start_coordinator(tmp.path(), &[]);
    for bad in [None, Some("wrong-token"), Some("right-token-but-longer")] {
        let err = status_with(&coord.url, bad).expect_err("accepted a bad token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}: {err}");
    }
    let ok = status_with(&coord.url, Some("right-token")).expect("the right token is accepted");
    assert_eq!(ok.shards_total, 2);
    // The health service answers without a token (for Kubernetes probes).
    let serving = rt().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(coord.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
        h.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
    });
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // A worker with a wrong token stops with a clear message.
    let w = run_raw(
        &[
            "worker",
            "--coordinator",
            &coord.url,
            "--connect-timeout",
            "5s",
        ],
        &[("SHARDPREP_TOKEN", "nope")],
    );
    assert!(!w.status.success());
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("refused our token"),
        "{}",
        String::from_utf8_lossy(&w.stderr)
    );
    coord.proc.signal(libc::SIGKILL);
    let out = coord.proc.output(Duration::from_secs(10));
    let out = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.contains("refused a request without the right token"),
        "the refusal is not logged:\n{out}"
    );
}

#[test]
fn a_flood_of_bogus_rpcs_does_not_take_the_coordinator_down() {
    let tmp = tempdir();
    let coord = start_coordinator(
        tmp.path(),
        &["--lease-timeout", "5s", "--heartbeat-interval", "200ms"],
    );
    let refused = rt().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(coord.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..400u32 {
            let mut c = CoordinatorClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                // Oversized and unauthenticated requests, bounded in number, loopback only.
                let big = "x".repeat(if i % 4 == 0 { 2 << 20 } else { 10 });
                let mut req = tonic::Request::new(proto::LeaseRequest { worker_id: big });
                req.metadata_mut()
                    .insert("authorization", "Bearer wrong".parse().unwrap());
                c.lease(req).await.is_err()
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap() as u32;
        }
        n
    });
    assert_eq!(refused, 400, "every bogus request must be refused");
    // Real workers still get the job done.
    let w = run_raw(
        &["worker", "--coordinator", &coord.url],
        &[("SHARDPREP_TOKEN", "right-token")],
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(report(&tmp.path().join("out"))["verdict"], "ok");
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let tmp = tempdir();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(tmp.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(tmp.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let coord = start_coordinator(
        tmp.path(),
        &[
            "--tls-cert",
            path_str(&tmp.path().join("cert.pem")),
            "--tls-key",
            path_str(&tmp.path().join("key.pem")),
        ],
    );
    let https = coord.url.replace("http://127.0.0.1", "https://localhost");
    // Plain-text gRPC does not get through.
    let plain = run_raw(
        &["status", "--coordinator", &coord.url],
        &[("SHARDPREP_TOKEN", "right-token")],
    );
    assert!(
        !plain.status.success(),
        "plain-text status worked against a TLS coordinator"
    );
    // A client without the CA does not trust the certificate.
    let untrusted = run_raw(
        &["status", "--coordinator", &https, "--tls-ca", "/dev/null"],
        &[("SHARDPREP_TOKEN", "right-token")],
    );
    assert!(!untrusted.status.success());
    let w = run_raw(
        &[
            "worker",
            "--coordinator",
            &https,
            "--tls-ca",
            path_str(&tmp.path().join("cert.pem")),
        ],
        &[("SHARDPREP_TOKEN", "right-token")],
    );
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    assert_eq!(report(&tmp.path().join("out"))["verdict"], "ok");
}

#[test]
fn the_coordinator_listens_on_loopback_by_default() {
    let o = run_ok(&["coordinator", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("[default: 127.0.0.1:50051]"));
}
