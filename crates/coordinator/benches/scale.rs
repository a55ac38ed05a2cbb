//! Coordinator scale and merge benchmark (targets of the performance issue).
//!
//! ```text
//! cargo build --release --bin shardprep          # the coordinator under test runs as this binary
//! cargo bench -p shardprep-coordinator --bench scale
//! ```
//!
//! Scenario `scheduling`: 10,000 tiny shards, the real `shardprep coordinator`
//! as a subprocess (so its CPU time and peak RSS are its own), 64 concurrent
//! in-process tonic clients that play workers: Register → Lease → write a
//! small valid parquet fragment and its manifest into `OUT/.shardprep/tmp/`
//! → Complete; Wait → sleep `wait_ms`; Done → stop. The coordinator's CPU
//! (`/proc/PID/stat` utime+stime) is read when the last Complete is answered
//! (= the end of scheduling) and at exit (`wait4` rusage, which also gives the
//! peak RSS). Targets: < 1 ms of coordinator CPU per shard for scheduling,
//! ≤ 128 MiB peak RSS with 10,000 shards registered.
//!
//! Scenario `merge`: 1,160,000 rows in 69 fragments (≈16,800 rows each,
//! captions of ~100 bytes, DALLE-3-like file names) merged by
//! `shardprep_coordinator::merge::merge` in this process. Its wall time is
//! compared with an estimated job time for 1.16M rows (throughput from
//! `bench/RESULTS.md`, else from a `shardprep run` on a generated set made
//! here, else `SCALE_JOB_ROWS_PER_S`). Target: merge ≤ 5% of the job.
//!
//! Knobs (environment): `SCALE_SCENARIOS` (default `scheduling,merge`),
//! `SCALE_SHARDS` (10000), `SCALE_CLIENTS` (64), `SCALE_ROWS_PER_SHARD` (8),
//! `SCALE_MERGE_ROWS` (1160000), `SCALE_MERGE_FRAGMENTS` (69),
//! `SCALE_MERGE_REPS` (3), `SCALE_JOB_ROWS_PER_S` (skip the job-throughput
//! run), `SCALE_JOB_SAMPLES` (20000, samples of that run), `SHARDPREP_BIN`
//! (the binary; default `$CARGO_TARGET_DIR|target/release/shardprep`),
//! `SCALE_TMPDIR` (where the temporary data goes; default the system's).
//!
//! Speed and memory targets live here, never in timed unit tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::Schema;
use parquet::arrow::ArrowWriter;
use shardprep_core::layout::{OutputLayout, shard_file_stem};
use shardprep_core::manifest::{ShardCounts, ShardIdentity, ShardManifest};
use shardprep_core::proto;
use shardprep_core::proto::coordinator_client::CoordinatorClient;
use shardprep_core::table::{base_fields, writer_properties};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

const MIB: f64 = 1024.0 * 1024.0;
const TARGET_MS_PER_SHARD: f64 = 1.0;
const TARGET_COORD_RSS_MIB: f64 = 128.0;
const TARGET_MERGE_SHARE: f64 = 0.05;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

// ---------------------------------------------------------------- /proc and rusage

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a running process, in seconds.
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// A `VmXXX:` line of /proc/PID/status, in bytes.
fn proc_status_bytes(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// CPU seconds (user + system) of this process so far.
fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        tv(r.ru_utime) + tv(r.ru_stime)
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Waits for a child and returns (exit status, CPU seconds, peak RSS bytes) from wait4.
fn wait4(pid: u32) -> (i32, f64, u64) {
    // SAFETY: wait4 on our own child; it writes into the structs we pass.
    unsafe {
        let mut status = 0;
        let mut r: libc::rusage = std::mem::zeroed();
        let rc = libc::wait4(pid as i32, &mut status, 0, &mut r);
        assert_eq!(rc, pid as i32, "wait4 failed");
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        };
        (
            code,
            tv(r.ru_utime) + tv(r.ru_stime),
            r.ru_maxrss as u64 * 1024,
        )
    }
}

