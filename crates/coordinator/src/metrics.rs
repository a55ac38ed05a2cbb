//! `GET /metrics` in the Prometheus text format (`--metrics-listen`).
//!
//! Nothing is counted here: each scrape takes a snapshot of the job's state
//! (the scheduler, the phase) and turns it into metric families, so the page
//! never drifts from what `shardprep status` and `report.json` say. The
//! counters of work (`json_files`, `rows`, `bytes_read`, `members`) add the
//! committed shards, the leases' reported progress and the work of lost
//! attempts, so they move while shards are read and never go down; the
//! others count committed shards only.
//!
//! `GET /` is the job's report page, live ([`crate::page::live`]).
//!
//! Neither needs a token (Prometheus and browsers send none): `/metrics`
//! holds counts; `/` shows what `report.html` shows (counts, member names
//! of problems, caption statistics), so bind it where only the job's users reach.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::{Method, Request, Response, StatusCode};
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry};
use shardprep_core::manifest::ShardCounts;
use tokio::net::TcpListener;

use crate::page::live::LivePage;
use crate::scheduler::{Progress, Scheduler, ShardState, Tallies};
use crate::{CoordinatorError, JobShared, Phase};

/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the `/metrics` address early, so a busy port fails the job at once.
pub(crate) async fn bind(
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, CoordinatorError> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| CoordinatorError::MetricsListen { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving Prometheus metrics at http://{local}/metrics");
    Ok(Some(listener))
}

/// The running `/metrics` server; dropping it stops it and its connections.
pub(crate) struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Serves the metrics of `shared`'s job on `listener` until dropped.
    pub(crate) fn start(
        listener: TcpListener,
        shared: Arc<JobShared>,
        page: LivePage,
    ) -> MetricsServer {
        let source = Arc::new(Source::new(shared, page));
        MetricsServer {
            task: tokio::spawn(accept_loop(listener, source)),
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The job a page is made of, with the wall-clock time of its start.
struct Source {
    shared: Arc<JobShared>,
    started_unix: f64,
    page: LivePage,
}

impl Source {
    fn new(shared: Arc<JobShared>, page: LivePage) -> Source {
        let started = SystemTime::now()
            .checked_sub(shared.started.elapsed())
            .unwrap_or_else(SystemTime::now);
        Source {
            shared,
            started_unix: unix_seconds(started),
            page,
        }
    }

    /// The unix time of `at`, an instant of this job.
    fn unix_at(&self, at: Instant) -> f64 {
        self.started_unix
            + at.saturating_duration_since(self.shared.started)
                .as_secs_f64()
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Accepts connections until the task is aborted (which drops, and so
/// aborts, the connections' tasks too).
async fn accept_loop(listener: TcpListener, source: Arc<Source>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, source.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: try again shortly.
                    tracing::warn!(error = %e, "cannot accept a /metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, source: Arc<Source>) {
    let service = hyper::service::service_fn(move |req| {
        let source = source.clone();
        async move {
            let page = match (req.method(), req.uri().path()) {
                (&Method::GET | &Method::HEAD, "/") => Some(live_page(source.clone()).await),
                _ => None,
            };
            Ok::<_, Infallible>(respond(&source, &req, page))
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "/metrics connection ended with an error");
    }
}

/// The live report page, rendered off the async threads (it reads files).
async fn live_page(source: Arc<Source>) -> String {
    let rendered = tokio::task::spawn_blocking(move || source.page.render(&source.shared)).await;
    rendered.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot render the report page (a bug in shardprep)");
        format!("<!DOCTYPE html><title>shardprep</title><p>cannot render the page: {e}</p>")
    })
}

/// The answer to one request: the metrics on `GET /metrics`, the report
/// page (rendered as `page`) on `/`, 404 and 405 otherwise.
fn respond<B>(source: &Source, req: &Request<B>, page: Option<String>) -> Response<String> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match render(source) {
            Ok(page) => (StatusCode::OK, prometheus::TEXT_FORMAT, page),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the metrics (a bug in shardprep)");
                let body = format!("cannot encode the metrics: {e}\n");
                (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", body)
            }
        },
        (&Method::GET | &Method::HEAD, "/") => {
            (StatusCode::OK, "text/html", page.unwrap_or_default())
        }
        (_, "/metrics" | "/") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the report page is at /, the metrics at /metrics\n".to_string(),
        ),
    };
    let mut resp = Response::new(if req.method() == Method::HEAD {
        String::new()
    } else {
        body
    });
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("{content_type}; charset=utf-8")) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// One scrape's view of the job.
#[derive(Debug, Default)]
struct Snapshot {
    /// Shards by state: pending, leased, done, failed.
    shards: [u64; 4],
    /// Work read so far, lost attempts included (never goes down).
    work: Progress,
    /// The committed shards' counts.
    committed: ShardCounts,
    tallies: Tallies,
    /// Per worker: shards committed, seconds since it was last heard from
    /// (`None` for workers of an earlier run, known only by their commits).
    workers: BTreeMap<String, (u64, Option<f64>)>,
}

const SHARD_STATES: [&str; 4] = ["pending", "leased", "done", "failed"];

impl Snapshot {
    fn of(s: &Scheduler, now: Instant) -> Snapshot {
        let mut snap = Snapshot {
            tallies: s.tallies(),
            ..Snapshot::default()
        };
        snap.work = snap.tallies.lost_work;
        for (id, w) in s.workers() {
            let since = now.saturating_duration_since(w.last_seen).as_secs_f64();
            snap.workers.insert(id.clone(), (0, Some(since)));
        }
        for sh in s.shards() {
            snap.add_shard(&sh.state);
        }
        snap
    }

    fn add_shard(&mut self, state: &ShardState) {
        let (slot, progress) = match state {
            ShardState::Pending => (0, None),
            ShardState::Leased { progress, .. } => (1, Some(*progress)),
            ShardState::Done(m) => {
                self.committed.add(&m.counts);
                self.workers
                    .entry(m.worker_id.clone())
                    .or_insert((0, None))
                    .0 += 1;
                (2, Some(Progress::from(&m.counts)))
            }
            ShardState::Failed => (3, None),
        };
        self.shards[slot] += 1;
        if let Some(p) = progress {
            self.work.members += p.members;
            self.work.bytes_read += p.bytes_read;
            self.work.json_files += p.json_files;
            self.work.rows += p.rows;
        }
    }
}

/// The page for the job's current state.
fn render(source: &Source) -> Result<String, prometheus::Error> {
    let shared = &source.shared;
    let snap = shared.state.read(|s| Snapshot::of(s, Instant::now()));
    let page = Page::new()?;
    page.job(source, &snap)?;
    page.work(&snap)?;
    page.committed(&snap.committed)?;
    page.workers(&snap)?;
    let mut text = String::new();
    prometheus::TextEncoder::new().encode_utf8(&page.registry.gather(), &mut text)?;
    Ok(text)
}

/// The metric families of one page, in a registry of their own.
struct Page {
    registry: Registry,
}

impl Page {
    fn new() -> Result<Page, prometheus::Error> {
        Ok(Page {
            registry: Registry::new_custom(Some("shardprep".into()), None)?,
        })
    }

    fn counter(&self, name: &str, help: &str, value: u64) -> Result<(), prometheus::Error> {
        let c = IntCounter::new(name, help)?;
        c.inc_by(value);
        self.registry.register(Box::new(c))
    }

    fn counters<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<(), prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
        for (l, v) in values {
            c.get_metric_with_label_values(&[l])?.inc_by(v);
        }
        self.registry.register(Box::new(c))
    }

    fn gauge(&self, name: &str, help: &str, value: f64) -> Result<(), prometheus::Error> {
        let g = Gauge::new(name, help)?;
        g.set(value);
        self.registry.register(Box::new(g))
    }

    fn gauges<'a>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<(), prometheus::Error> {
        let g = GaugeVec::new(Opts::new(name, help), &[label])?;
        for (l, v) in values {
            g.get_metric_with_label_values(&[l])?.set(v);
        }
        self.registry.register(Box::new(g))
    }

    /// Shards by state, the verdict, the scheduler's tallies, the input, the times.
    fn job(&self, source: &Source, snap: &Snapshot) -> Result<(), prometheus::Error> {
        let shared = &source.shared;
        let states = SHARD_STATES.iter().zip(snap.shards);
        self.gauges(
            "shards",
            "Shards in each state (their sum is the job's shards).",
            "state",
            states.map(|(s, n)| (*s, n as f64)),
        )?;
        let verdict = match shared.phase() {
            Phase::Running | Phase::Merging => "running",
            Phase::Finished => "ok",
            Phase::Failed => "failed",
        };
        self.gauges(
            "job_verdict",
            "1 for the job's verdict: running until the end, then ok (verified) or failed.",
            "verdict",
            ["running", "ok", "failed"].map(|v| (v, f64::from(u8::from(v == verdict)))),
        )?;
        self.counter(
            "retries_total",
            "Leases of shards that an earlier attempt had held.",
            snap.tallies.retries,
        )?;
        self.counter(
            "lease_expiries_total",
            "Leases taken back from silent or stuck workers.",
            snap.tallies.lease_expiries,
        )?;
        self.gauge(
            "input_bytes",
            "Bytes of the job's input shards.",
            shared.bytes_total as f64,
        )?;
        self.gauge(
            "input_files_refused",
            "Input files that cannot be shards (each fails the verdict).",
            shared.input_problems.len() as f64,
        )?;
        self.gauge(
            "job_start_time_seconds",
            "When the job started (unix time).",
            source.started_unix,
        )?;
        if let Some(ended) = shared.ended() {
            self.gauge(
                "job_end_time_seconds",
                "When the job ended (unix time).",
                source.unix_at(ended),
            )?;
        }
        Ok(())
    }

    /// The work read so far, moving while shards are read.
    fn work(&self, snap: &Snapshot) -> Result<(), prometheus::Error> {
        let w = &snap.work;
        let lost = "; counts every attempt, lost ones included";
        self.counter(
            "bytes_read_total",
            &format!("Bytes of shards read{lost}."),
            w.bytes_read,
        )?;
        self.counter(
            "members_total",
            &format!("Tar members read{lost}."),
            w.members,
        )?;
        self.counter(
            "json_files_total",
            &format!("JSON members read{lost}."),
            w.json_files,
        )?;
        self.counter(
            "rows_total",
            &format!("Parquet rows written{lost}."),
            w.rows,
        )
    }

    /// What the committed shards hold.
    fn committed(&self, c: &ShardCounts) -> Result<(), prometheus::Error> {
        self.counter(
            "samples_total",
            "Samples (JSONs with the width field) in committed shards.",
            c.json_with_width,
        )?;
        self.counter(
            "bytes_written_total",
            "Bytes of member data written into data/ by committed shards.",
            c.bytes_written,
        )?;
        self.counters(
            "files_created_total",
            "Files created in data/ by committed shards, by kind.",
            "kind",
            [
                ("member", c.files_extracted),
                ("caption", c.captions_written),
            ],
        )?;
        self.counters(
            "skipped_total",
            "Samples not turned into rows in committed shards, by reason.",
            "reason",
            c.skipped.iter().map(|(r, n)| (r.as_str(), *n)),
        )?;
        self.counters(
            "members_refused_total",
            "Members not extracted in committed shards, by reason.",
            "reason",
            c.rejected_members.iter().map(|(r, n)| (r.as_str(), *n)),
        )?;
        self.counters(
            "image_problems_total",
            "Images with problems in committed shards (dims_mismatch, decode_failed, ...), by reason.",
            "reason",
            c.image_problems.iter().map(|(r, n)| (r.as_str(), *n)),
        )
    }

    /// Per worker: shards committed and seconds since it was last heard from.
    fn workers(&self, snap: &Snapshot) -> Result<(), prometheus::Error> {
        self.counters(
            "worker_shards_done_total",
            "Shards each worker committed.",
            "worker",
            snap.workers.iter().map(|(id, (n, _))| (id.as_str(), *n)),
        )?;
        self.gauges(
            "worker_last_heartbeat_seconds",
            "Seconds since each worker was last heard from.",
            "worker",
            snap.workers
                .iter()
                .filter_map(|(id, (_, s))| Some((id.as_str(), (*s)?))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardprep_core::manifest::{ShardIdentity, ShardManifest};

    fn committed(worker: &str) -> ShardManifest {
        let mut counts = ShardCounts {
            members: 10,
            bytes_read: 5000,
            bytes_written: 4000,
            json_files: 4,
            json_with_width: 3,
            files_extracted: 8,
            captions_written: 3,
            rows: 3,
            ..ShardCounts::default()
        };
        counts.skipped.insert("invalid_width".into(), 1);
        counts.rejected_members.insert("unsafe_path".into(), 2);
        counts.image_problems.insert("dims_mismatch".into(), 1);
        ShardManifest {
            shard_name: "a.tar".into(),
            identity: ShardIdentity {
                size: 1,
                mtime_ns: 1,
                ..Default::default()
            },
            lease_id: 1,
            attempt: 1,
            worker_id: worker.into(),
            fragment: "a.parquet".into(),
            counts,
            issues: vec![],
            issues_not_listed: 0,
            data_synced: true,
            boot_id: String::new(),
            elapsed_ms: 1,
            image_checks: Default::default(),
            image_issues: vec![],
            image_issues_not_listed: 0,
        }
    }

    /// A shard committed by a worker of an earlier run, one leased now.
    fn scheduler(now: Instant) -> Scheduler {
        let id = ShardIdentity {
            size: 1,
            mtime_ns: 1,
            ..Default::default()
        };
        let shards = vec![
            ("a.tar".to_string(), id, Some(committed("w-old"))),
            ("b.tar".to_string(), id, None),
        ];
        let mut s = Scheduler::new(shards, Duration::from_secs(10), 3, 1);
        let crate::scheduler::LeaseAnswer::Shard(g) = s.lease("w-now", now) else {
            panic!("b.tar should be leased");
        };
        let p = Progress {
            members: 2,
            bytes_read: 700,
            json_files: 1,
            rows: 1,
        };
        assert!(s.heartbeat("w-now", g.lease_id, p, 0, now));
        s
    }

    fn text(page: &Page) -> String {
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&page.registry.gather(), &mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_snapshot_adds_committed_leased_and_per_worker_work() {
        let now = Instant::now();
        let snap = Snapshot::of(&scheduler(now), now);
        assert_eq!(snap.shards, [0, 1, 1, 0]);
        assert_eq!((snap.work.bytes_read, snap.work.members), (5700, 12));
        assert_eq!((snap.work.json_files, snap.work.rows), (5, 4));
        assert_eq!(snap.committed.bytes_written, 4000);
        assert_eq!(snap.workers["w-old"], (1, None));
        assert_eq!(snap.workers["w-now"], (0, Some(0.0)));
    }

    #[test]
    fn the_page_names_counters_by_convention_with_labels_by_reason() {
        let now = Instant::now();
        let snap = Snapshot::of(&scheduler(now), now);
        let page = Page::new().unwrap();
        page.work(&snap).unwrap();
        page.committed(&snap.committed).unwrap();
        page.workers(&snap).unwrap();
        let text = text(&page);
        for line in [
            "# TYPE shardprep_bytes_read_total counter",
            "shardprep_bytes_read_total 5700",
            "shardprep_bytes_written_total 4000",
            "shardprep_samples_total 3",
            "shardprep_files_created_total{kind=\"member\"} 8",
            "shardprep_files_created_total{kind=\"caption\"} 3",
            "shardprep_skipped_total{reason=\"invalid_width\"} 1",
            "shardprep_members_refused_total{reason=\"unsafe_path\"} 2",
            "shardprep_image_problems_total{reason=\"dims_mismatch\"} 1",
            "shardprep_worker_shards_done_total{worker=\"w-old\"} 1",
            "shardprep_worker_shards_done_total{worker=\"w-now\"} 0",
            "# TYPE shardprep_worker_last_heartbeat_seconds gauge",
            "shardprep_worker_last_heartbeat_seconds{worker=\"w-now\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // No heartbeat for a worker known only by an earlier run's commit.
        assert!(
            !text.contains("last_heartbeat_seconds{worker=\"w-old\"}"),
            "{text}"
        );
    }
}
