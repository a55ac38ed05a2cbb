//! `GET /metrics` of a job served in this process, driven by a test client
//! that plays workers over real gRPC: a lease that expires, a retry, failed
//! shards, and the page after the end (while the coordinator lingers).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use shardprep_coordinator::{CoordinatorConfig, InputSpec, serve};
use shardprep_core::proto;
use shardprep_core::proto::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;

const TOKEN: &str = "metrics-test-token";
const WAIT: Duration = Duration::from_secs(30);

/// The samples of a page, `name{labels}` → value; the page must give each
/// sample a `# TYPE` line first.
fn parse(page: &str) -> BTreeMap<String, f64> {
    let mut typed = Vec::new();
    let mut samples = BTreeMap::new();
    for line in page.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .expect("a sample line is `name value`");
        let name = key.split('{').next().unwrap();
        assert!(
            typed.iter().any(|t| t == name),
            "no # TYPE for {name} in:\n{page}"
        );
        let value = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "{key} twice"
        );
    }
    samples
}

/// GET /metrics over plain HTTP/1.0; `None` while nothing answers.
fn scrape(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Some(parse(body))
}

/// Scrapes until `ok` holds for a page, which it returns.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        let page = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        if let Some(p) = page {
            if ok(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no page with {what} within {WAIT:?}; last page: {last:#?}");
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn req<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

/// A test client playing the worker `id`.
struct FakeWorker {
    id: String,
    client: CoordinatorClient<Channel>,
}

impl FakeWorker {
    async fn register(addr: SocketAddr, id: &str) -> FakeWorker {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut w = FakeWorker {
            id: id.into(),
            client: CoordinatorClient::new(channel),
        };
        let r = proto::RegisterRequest {
            worker_id: id.into(),
            hostname: "test".into(),
            pid: std::process::id(),
        };
        w.client.register(req(r)).await.unwrap();
        w
    }

    async fn lease(&mut self) -> proto::ShardLease {
        let r = proto::LeaseRequest {
            worker_id: self.id.clone(),
        };
        match self
            .client
            .lease(req(r))
            .await
            .unwrap()
            .into_inner()
            .outcome
        {
            Some(proto::lease_response::Outcome::Shard(l)) => l,
            other => panic!("{} expected a shard, got {other:?}", self.id),
        }
    }

    async fn heartbeat(&mut self, lease: &proto::ShardLease, bytes_read: u64) {
        let progress = proto::Progress {
            members: 4,
            bytes_read,
            json_files: 2,
            rows: 1,
            peak_rss_bytes: 0,
        };
        let r = proto::HeartbeatRequest {
            worker_id: self.id.clone(),
            lease_id: lease.lease_id,
            progress: Some(progress),
        };
        assert!(
            self.client
                .heartbeat(req(r))
                .await
                .unwrap()
                .into_inner()
                .lease_valid
        );
    }

    async fn fail_for_good(&mut self, lease: &proto::ShardLease) {
        let r = proto::FailRequest {
            worker_id: self.id.clone(),
            lease_id: lease.lease_id,
            error: "corrupt tar (test)".into(),
            kind: proto::FailureKind::Permanent as i32,
        };
        self.client.fail(req(r)).await.unwrap();
    }
}

fn config(input: &Path, output: &Path, metrics: SocketAddr) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(InputSpec::Local(input.into()), output)
        .with_token(TOKEN)
        .with_linger(Duration::from_secs(2))
        .with_metrics_listen(Some(metrics));
    c.lease_timeout = Duration::from_secs(2);
    c.heartbeat_interval = Duration::from_millis(200);
    c.worker_grace = Duration::from_secs(2);
    c
}

fn get(p: &BTreeMap<String, f64>, key: &str) -> f64 {
    *p.get(key).unwrap_or_else(|| panic!("no {key} in {p:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_job_from_pending_to_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["data-000000.tar", "data-000001.tar"] {
        std::fs::write(input.join(name), vec![0u8; 2048]).unwrap();
    }
    let metrics = free_addr();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let job = tokio::spawn(serve(
        config(&input, &dir.path().join("out"), metrics),
        listener,
        std::future::pending(),
    ));

    // Before any worker: every shard pending, the job running.
    let p = scrape_until(metrics, "2 shards pending", |p| {
        p.get("shardprep_shards{state=\"pending\"}") == Some(&2.0)
    })
    .await;
    assert_eq!(get(&p, "shardprep_shards{state=\"leased\"}"), 0.0);
    assert_eq!(get(&p, "shardprep_job_verdict{verdict=\"running\"}"), 1.0);
    assert_eq!(get(&p, "shardprep_job_verdict{verdict=\"ok\"}"), 0.0);
    assert_eq!(get(&p, "shardprep_input_bytes"), 4096.0);
    assert_eq!(get(&p, "shardprep_bytes_read_total"), 0.0);
    assert!(get(&p, "shardprep_job_start_time_seconds") > 1.7e9);
    assert!(!p.contains_key("shardprep_job_end_time_seconds"));

    // A worker reads part of a shard, then goes silent: its lease expires,
    // and what it read stays counted.
    let mut silent = FakeWorker::register(grpc, "w-silent").await;
    let first = silent.lease().await;
    silent.heartbeat(&first, 1000).await;
    let p = scrape_until(metrics, "1000 bytes read", |p| {
        p.get("shardprep_bytes_read_total") == Some(&1000.0)
    })
    .await;
    assert_eq!(get(&p, "shardprep_shards{state=\"leased\"}"), 1.0);
    assert_eq!(
        get(
            &p,
            "shardprep_worker_shards_done_total{worker=\"w-silent\"}"
        ),
        0.0
    );
    assert!(
        get(
            &p,
            "shardprep_worker_last_heartbeat_seconds{worker=\"w-silent\"}"
        ) >= 0.0
    );
    let p = scrape_until(metrics, "a lease expiry", |p| {
        p.get("shardprep_lease_expiries_total") == Some(&1.0)
    })
    .await;
    assert_eq!(get(&p, "shardprep_shards{state=\"pending\"}"), 2.0);
    assert_eq!(get(&p, "shardprep_bytes_read_total"), 1000.0);
    assert_eq!(get(&p, "shardprep_json_files_total"), 2.0);

    // Another worker fails both shards for good (the lost one is a retry).
    let mut other = FakeWorker::register(grpc, "w-other").await;
    for _ in 0..2 {
        let l = other.lease().await;
        other.heartbeat(&l, 500).await;
        other.fail_for_good(&l).await;
    }
    let p = scrape_until(metrics, "the verdict failed", |p| {
        p.get("shardprep_job_verdict{verdict=\"failed\"}") == Some(&1.0)
    })
    .await;
    assert_eq!(get(&p, "shardprep_shards{state=\"failed\"}"), 2.0);
    assert_eq!(get(&p, "shardprep_shards{state=\"pending\"}"), 0.0);
    assert_eq!(get(&p, "shardprep_job_verdict{verdict=\"running\"}"), 0.0);
    assert_eq!(get(&p, "shardprep_retries_total"), 1.0);
    assert_eq!(get(&p, "shardprep_bytes_read_total"), 2000.0);
    assert!(
        get(&p, "shardprep_job_end_time_seconds") >= get(&p, "shardprep_job_start_time_seconds")
    );
    assert!(p.contains_key("shardprep_worker_last_heartbeat_seconds{worker=\"w-other\"}"));

    let outcome = job.await.unwrap().unwrap();
    assert!(!outcome.ok);
    assert_eq!(outcome.report.shards_failed, 2);
    // The server stops with the job.
    assert!(
        scrape(metrics).is_none(),
        "/metrics still answers after the job"
    );
}