// ---------------------------------------------------------------- the binary under test

/// The `shardprep` binary, copied into `dir` so that a rebuild by someone
/// else during the bench cannot change it under us.
fn shardprep_bin(dir: &Path) -> PathBuf {
    let root = workspace_root();
    let src = match std::env::var_os("SHARDPREP_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            target.join("release/shardprep")
        }
    };
    if !src.is_file() {
        eprintln!(
            "error: no shardprep binary at {}; build it first: cargo build --release --bin shardprep (or set SHARDPREP_BIN)",
            src.display()
        );
        std::process::exit(2);
    }
    let built = std::fs::metadata(&src).and_then(|m| m.modified()).ok();
    let newest = newest_source(&root);
    if let (Some(b), Some((n, path))) = (built, newest)
        && n > b
    {
        println!(
            "WARNING: {} is older than {} (uncommitted edits?); rebuild with `cargo build --release --bin shardprep` to bench the current code",
            src.display(),
            path.display()
        );
    }
    std::fs::create_dir_all(dir).unwrap();
    let dst = dir.join("shardprep");
    std::fs::copy(&src, &dst).expect("copy the shardprep binary");
    println!("binary under test: {} (copied)", src.display());
    dst
}

fn newest_source(root: &Path) -> Option<(SystemTime, PathBuf)> {
    fn walk(dir: &Path, best: &mut Option<(SystemTime, PathBuf)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, best);
            } else if p.extension().is_some_and(|x| x == "rs" || x == "proto")
                && let Ok(t) = e.metadata().and_then(|m| m.modified())
                && best.as_ref().is_none_or(|(b, _)| t > *b)
            {
                *best = Some((t, p));
            }
        }
    }
    let mut best = None;
    walk(&root.join("src"), &mut best);
    walk(&root.join("proto"), &mut best);
    for c in ["core", "coordinator", "worker"] {
        walk(&root.join("crates").join(c).join("src"), &mut best);
    }
    best
}

// ---------------------------------------------------------------- data

/// Splitmix64: deterministic data without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "a",
    "the",
    "of",
    "in",
    "with",
    "and",
    "on",
    "under",
    "beside",
    "detailed",
    "illustration",
    "photo",
    "painting",
    "red",
    "blue",
    "golden",
    "misty",
    "ancient",
    "futuristic",
    "cozy",
    "quiet",
    "vibrant",
    "soft",
    "dramatic",
    "fox",
    "lighthouse",
    "castle",
    "city",
    "street",
    "forest",
    "mountain",
    "lake",
    "library",
    "astronaut",
    "hummingbird",
    "ramen",
    "cat",
    "dragon",
    "garden",
    "window",
    "lighting",
    "colours",
    "shadows",
    "reflections",
    "sunset",
    "rain",
    "snow",
    "stars",
    "clouds",
    "river",
    "bridge",
    "market",
    "portrait",
    "landscape",
    "watercolor",
    "oil",
    "neon",
    "cinematic",
    "close-up",
    "wide-angle",
    "depth",
    "field",
    "texture",
    "morning",
];

/// A caption of 60–140 bytes (≈100 on average) of varied words.
fn caption(rng: &mut Rng) -> String {
    let target = 60 + rng.below(81) as usize;
    let mut s = String::with_capacity(target + 16);
    while s.len() < target {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s.push('.');
    s
}

/// A DALLE-3-style file name: 16 + 8 hex digits and an image extension.
fn filename(rng: &mut Rng, shard: usize, row: usize) -> String {
    let ext = ["png", "jpg", "jpeg", "png"][rng.below(4) as usize];
    format!(
        "{:016x}{:08x}.{ext}",
        rng.next(),
        (shard * 1_000_003 + row) as u32
    )
}

/// Writes a parquet fragment (the job's base schema) with `rows` rows.
fn write_fragment(path: &Path, shard: usize, rows: usize, rng: &mut Rng) -> usize {
    let schema = Arc::new(Schema::new(base_fields()));
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        schema.clone(),
        Some(writer_properties()),
    )
    .unwrap();
    let mut done = 0;
    let mut caption_bytes = 0;
    while done < rows {
        let n = (rows - done).min(8192);
        let widths: Vec<i64> = (0..n).map(|_| 512 + 64 * rng.below(17) as i64).collect();
        let heights: Vec<i64> = (0..n).map(|_| 512 + 64 * rng.below(17) as i64).collect();
        let caps: Vec<String> = (0..n).map(|_| caption(rng)).collect();
        caption_bytes += caps.iter().map(|c| c.len()).sum::<usize>();
        let names: Vec<String> = (0..n).map(|i| filename(rng, shard, done + i)).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(widths)),
            Arc::new(Int64Array::from(heights)),
            Arc::new(StringArray::from(caps)),
            Arc::new(StringArray::from(names)),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
            .unwrap();
        done += n;
    }
    w.close().unwrap();
    caption_bytes
}

fn tmp_root(tag: &str) -> tempfile::TempDir {
    let prefix = format!("shardprep-bench-{tag}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    match std::env::var_os("SCALE_TMPDIR") {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    }
    .expect("temporary directory")
}

// ---------------------------------------------------------------- scenario 1: scheduling

#[derive(Default)]
struct LogEvents {
    addr: Option<String>,
    job_starting: Option<Instant>,
    merging: Option<Instant>,
    verified: Option<Instant>,
    committed: usize,
    lines: usize,
    errors: Vec<String>,
}

struct Progress {
    n: usize,
    completed: AtomicUsize,
    first_register: OnceLock<(Instant, Option<f64>)>,
    last_complete: OnceLock<(Instant, Option<f64>)>,
    first_done: OnceLock<Instant>,
    waits: AtomicU64,
    rejected: AtomicU64,
    rpcs: AtomicU64,
}

fn scheduling(tmp: &Path, bin: &Path) -> bool {
    let n = env_usize("SCALE_SHARDS", 10_000);
    let clients = env_usize("SCALE_CLIENTS", 64).max(1);
    let rows = env_usize("SCALE_ROWS_PER_SHARD", 8).max(1);
    println!(
        "\n== scheduling: {n} tiny shards, {clients} concurrent in-process gRPC clients, coordinator = `shardprep coordinator` subprocess =="
    );
    let input = tmp.join("in");
    let output = tmp.join("out");
    let stage = tmp.join("stage");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&stage).unwrap();
    let t = Instant::now();
    // The coordinator only lists *.tar and stats them: an empty tar (two zero blocks) will do.
    let empty_tar = vec![0u8; 1024];
    for i in 0..n {
        std::fs::write(input.join(format!("data-{i:06}.tar")), &empty_tar).unwrap();
    }
    // One distinct fragment per shard (unique file names: no duplicate-name pass in the merge).
    let mut rng = Rng(7);
    for i in 0..n {
        write_fragment(&stage.join(format!("{i}.parquet")), i, rows, &mut rng);
    }
    println!(
        "prepared {n} shards and {n} fragments of {rows} rows in {:.1}s (untimed)",
        t.elapsed().as_secs_f64()
    );

    let token = format!("{:064x}", 0x5ca1e_u64);
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "--log-format",
            "json",
            "coordinator",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .env("SHARDPREP_TOKEN", &token)
        .env("RUST_LOG", "info")
        .env_remove("SHARDPREP_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardprep coordinator");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();

    // Logs: the listen address, then the phase lines (stamped on arrival).
    let events = Arc::new(Mutex::new(LogEvents::default()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<String>();
    let reader = {
        let events = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                let mut ev = events.lock().unwrap();
                ev.lines += 1;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let fields = v.get("fields").unwrap_or(&v);
                let msg = fields.get("message").and_then(|m| m.as_str()).unwrap_or("");
                match msg {
                    "coordinator listening" => {
                        if let Some(a) = fields.get("addr").and_then(|a| a.as_str()) {
                            ev.addr = Some(a.to_string());
                            let _ = addr_tx.send(a.to_string());
                        }
                    }
                    "job starting" => ev.job_starting = Some(now),
                    "shard committed" => ev.committed += 1,
                    "merging fragments" => ev.merging = Some(now),
                    "job verified" => ev.verified = Some(now),
                    _ => {}
                }
                if v.get("level").and_then(|l| l.as_str()) == Some("ERROR") && ev.errors.len() < 5 {
                    ev.errors.push(line.clone());
                }
            }
        })
    };
    // Memory, polled (the exact peak comes from wait4 below).
    let stop_poll = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop_poll.clone();
        std::thread::spawn(move || {
            let (mut hwm, mut rss_at_end) = (0u64, 0u64);
            let p = pid.to_string();
            while !stop.load(Ordering::Relaxed) {
                if let Some(h) = proc_status_bytes(&p, "VmHWM:") {
                    hwm = hwm.max(h);
                }
                if let Some(r) = proc_status_bytes(&p, "VmRSS:") {
                    rss_at_end = r;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (hwm, rss_at_end)
        })
    };
    let addr = match addr_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "the coordinator did not log its listen address: {:?}",
                events.lock().unwrap().errors
            );
        }
    };

    let progress = Arc::new(Progress {
        n,
        completed: AtomicUsize::new(0),
        first_register: OnceLock::new(),
        last_complete: OnceLock::new(),
        first_done: OnceLock::new(),
        waits: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        rpcs: AtomicU64::new(0),
    });
    let client_cpu0 = self_cpu_s();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let layout = OutputLayout::new(&output);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (addr, token, stage, layout, progress) = (
                addr.clone(),
                token.clone(),
                stage.clone(),
                layout.clone(),
                progress.clone(),
            );
            tasks.push(tokio::spawn(async move {
                client_loop(c, pid, &addr, &token, &stage, &layout, &progress).await
            }));
        }
        for t in tasks {
            t.await.expect("client task").expect("client");
        }
    });
    let client_cpu = self_cpu_s() - client_cpu0;
    let (code, cpu_total, maxrss) = wait4(pid);
    let exited = Instant::now();
    stop_poll.store(true, Ordering::Relaxed);
    let (hwm_polled, rss_last) = poller.join().unwrap();
    reader.join().unwrap();
    std::mem::forget(child); // already reaped by wait4

    let ev = events.lock().unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.report_path()).expect("report.json")).unwrap();
    let (t_reg, cpu_reg) = *progress.first_register.get().expect("a register");
    let (t_last, cpu_last) = *progress.last_complete.get().expect("every shard completed");
    let cpu_reg = cpu_reg.unwrap_or(0.0);
    let cpu_last = cpu_last.unwrap_or(f64::NAN);
    let sched_wall = t_last - started;
    let ms_per_shard_all = cpu_last * 1000.0 / n as f64;
    let ms_per_shard_rpc = (cpu_last - cpu_reg) * 1000.0 / n as f64;
    let merge_cpu = cpu_total - cpu_last;
    let merge_wall = match (ev.merging, ev.verified) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => f64::NAN,
    };
    let finish_wall = ev
        .verified
        .map(|v| v.saturating_duration_since(t_last).as_secs_f64())
        .unwrap_or(f64::NAN);
    let rss_mib = maxrss as f64 / MIB;
    let report_rss = report["resources"]["coordinator_peak_rss_bytes"]
        .as_u64()
        .unwrap_or(0) as f64
        / MIB;
    let verdict = report["verdict"].as_str().unwrap_or("?").to_string();
    let merged_rows = report["rows"].as_u64().unwrap_or(0);
    let rpcs = progress.rpcs.load(Ordering::Relaxed);

    println!(
        "coordinator exit code {code}, verdict {verdict:?}, {merged_rows} rows merged ({} expected), {} shards committed (log), {} log lines",
        n * rows,
        ev.committed,
        ev.lines
    );
    for e in &ev.errors {
        println!("coordinator ERROR: {e}");
    }
    println!(
        "RPCs: {rpcs} ({} Wait answers, {} rejected completions); client side CPU {client_cpu:.2}s (bench process, not counted)",
        progress.waits.load(Ordering::Relaxed),
        progress.rejected.load(Ordering::Relaxed)
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| shards × clients | {n} × {clients} |");
    println!(
        "| wall: start → last Complete answered (scheduling) | {:.2} s ({:.0} shards/s) |",
        sched_wall.as_secs_f64(),
        n as f64 / sched_wall.as_secs_f64()
    );
    println!(
        "| wall: start → first Register answered (discover + recover {n} shards) | {:.2} s |",
        (t_reg - started).as_secs_f64()
    );
    println!("| wall: merge of {n} fragments (log: merging → verified) | {merge_wall:.2} s |");
    println!("| wall: last Complete → job verified (merge, verify, report) | {finish_wall:.2} s |");
    println!(
        "| wall: total (start → coordinator exit) | {:.2} s |",
        (exited - started).as_secs_f64()
    );
    println!("| report.json wall_ms | {} ms |", report["wall_ms"]);
    println!("| coordinator CPU until first Register (startup) | {cpu_reg:.2} s |");
    println!(
        "| coordinator CPU until last Complete (scheduling, incl. startup) | {cpu_last:.2} s |"
    );
    println!(
        "| coordinator CPU after last Complete (merge, report, shutdown) | {merge_cpu:.2} s |"
    );
    println!("| coordinator CPU total (wait4) | {cpu_total:.2} s |");
    println!("| **scheduling CPU per shard, incl. startup** | **{ms_per_shard_all:.3} ms** |");
    println!(
        "| scheduling CPU per shard, RPCs only (after first Register) | {ms_per_shard_rpc:.3} ms |"
    );
    println!(
        "| coordinator CPU per RPC (after first Register) | {:.1} µs |",
        (cpu_last - cpu_reg) * 1e6 / rpcs.max(1) as f64
    );
    println!("| **coordinator peak RSS (wait4 ru_maxrss)** | **{rss_mib:.1} MiB** |");
    println!(
        "| coordinator peak RSS (polled VmHWM / report.json) | {:.1} / {report_rss:.1} MiB |",
        hwm_polled as f64 / MIB
    );
    println!(
        "| coordinator RSS last polled | {:.1} MiB |",
        rss_last as f64 / MIB
    );
    println!();
    let ok_cpu = ms_per_shard_all < TARGET_MS_PER_SHARD;
    let ok_rss = rss_mib <= TARGET_COORD_RSS_MIB;
    let ok_job = code == 0 && verdict == "ok" && merged_rows == (n * rows) as u64;
    println!(
        "TARGET scheduling CPU per shard < {TARGET_MS_PER_SHARD} ms: {ms_per_shard_all:.3} ms → {}",
        pass(ok_cpu)
    );
    println!(
        "TARGET coordinator peak RSS ≤ {TARGET_COORD_RSS_MIB} MiB with {n} shards: {rss_mib:.1} MiB → {}",
        pass(ok_rss)
    );
    println!(
        "CHECK job verified (exit 0, verdict ok, all rows merged): {}",
        pass(ok_job)
    );
    ok_cpu && ok_rss && ok_job
}

async fn client_loop(
    c: usize,
    pid: u32,
    addr: &str,
    token: &str,
    stage: &Path,
    layout: &OutputLayout,
    progress: &Progress,
) -> Result<(), String> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = CoordinatorClient::new(channel);
    let auth: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "token".to_string())?;
    let worker_id = format!("bench-{c:03}");
    let tmp_dir = layout.tmp_dir();
    loop {
        client
            .register(with_auth(
                proto::RegisterRequest {
                    worker_id: worker_id.clone(),
                    hostname: "bench".into(),
                    pid: std::process::id(),
                },
                &auth,
            ))
            .await
            .map_err(|e| format!("register: {e}"))?;
        progress
            .first_register
            .get_or_init(|| (Instant::now(), proc_cpu_s(pid)));
        let lease = client
            .lease(with_auth(
                proto::LeaseRequest {
                    worker_id: worker_id.clone(),
                },
                &auth,
            ))
            .await
            .map_err(|e| format!("lease: {e}"))?
            .into_inner();
        progress.rpcs.fetch_add(2, Ordering::Relaxed);
        match lease.outcome {
            Some(proto::lease_response::Outcome::Shard(l)) => {
                let stem = shard_file_stem(&l.shard_name);
                let fragment_tmp = format!("{stem}.{}.parquet", l.lease_id);
                let manifest_tmp = format!("{stem}.{}.manifest.json", l.lease_id);
                let rows = env_usize("SCALE_ROWS_PER_SHARD", 8).max(1) as u64;
                std::fs::copy(
                    stage.join(format!("{}.parquet", l.shard_index)),
                    tmp_dir.join(&fragment_tmp),
                )
                .map_err(|e| format!("copy fragment: {e}"))?;
                let manifest = ShardManifest {
                    shard_name: l.shard_name.clone(),
                    identity: ShardIdentity {
                        size: l.size,
                        mtime_ns: l.mtime_ns,
                        ..Default::default()
                    },
                    lease_id: l.lease_id,
                    attempt: l.attempt,
                    worker_id: worker_id.clone(),
                    fragment: format!("{stem}.parquet"),
                    counts: ShardCounts {
                        members: rows * 2,
                        bytes_read: l.size,
                        json_files: rows,
                        json_with_width: rows,
                        images: rows,
                        rows,
                        ..Default::default()
                    },
                    issues: Vec::new(),
                    issues_not_listed: 0,
                    data_synced: true,
                    boot_id: String::new(),
                    image_checks: Default::default(),
                    image_issues: Vec::new(),
                    image_issues_not_listed: 0,
                    elapsed_ms: 1,
                };
                let mut f = std::fs::File::create(tmp_dir.join(&manifest_tmp))
                    .map_err(|e| format!("manifest: {e}"))?;
                f.write_all(&serde_json::to_vec(&manifest).unwrap())
                    .map_err(|e| format!("manifest: {e}"))?;
                drop(f);
                let r = client
                    .complete(with_auth(
                        proto::CompleteRequest {
                            worker_id: worker_id.clone(),
                            lease_id: l.lease_id,
                            fragment_tmp,
                            manifest_tmp,
                            peak_rss_bytes: 0,
                        },
                        &auth,
                    ))
                    .await
                    .map_err(|e| format!("complete: {e}"))?
                    .into_inner();
                progress.rpcs.fetch_add(1, Ordering::Relaxed);
                if !r.accepted {
                    progress.rejected.fetch_add(1, Ordering::Relaxed);
                    eprintln!("completion rejected: {}", r.message);
                    continue;
                }
                if progress.completed.fetch_add(1, Ordering::AcqRel) + 1 == progress.n {
                    progress
                        .last_complete
                        .get_or_init(|| (Instant::now(), proc_cpu_s(pid)));
                }
            }
            Some(proto::lease_response::Outcome::WaitMs(ms)) => {
                progress.waits.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(ms.clamp(10, 5000))).await;
            }
            Some(proto::lease_response::Outcome::Done(_)) => {
                progress.first_done.get_or_init(Instant::now);
                return Ok(());
            }
            None => return Err("empty lease answer".into()),
        }
    }
}

fn with_auth<T>(m: T, auth: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert("authorization", auth.clone());
    r
}

// ---------------------------------------------------------------- scenario 2: merge

fn merge_scenario(tmp: &Path, bin: Option<&Path>) -> bool {
    let total = env_usize("SCALE_MERGE_ROWS", 1_160_000);
    let k = env_usize("SCALE_MERGE_FRAGMENTS", 69).max(1);
    let reps = env_usize("SCALE_MERGE_REPS", 3).max(1);
    println!(
        "\n== merge: {total} rows in {k} fragments, shardprep_coordinator::merge::merge in this process =="
    );
    let dir = tmp.join("fragments");
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let mut rng = Rng(42);
    let mut fragments = Vec::with_capacity(k);
    let mut caption_bytes = 0usize;
    let mut frag_bytes = 0u64;
    for i in 0..k {
        let rows = total * (i + 1) / k - total * i / k;
        let name = format!("data-{i:06}.tar");
        let path = dir.join(format!("{}.parquet", shard_file_stem(&name)));
        caption_bytes += write_fragment(&path, i, rows, &mut rng);
        frag_bytes += std::fs::metadata(&path).unwrap().len();
        fragments.push((name, path));
    }
    println!(
        "wrote {k} fragments ({:.1} MB, mean caption {:.0} bytes) in {:.1}s (untimed)",
        frag_bytes as f64 / 1e6,
        caption_bytes as f64 / total as f64,
        t.elapsed().as_secs_f64()
    );
    let dest = tmp.join("merged.parquet");
    let mut runs = Vec::new();
    let mut peak = 0u64;
    let mut baseline = 0u64;
    for rep in 0..reps {
        let _ = std::fs::remove_file(&dest);
        // Reset this process's VmHWM so that the peak below is the merge's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        baseline = proc_status_bytes("self", "VmRSS:").unwrap_or(0);
        let cpu0 = self_cpu_s();
        let t = Instant::now();
        let out = shardprep_coordinator::merge::merge(&fragments, &[], &dest, &Default::default())
            .expect("merge");
        let secs = t.elapsed().as_secs_f64();
        let cpu = self_cpu_s() - cpu0;
        peak = peak.max(proc_status_bytes("self", "VmHWM:").unwrap_or(0));
        assert_eq!(out.rows, total as u64, "merged rows");
        assert_eq!(out.duplicate_count, 0, "duplicates");
        println!(
            "rep {}: {secs:.2}s wall, {cpu:.2}s CPU, {} rows",
            rep + 1,
            out.rows
        );
        runs.push((secs, cpu));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (merge_s, merge_cpu) = runs[runs.len() / 2];
    let merged_bytes = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);

    let (rows_per_s, source) = job_throughput(tmp, bin);
    let job_s = total as f64 / rows_per_s;
    let share = merge_s / job_s;
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| rows × fragments | {total} × {k} |");
    println!("| merge wall (median of {reps}) | {merge_s:.2} s |");
    println!("| merge CPU (same run) | {merge_cpu:.2} s |");
    println!(
        "| merge throughput | {:.0} rows/s |",
        total as f64 / merge_s
    );
    println!("| merged parquet | {:.1} MB |", merged_bytes as f64 / 1e6);
    println!(
        "| peak RSS during merge (VmHWM reset before) / RSS before | {:.1} / {:.1} MiB |",
        peak as f64 / MIB,
        baseline as f64 / MIB
    );
    println!("| job throughput used | {rows_per_s:.0} rows/s ({source}) |");
    println!("| estimated job time for {total} rows | {job_s:.1} s |");
    println!("| **merge share of the job** | **{:.2}%** |", share * 100.0);
    println!();
    let ok = share <= TARGET_MERGE_SHARE;
    println!(
        "TARGET merge ≤ {:.0}% of the job's time: {:.2}% → {}",
        TARGET_MERGE_SHARE * 100.0,
        share * 100.0,
        pass(ok)
    );
    ok
}

/// Rows per second of a whole `shardprep run`: from the environment, from
/// bench/RESULTS.md, or measured here on a generated many-small-files set.
fn job_throughput(tmp: &Path, bin: Option<&Path>) -> (f64, String) {
    if let Some(v) = std::env::var("SCALE_JOB_ROWS_PER_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        return (v, "SCALE_JOB_ROWS_PER_S".into());
    }
    if let Some(v) = throughput_from_results() {
        return v;
    }
    let Some(bin) = bin else {
        // Assumption when nothing can be measured: tar xf-like 40,000 files/s = 20,000 samples/s.
        return (
            20_000.0 * 8.0 / 9.0,
            "ASSUMED: 20,000 samples/s, 8/9 of them rows".into(),
        );
    };
    let samples = env_usize("SCALE_JOB_SAMPLES", 20_000).max(2);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let input = tmp.join("job-in");
    let output = tmp.join("job-out");
    let st = Command::new(bin)
        .args(["generate", "--shards", "2", "--image-bytes", "1024"])
        .arg("--samples")
        .arg((samples / 2).to_string())
        .arg("--output")
        .arg(&input)
        .stdout(Stdio::null())
        .status()
        .expect("shardprep generate");
    assert!(st.success(), "shardprep generate failed");
    let t = Instant::now();
    let st = Command::new(bin)
        .args(["run", "--progress", "never"])
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("shardprep run");
    let wall = t.elapsed().as_secs_f64();
    assert!(st.success(), "shardprep run failed");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_u64().unwrap_or(0) as f64;
    let _ = std::fs::remove_dir_all(&output);
    let _ = std::fs::remove_dir_all(&input);
    (
        rows / wall,
        format!(
            "measured: `shardprep run --workers {workers}` on 2 × {} samples of 1 KiB images (many small files, the fastest kind of job per row), {rows} rows in {wall:.2}s",
            samples / 2
        ),
    )
}

/// The spN row of the small set in bench/RESULTS.md: files/s → samples/s (2
/// members a sample) → rows/s (8 of 9 samples have a width).
fn throughput_from_results() -> Option<(f64, String)> {
    let path = workspace_root().join("bench/RESULTS.md");
    let text = std::fs::read_to_string(&path).ok()?;
    let mut best: Option<f64> = None;
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').map(|c| c.trim()).collect();
        // | set | tool | median s | min–max s | × tar | files/s | ...
        if cols.len() > 6
            && cols[1] == "small"
            && cols[2].starts_with("shardprep run --workers")
            && let Ok(fps) = cols[6].replace(',', "").parse::<f64>()
        {
            best = Some(best.map_or(fps, |b: f64| b.max(fps)));
        }
    }
    let fps = best?;
    Some((
        fps / 2.0 * 8.0 / 9.0,
        format!("bench/RESULTS.md small set, {fps:.0} files/s → rows/s"),
    ))
}

// ---------------------------------------------------------------- main

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects scenarios too.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let scenarios = std::env::var("SCALE_SCENARIOS").unwrap_or_else(|_| {
        if args.is_empty() {
            "scheduling,merge".into()
        } else {
            args.join(",")
        }
    });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("shardprep coordinator scale bench — {cores} cores; scenarios: {scenarios}");
    let tmp = tmp_root("scale");
    let bin_dir = tmp.path().join("bin");
    let mut all_ok = true;
    let mut bin = None;
    if scenarios.contains("scheduling") {
        let b = shardprep_bin(&bin_dir);
        all_ok &= scheduling(&tmp.path().join("sched"), &b);
        let _ = std::fs::remove_dir_all(tmp.path().join("sched"));
        bin = Some(b);
    }
    if scenarios.contains("merge") {
        if bin.is_none()
            && std::env::var_os("SCALE_JOB_ROWS_PER_S").is_none()
            && throughput_from_results().is_none()
        {
            bin = Some(shardprep_bin(&bin_dir));
        }
        all_ok &= merge_scenario(&tmp.path().join("merge"), bin.as_deref());
    }
    println!("\nOVERALL: {}", pass(all_ok));
}
