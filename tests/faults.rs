//! Fault tolerance with real processes and real signals: workers killed
//! (SIGKILL) or stopped (SIGTERM) inside a shard, a coordinator killed and
//! restarted on the same port, stalled and hung workers, shards that always
//! fail or are corrupt, inputs changed between runs, workers that start
//! before their coordinator, `run` restarting a dead worker.
//!
//! Every test checks the end result against the independent oracle of the
//! seed's steps (`assert_matches_seed`) and the report's account of what
//! happened (attempts, recovered shards, failures). Leases are short (set by
//! flags) and shards small; "slow" shards (thousands of tiny members) give a
//! window in which a worker is caught inside a shard: it is frozen there with
//! SIGSTOP, checked to be mid-shard on disk, then signalled.
//! Every wait is bounded; on a failure the logs of every process are printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// The shared secret of the hand-started coordinators and workers.
const TOKEN: &str = "faults-suite-shared-token-3b9f07c2";

/// Samples per "slow" shard: 2 members each, plus a caption file per row.
const SLOW_SAMPLES: usize = 1500;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A job's folders, its port, and the processes of one test (each logging
/// to a file). Dropping it stops what still runs; after a panic it prints
/// every process's log.
struct Scene {
    procs: Vec<Proc>,
    input: PathBuf,
    out: PathBuf,
    port: u16,
    tmp: TestDir,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempdir();
        Scene {
            procs: Vec::new(),
            input: tmp.path().join("shards"),
            out: tmp.path().join("dalle3"),
            port: free_port(),
            tmp,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `shardprep ARGS` with a clean `SHARDPREP_*` environment plus `envs`.
    fn spawn(&mut self, name: &str, args: &[String], envs: &[(&str, &str)]) -> usize {
        let log = self.dir().join(format!("{}-{name}.log", self.procs.len()));
        let mut cmd = command(args);
        cmd.env("RUST_LOG", "info").envs(envs.iter().copied());
        self.procs.push(Proc::spawn_logged(name, &mut cmd, &log));
        self.procs.len() - 1
    }

    /// `shardprep coordinator` on this scene's port, with the job flags `extra`.
    fn coordinator(&mut self, name: &str, extra: &[&str]) -> usize {
        let mut args: Vec<String> = ["--log-format", "json", "coordinator", "--input"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(path_str(&self.input).into());
        args.push("--output".into());
        args.push(path_str(&self.out).into());
        args.push("--listen".into());
        args.push(format!("127.0.0.1:{}", self.port));
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, &args, &[("SHARDPREP_TOKEN", TOKEN)])
    }

    /// `shardprep worker --worker-id ID` for this scene's coordinator.
    fn worker(&mut self, id: &str, fault: Option<&str>) -> usize {
        let mut args: Vec<String> = vec![
            "--log-format".into(),
            "json".into(),
            "worker".into(),
            "--coordinator".into(),
            self.url(),
            "--worker-id".into(),
            id.into(),
        ];
        if let Some(f) = fault {
            args.push("--fault".into());
            args.push(f.into());
        }
        self.spawn(
            id,
            &args,
            &[
                ("SHARDPREP_TOKEN", TOKEN),
                ("SHARDPREP_CONNECT_TIMEOUT", "30s"),
            ],
        )
    }

    /// `shardprep run --input INPUT --output OUT EXTRA`.
    fn run(&mut self, name: &str, out: &Path, extra: &[&str]) -> usize {
        let mut args: Vec<String> =
            vec!["run".into(), "--input".into(), path_str(&self.input).into()];
        args.push("--output".into());
        args.push(path_str(out).into());
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, &args, &[])
    }

    fn running(&mut self, i: usize) -> bool {
        self.procs[i].running()
    }

    /// Sends a real signal. Only to a child not yet reaped, so the pid is ours.
    fn signal(&mut self, i: usize, sig: i32) {
        self.procs[i].signal(sig);
    }

    fn pid(&self, i: usize) -> u32 {
        self.procs[i].pid()
    }

    /// Waits for the process to exit; panics after `timeout`.
    fn wait_exit(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        self.procs[i].wait_exit(timeout)
    }

    fn log(&self, i: usize) -> String {
        self.procs[i].log()
    }

    /// `shardprep status --json` of this scene's coordinator (None if unreachable).
    fn status(&self) -> Option<Value> {
        let args = [
            "status".into(),
            "--coordinator".into(),
            self.url(),
            "--json".into(),
        ];
        let o = command(&args)
            .env("RUST_LOG", "info")
            .env("SHARDPREP_TOKEN", TOKEN)
            .output()
            .expect("start shardprep status");
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// Polls `cond` until it holds; panics after `timeout`.
    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&mut Scene) -> bool,
    ) {
        let start = Instant::now();
        while !cond(self) {
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting until {what}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Scene {
    /// Asks every process still running to stop at once (so that they share
    /// one grace period); each [`Proc`] then waits, kills and reports.
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.terminate();
        }
    }
}

/// DALLE-3-style shards that take a noticeable time each (many tiny members).
fn slow_shards(dir: &Path, shards: usize, seed: u64) -> Vec<PathBuf> {
    generate(
        dir,
        &GenOptions {
            shards,
            samples_per_shard: SLOW_SAMPLES,
            image_bytes: 64,
            seed,
            no_width_every: 7,
            ..GenOptions::default()
        },
    )
    .expect("generate shards")
}

/// The report's line for one shard.
fn shard_entry<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["shards"]
        .as_array()
        .expect("report.shards")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("shard {name} not in the report: {r:#}"))
}

/// Committed manifests in OUT/.shardprep/fragments, by shard name.
fn committed(out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(out.join(".shardprep/fragments")) else {
        return m;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".manifest.json") {
            let bytes = std::fs::read(e.path()).unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let shard = v["shard_name"].as_str().unwrap().to_string();
            assert!(
                m.insert(shard.clone(), bytes).is_none(),
                "two committed manifests for {shard}"
            );
        }
    }
    m
}

/// Names of the files in OUT/.shardprep/tmp (attempts in flight or left behind).
fn tmp_files(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out.join(".shardprep/tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// True when a worker has finished processing `shard` (its temporary
/// manifest is written) but has not had it committed.
fn processed_not_committed(out: &Path, shard: &str) -> bool {
    // Temporary names are `<shard name>-<hash>.<lease>.{parquet,manifest.json}`.
    tmp_files(out)
        .iter()
        .any(|f| f.starts_with(&format!("{shard}-")) && f.ends_with(".manifest.json"))
}

/// The shard a worker holds a lease on, per `status --json`, with its members done.
fn lease_of(st: &Value, worker: &str) -> Option<(String, u64)> {
    st["shards"].as_array()?.iter().find_map(|s| {
        (s["state"] == "leased" && s["worker"] == worker).then(|| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["progress"]["members"].as_u64().unwrap_or(0),
            )
        })
    })
}

/// True when `shard` is being processed now: its temporary fragment exists,
/// its temporary manifest (written when processing ends) does not, and it
/// is not committed.
fn inside(out: &Path, shard: &str) -> bool {
    tmp_files(out)
        .iter()
        .any(|f| f.starts_with(&format!("{shard}-")) && f.ends_with(".parquet"))
        && !processed_not_committed(out, shard)
        && !committed(out).contains_key(shard)
}

/// The state letter of a process in /proc/PID/stat (`T` when stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Stops `pid` (SIGSTOP) and keeps it stopped if it is inside `shard`, so
/// that a following signal lands inside the shard for certain; otherwise
/// lets it go on (SIGCONT) and returns false.
fn freeze_inside(pid: u32, out: &Path, shard: &str) -> bool {
    if !inside(out, shard) {
        return false;
    }
    // SAFETY: kill(2) on a process of this test (a child, or a child of `run`).
    assert_eq!(
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) },
        0,
        "SIGSTOP {pid}"
    );
    let t = Instant::now();
    while proc_state(pid) != Some('T') && t.elapsed() < secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(proc_state(pid), Some('T'), "{pid} did not stop");
    if inside(out, shard) {
        return true;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    false
}

fn assert_success(st: ExitStatus, what: &str) {
    assert!(st.success(), "{what} exited with {st:?}");
}

/// Case 1: SIGKILL of one of three workers while it is inside a shard: its lease
/// times out, another worker redoes the shard, the output is the seed's.
#[test]
fn sigkill_of_a_worker_inside_a_shard_is_redone_by_another() {
    let mut s = Scene::new();
    let shards = slow_shards(&s.input.clone(), 4, 8101);
    let c = s.coordinator(
        "coordinator",
        &["--lease-timeout", "1500ms", "--heartbeat-interval", "100ms"],
    );
    let ids = ["w0", "w1", "w2"];
    let ws: Vec<usize> = ids.iter().map(|id| s.worker(id, None)).collect();

    // The first worker caught inside a shard (frozen there by SIGSTOP) is the victim.
    let mut victim: Option<(usize, String)> = None;
    s.wait_until("a worker is caught inside a shard", secs(30), |s| {
        let Some(st) = s.status() else { return false };
        for (i, id) in ids.iter().enumerate() {
            if let Some((shard, _)) = lease_of(&st, id)
                && freeze_inside(s.pid(ws[i]), &s.out, &shard)
            {
                victim = Some((i, shard));
                return true;
            }
        }
        false
    });
    let (vi, shard) = victim.unwrap();
    s.signal(ws[vi], libc::SIGKILL);
    let killed_at = Instant::now();

    assert_success(s.wait_exit(c, secs(40)), "the coordinator");
    let recovery = killed_at.elapsed();
    for (i, &w) in ws.iter().enumerate() {
        let st = s.wait_exit(w, secs(10));
        if i == vi {
            assert_eq!(
                st.signal(),
                Some(libc::SIGKILL),
                "the victim was killed by SIGKILL"
            );
        } else {
            assert_success(st, ids[i]);
        }
    }
    let r = report(&s.out);
    let e = shard_entry(&r, &shard);
    assert_eq!(e["state"], "done", "{e:#}");
    assert_eq!(e["attempts"], 2, "the killed attempt and the redo: {e:#}");
    assert_ne!(
        e["worker"], ids[vi],
        "the dead worker cannot have committed it: {e:#}"
    );
    let clog = s.log(c);
    assert!(
        clog.contains(&format!("lease expired: worker {}", ids[vi])),
        "the shard came back through the lease timeout"
    );
    assert!(recovery < secs(20), "recovery took {recovery:?}");
    assert_eq!(
        committed(&s.out).len(),
        4,
        "one committed fragment per shard"
    );
    assert_matches_seed(&s.out, &shards);
}

/// Case 2: SIGKILL of the coordinator in the middle of a job; it is started again
/// on the same port with the same output. The workers (still running, each
/// with a finished shard to report when the coordinator dies) reconnect by
/// themselves; shards committed before the kill are recovered, not redone;
/// the reports of leases of the dead coordinator are refused.
#[test]
fn sigkill_of_the_coordinator_resumes_on_restart_and_workers_reconnect() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 6, 20, 8201);
    let flags = ["--lease-timeout", "5s", "--heartbeat-interval", "200ms"];
    let c1 = s.coordinator("coordinator-1", &flags);
    let out = s.out.clone();
    // A works alone: it commits shards 0 and 1, processes 2, then is silent
    // for 1 s before reporting it.
    let a = s.worker("wA", Some("stall:data-000002.tar:1s"));
    s.wait_until(
        "wA commits shards 0 and 1 and stalls on 2",
        secs(20),
        |_| committed(&out).len() == 2 && processed_not_committed(&out, "data-000002.tar"),
    );
    // B takes shard 3 (next in the queue) and stalls on it the same way.
    let b = s.worker("wB", Some("stall:data-000003.tar:1s"));
    s.wait_until("wB stalls on shard 3", secs(20), |_| {
        processed_not_committed(&out, "data-000003.tar")
    });
    let before = committed(&s.out);
    let names: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(names, ["data-000000.tar", "data-000001.tar"]);

    s.signal(c1, libc::SIGKILL);
    assert_eq!(s.wait_exit(c1, secs(5)).signal(), Some(libc::SIGKILL));
    // Both stalls end while no coordinator listens: their reports must wait.
    std::thread::sleep(secs(2));
    assert!(
        s.running(a) && s.running(b),
        "workers must survive the coordinator's death"
    );
    let c2 = s.coordinator("coordinator-2", &flags);

    assert_success(s.wait_exit(c2, secs(30)), "the restarted coordinator");
    assert_success(s.wait_exit(a, secs(10)), "wA");
    assert_success(s.wait_exit(b, secs(10)), "wB");

    let r = report(&s.out);
    assert_eq!(r["shards_recovered"], 2, "{r:#}");
    for sh in r["shards"].as_array().unwrap() {
        let name = sh["name"].as_str().unwrap();
        assert_eq!(sh["recovered"], before.contains_key(name), "{sh:#}");
        assert_eq!(sh["state"], "done", "{sh:#}");
    }
    // Not redone: a redo would commit a new manifest (new lease id, worker, time).
    let after = committed(&s.out);
    for (name, bytes) in &before {
        assert!(
            after[name] == *bytes,
            "{name} was committed again after the restart"
        );
    }
    assert_eq!(after.len(), 6);
    for w in [a, b] {
        let log = s.log(w);
        assert!(log.contains("coordinator unreachable; retrying"), "{log}");
        assert!(log.contains("reconnected to the coordinator"), "{log}");
    }
    assert_eq!(
        s.log(c2)
            .matches("late completion of a lease that expired; discarded")
            .count(),
        2,
        "both reports for leases of the dead coordinator were refused"
    );
    assert_matches_seed(&s.out, &shards);
}

/// Case 3: `run` with worker 0 stalling (silent, then reporting late) on a
/// shard: the shard is leased again, and the result is counted once. Which
/// local worker gets which shard is up to the start-up race, so the run is
/// repeated, the target alternating between shards 0 and 1 (whichever way
/// the race leans, one of them is worker 0's), until worker 0 had it
/// (attempts == 2); every run must be exact.
#[test]
fn run_with_a_stalled_worker_counts_the_shard_once() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 4, 20, 8301);
    let want = oracle(&shards, "short_caption");
    let mut stalled = false;
    for i in 0..10 {
        let target = format!("data-00000{}.tar", i % 2);
        let fault = format!("stall:{target}:3s");
        let out = s.dir().join(format!("out{i}"));
        let p = s.run(
            &format!("run{i}"),
            &out,
            &[
                "--fault-worker0",
                &fault,
                "--lease-timeout",
                "1s",
                "--heartbeat-interval",
                "200ms",
                "--workers",
                "2",
                "--worker-grace",
                "2s",
            ],
        );
        assert_success(s.wait_exit(p, secs(30)), "run");
        assert_matches_seed(&out, &shards);
        let r = report(&out);
        assert_eq!(r["verdict"], "ok");
        assert_eq!(r["rows"], want.rows.len() as u64, "no duplicate rows");
        assert_eq!(r["fragment_rows"], want.rows.len() as u64);
        assert_eq!(
            r["found_json"], want.json_members,
            "no double count of JSON files"
        );
        assert_eq!(r["totals"]["json_files"], want.json_members);
        let rows = read_rows(&out.join("dalle3.parquet"));
        let unique: BTreeSet<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        assert_eq!(
            unique.len(),
            rows.len(),
            "a file name appears twice in the parquet"
        );
        assert_eq!(committed(&out).len(), 4);
        let s0 = shard_entry(&r, &target);
        if s.log(p).contains("test fault: stalling before reporting") {
            assert_eq!(
                s0["attempts"], 2,
                "the stalled lease expired and the shard was leased again: {s0:#}"
            );
            stalled = true;
            break;
        }
        assert_eq!(s0["attempts"], 1, "{s0:#}");
    }
    assert!(
        stalled,
        "worker 0 never got the stall's shard in 10 runs: the stall was not exercised"
    );
}

/// Case 3b: The same, by hand, so that the late report is certain to reach a
/// coordinator that still runs the job: a third worker hangs on another
/// shard (heartbeats going on) and keeps the job open until the late
/// report has been refused; then it is killed with SIGKILL.
#[test]
fn a_late_report_reaching_the_running_coordinator_is_refused() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 4, 20, 8302);
    let c = s.coordinator(
        "coordinator",
        &["--lease-timeout", "1s", "--heartbeat-interval", "200ms"],
    );
    let out = s.out.clone();
    // A: processes shard 0, then is silent for 3 s (its lease expires after 1 s).
    let a = s.worker("wA", Some("stall:data-000000.tar:3s"));
    s.wait_until("wA has processed shard 0", secs(20), |_| {
        processed_not_committed(&out, "data-000000.tar")
    });
    // H: takes shard 1 (next in the queue) and hangs on it, heartbeating.
    let h = s.worker("wH", Some("hang:data-000001.tar"));
    s.wait_until("wH holds shard 1", secs(20), |s| {
        s.status()
            .and_then(|st| lease_of(&st, "wH"))
            .is_some_and(|(n, _)| n == "data-000001.tar")
    });
    // B: does shards 2 and 3, and shard 0 once A's lease expires.
    let b = s.worker("wB", None);
    s.wait_until("the coordinator refused wA's late report", secs(20), |s| {
        s.log(c)
            .contains("late completion of a lease that expired; discarded")
    });
    // The job is still open: everything is done but the shard wH hangs on.
    s.wait_until(
        "shards 0, 2 and 3 are done while wH holds shard 1",
        secs(20),
        |s| {
            s.status().is_some_and(|st| {
                st["phase"] == "running"
                    && st["shards_done"] == 3
                    && lease_of(&st, "wH").is_some_and(|(n, _)| n == "data-000001.tar")
            })
        },
    );
    s.signal(h, libc::SIGKILL);

    assert_success(s.wait_exit(c, secs(30)), "the coordinator");
    assert_success(s.wait_exit(a, secs(10)), "wA");
    assert_success(s.wait_exit(b, secs(10)), "wB");
    let r = report(&s.out);
    let s0 = shard_entry(&r, "data-000000.tar");
    assert!(
        s0["attempts"].as_u64().unwrap() >= 2,
        "the stalled lease expired: {s0:#}"
    );
    let s1 = shard_entry(&r, "data-000001.tar");
    assert_eq!(s1["attempts"], 2, "{s1:#}");
    assert_ne!(s1["worker"], "wH");
    assert_eq!(committed(&s.out).len(), 4);
    assert_eq!(
        tmp_files(&s.out),
        Vec::<String>::new(),
        "the refused attempt's files were discarded"
    );
    assert_matches_seed(&s.out, &shards);
}

/// `run --fault-worker0 hang:SHARD --stall-timeout 2s --workers 2
/// --worker-grace 2s --heartbeat-interval HB`, repeated until worker 0 had
/// the shard (SHARD alternates between shards 1 and 0, see case 3): the stall
/// timeout must take the shard back, another worker must do it, and `run`
/// must return a few seconds after the job is verified.
fn hang_in_run(heartbeat: &str) {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 4, 20, 8401);
    let mut hung = false;
    for i in 0..10 {
        let target = format!("data-00000{}.tar", 1 - i % 2);
        let fault = format!("hang:{target}");
        let out = s.dir().join(format!("out{i}"));
        let started = Instant::now();
        let p = s.run(
            &format!("run{i}"),
            &out,
            &[
                "--fault-worker0",
                &fault,
                "--stall-timeout",
                "2s",
                "--heartbeat-interval",
                heartbeat,
                "--workers",
                "2",
                "--worker-grace",
                "2s",
            ],
        );
        assert_success(s.wait_exit(p, secs(40)), "run");
        let wall = started.elapsed();
        assert_matches_seed(&out, &shards);
        let r = report(&out);
        let s1 = shard_entry(&r, &target);
        if s.log(p).contains("made no progress") {
            assert_eq!(s1["attempts"], 2, "{s1:#}");
            let job = Duration::from_millis(r["wall_ms"].as_u64().unwrap());
            assert!(wall < secs(20), "run took {wall:?}");
            assert!(
                wall.saturating_sub(job) < secs(8),
                "run returned {:?} after the job ended ({job:?} of {wall:?})",
                wall.saturating_sub(job)
            );
            hung = true;
            break;
        }
        assert_eq!(s1["attempts"], 1, "{s1:#}");
    }
    assert!(
        hung,
        "worker 0 never got the hung shard in 10 runs: the hang was not exercised"
    );
}

/// Case 4: A worker hanging inside a shard (heartbeats going on) loses it to the
/// stall timeout; the job ends and `run` returns soon. With heartbeats every
/// 3 s (the documented default) the stall is noticed by the other worker's
/// lease request, which takes the shard at once.
#[test]
fn run_with_a_hung_worker_releases_the_shard_and_returns_soon() {
    hang_in_run("3s");
}

/// Case 4b: The same with heartbeats every 1 s (the default in src/cli.rs):
/// the stall timeout (2 s) is a multiple of the heartbeat interval, so the
/// hung worker's own heartbeat is what notices the stall, and its very next
/// request is a lease. It must not get the same shard back while a healthy
/// worker is idle (it did, until --max-attempts was spent and the job
/// failed; fixed in ead8080).
#[test]
fn run_with_a_hung_worker_and_1s_heartbeats_releases_the_shard() {
    hang_in_run("1s");
}

/// Overwrites the header of member `index` of a tar with garbage; returns
/// its byte offset (the end of the last good member).
fn corrupt_member_header(shard: &Path, index: usize) -> u64 {
    let pos = {
        let mut ar = tar::Archive::new(File::open(shard).unwrap());
        let e = ar.entries().unwrap().nth(index).unwrap().unwrap();
        e.raw_header_position()
    };
    let mut bytes = std::fs::read(shard).unwrap();
    for b in &mut bytes[pos as usize..pos as usize + 512] {
        *b = 0x5a;
    }
    std::fs::write(shard, bytes).unwrap();
    pos
}

/// Case 5: A shard whose processing always fails is tried `--max-attempts` times;
/// a corrupt shard fails at once, named with the byte offset. The job fails
/// (exit 1), the report lists both, the other shards are done, and no
/// parquet is left that could pass for a complete table. After the inputs
/// are fixed, a re-run keeps the finished shards and completes.
#[test]
fn failing_and_corrupt_shards_fail_the_job_without_a_parquet() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 4, 20, 8501);
    let original2 = std::fs::read(&shards[2]).unwrap();
    let offset = corrupt_member_header(&shards[2], 6);
    assert!(offset > 0);
    // A table from an earlier run must not survive a failed one.
    std::fs::create_dir_all(&s.out).unwrap();
    std::fs::write(s.out.join("dalle3.parquet"), b"stale table").unwrap();

    let out = s.out.clone();
    let p = s.run(
        "run-failing",
        &out,
        &[
            "--fault-worker0",
            "fail:data-000001.tar",
            "--workers",
            "1",
            "--max-attempts",
            "3",
        ],
    );
    let st = s.wait_exit(p, secs(30));
    assert_eq!(st.code(), Some(1), "a failed job exits 1");
    let log = s.log(p);
    assert!(log.contains("FAILED"), "the summary says FAILED");
    assert!(
        !s.out.join("dalle3.parquet").exists(),
        "no parquet after a failed job"
    );

    let r = report(&s.out);
    assert_eq!(r["verdict"], "failed");
    assert_eq!(r["parquet"], Value::Null);
    assert_eq!(r["shards_failed"], 2);
    assert_eq!(r["shards_done"], 2);
    let failures = r["failures"].as_array().unwrap();
    let failed: BTreeMap<&str, &Value> = failures
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f))
        .collect();
    let names: Vec<&str> = failed.keys().copied().collect();
    assert_eq!(names, ["data-000001.tar", "data-000002.tar"], "{r:#}");
    let f1 = failed["data-000001.tar"];
    assert_eq!(f1["attempts"], 3, "retried up to --max-attempts: {f1:#}");
    assert_eq!(f1["state"], "failed");
    assert!(
        f1["error"].as_str().unwrap().contains("injected failure"),
        "{f1:#}"
    );
    let f2 = failed["data-000002.tar"];
    assert_eq!(f2["attempts"], 1, "a corrupt shard is not retried: {f2:#}");
    let err = f2["error"].as_str().unwrap();
    assert!(err.contains("data-000002.tar"), "{err}");
    assert!(
        err.contains(&format!("byte offset {offset}")),
        "the error names the offset {offset}: {err}"
    );
    for name in ["data-000000.tar", "data-000003.tar"] {
        let e = shard_entry(&r, name);
        assert_eq!(e["state"], "done", "{e:#}");
        assert_eq!(e["counts"]["json_files"], 20, "{e:#}");
        assert_eq!(e["counts"]["rows"], 18, "{e:#}");
    }
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("data-000001.tar") && problems.contains("data-000002.tar"),
        "{problems}"
    );

    // Fix the inputs and run again: the finished shards are kept.
    std::fs::write(&shards[2], &original2).unwrap();
    let p = s.run("run-fixed", &out, &["--workers", "2"]);
    assert_success(s.wait_exit(p, secs(30)), "the re-run");
    let r = report(&s.out);
    assert_eq!(r["shards_recovered"], 2);
    for (name, recovered) in [
        ("data-000000.tar", true),
        ("data-000001.tar", false),
        ("data-000002.tar", false),
        ("data-000003.tar", true),
    ] {
        assert_eq!(shard_entry(&r, name)["recovered"], recovered, "{name}");
    }
    assert_matches_seed(&s.out, &shards);
}

/// Case 6: SIGTERM to a worker inside a shard: it gives the shard back at once
/// (well before the 30 s lease timeout), the abandoned attempt is not
/// counted, and the worker exits 0.
#[test]
fn sigterm_of_a_worker_gives_its_shard_back_at_once() {
    let mut s = Scene::new();
    let shards = slow_shards(&s.input.clone(), 3, 8601);
    let c = s.coordinator(
        "coordinator",
        &["--lease-timeout", "30s", "--heartbeat-interval", "100ms"],
    );
    let v = s.worker("wV", None);
    let w = s.worker("wW", None);
    let mut held = String::new();
    s.wait_until("wV is caught inside a shard", secs(30), |s| {
        match s.status().and_then(|st| lease_of(&st, "wV")) {
            Some((shard, _)) if freeze_inside(s.pid(v), &s.out, &shard) => {
                held = shard;
                true
            }
            _ => false,
        }
    });
    // Pending while it is stopped, delivered as soon as it runs again.
    s.signal(v, libc::SIGTERM);
    s.signal(v, libc::SIGCONT);
    let t = Instant::now();
    let st = s.wait_exit(v, secs(10));
    assert_eq!(
        st.code(),
        Some(0),
        "a worker stopped by SIGTERM exits 0 ({st:?})"
    );
    assert_success(s.wait_exit(c, secs(25)), "the coordinator");
    let took = t.elapsed();
    assert!(
        took < secs(15),
        "the job took {took:?} after the SIGTERM: the shard waited for the lease timeout"
    );
    assert_success(s.wait_exit(w, secs(10)), "wW");

    assert!(
        s.log(v).contains("giving the shard back"),
        "wV gave its shard back"
    );
    assert!(
        s.log(c).lines().any(|l| l.contains("worker gave the shard back")
            && l.contains("the worker shut down")),
        "{}",
        s.log(c)
    );
    let r = report(&s.out);
    let e = shard_entry(&r, &held);
    assert_eq!(e["worker"], "wW", "{e:#}");
    assert_eq!(
        e["attempts"], 1,
        "an abandoned attempt is not counted: {e:#}"
    );
    assert!(
        !s.log(c).contains("lease expired"),
        "nothing waited for a lease timeout"
    );
    assert_matches_seed(&s.out, &shards);
}

/// Sets a file's modification time `ahead` into the future.
fn touch_ahead(path: &Path, ahead: Duration) {
    let f = File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() + ahead)
        .unwrap();
}

/// Rewrites a shard with the same members (names and sizes) but different
/// image bytes: only its modification time tells the change by metadata.
fn rewrite_images(shard: &Path) {
    let mut members = Vec::new();
    {
        let mut ar = tar::Archive::new(File::open(shard).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            if !name.ends_with(".json") {
                for b in data.iter_mut().skip(8) {
                    *b ^= 0xff;
                }
            }
            members.push((name, data));
        }
    }
    let size = std::fs::metadata(shard).unwrap().len();
    let mut b = tar::Builder::new(File::create(shard).unwrap());
    for (name, data) in &members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().sync_all().unwrap();
    assert_eq!(
        std::fs::metadata(shard).unwrap().len(),
        size,
        "same size: only the mtime differs"
    );
}

/// Case 7: An input shard changed after it was committed is redone on the next
/// run (here: same member names and sizes, other bytes, newer mtime); the
/// others are recovered, and the output is the seed's for the new inputs.
#[test]
fn a_shard_changed_after_commit_is_redone_on_resume() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 3, 20, 8701);
    let out = s.out.clone();
    let p = s.run("run-1", &out, &["--workers", "2"]);
    assert_success(s.wait_exit(p, secs(30)), "the first run");
    assert_matches_seed(&s.out, &shards);
    let before = committed(&s.out);

    rewrite_images(&shards[1]);
    touch_ahead(&shards[1], secs(5));
    let p = s.run("run-2", &out, &["--workers", "2"]);
    assert_success(s.wait_exit(p, secs(30)), "the second run");
    let r = report(&s.out);
    assert_eq!(r["shards_recovered"], 2, "{r:#}");
    assert_eq!(shard_entry(&r, "data-000000.tar")["recovered"], true);
    assert_eq!(shard_entry(&r, "data-000001.tar")["recovered"], false);
    assert_eq!(shard_entry(&r, "data-000002.tar")["recovered"], true);
    let after = committed(&s.out);
    assert!(after["data-000000.tar"] == before["data-000000.tar"]);
    assert!(after["data-000002.tar"] == before["data-000002.tar"]);
    assert!(
        after["data-000001.tar"] != before["data-000001.tar"],
        "shard 1 was committed anew"
    );
    assert_matches_seed(&s.out, &shards);
}

/// Case 7a: as case 7, but the replaced shard keeps its size and its
/// modification time (`cp new old && touch -r saved old`): the inode's
/// ctime still tells the change, and the shard is redone.
#[test]
fn a_shard_replaced_with_the_same_size_and_mtime_is_redone() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 2, 20, 8703);
    let out = s.out.clone();
    let p = s.run("run-1", &out, &["--workers", "1"]);
    assert_success(s.wait_exit(p, secs(30)), "the first run");
    let before = committed(&s.out);
    let mtime = std::fs::metadata(&shards[1]).unwrap().modified().unwrap();
    let size = std::fs::metadata(&shards[1]).unwrap().len();
    // ctime has a clock tick of resolution: make sure it moves.
    std::thread::sleep(Duration::from_millis(20));
    rewrite_images(&shards[1]);
    File::options()
        .write(true)
        .open(&shards[1])
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let m = std::fs::metadata(&shards[1]).unwrap();
    assert_eq!((m.len(), m.modified().unwrap()), (size, mtime));
    let p = s.run("run-2", &out, &["--workers", "1"]);
    assert_success(s.wait_exit(p, secs(30)), "the second run");
    let r = report(&s.out);
    assert_eq!(
        shard_entry(&r, "data-000000.tar")["recovered"],
        true,
        "{r:#}"
    );
    assert_eq!(
        shard_entry(&r, "data-000001.tar")["recovered"],
        false,
        "{r:#}"
    );
    assert!(committed(&s.out)["data-000001.tar"] != before["data-000001.tar"]);
    assert_matches_seed(&s.out, &shards);
}

/// Case 7b: as case 7, with the shard regenerated from another seed (other member
/// names): the output must be the seed's for the new inputs, so the files
/// the old version of the shard extracted must not stay in data/.
#[test]
fn a_shard_regenerated_with_other_names_leaves_no_stale_files() {
    let mut s = Scene::new();
    let input = s.input.clone();
    let shards = make_shards(&input, 3, 20, 8702);
    let out = s.out.clone();
    let p = s.run("run-1", &out, &["--workers", "2"]);
    assert_success(s.wait_exit(p, secs(30)), "the first run");
    assert_matches_seed(&s.out, &shards);

    let other = s.dir().join("other");
    make_shards(&other, 3, 20, 9999);
    std::fs::copy(other.join("data-000001.tar"), &shards[1]).unwrap();
    touch_ahead(&shards[1], secs(5));
    let p = s.run("run-2", &out, &["--workers", "2"]);
    assert_success(s.wait_exit(p, secs(30)), "the second run");
    let r = report(&s.out);
    assert_eq!(r["shards_recovered"], 2, "{r:#}");
    assert_eq!(shard_entry(&r, "data-000001.tar")["recovered"], false);
    let v = run_raw(&["verify", path_str(&s.out)], &[]);
    assert!(
        v.status.success(),
        "verify disagrees with the run's verdict\n{}",
        explain(&["verify"], &v)
    );
    assert_matches_seed(&s.out, &shards);
}

/// Case 8: Workers started before their coordinator keep retrying, then do
/// the job. (Whoever takes shard 0 sits on it for 3 s, so the job cannot end
/// before both have reached the coordinator: a worker still in its retry
/// backoff when a job ends is never told, see the report of this suite.)
#[test]
fn workers_started_before_the_coordinator_wait_and_finish() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 4, 20, 8801);
    let hold = Some("stall:data-000000.tar:3s");
    let w1 = s.worker("early-1", hold);
    let w2 = s.worker("early-2", hold);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        s.running(w1) && s.running(w2),
        "workers must wait for the coordinator"
    );
    let c = s.coordinator(
        "coordinator",
        &["--lease-timeout", "10s", "--heartbeat-interval", "200ms"],
    );
    assert_success(s.wait_exit(c, secs(30)), "the coordinator");
    assert_success(s.wait_exit(w1, secs(10)), "early-1");
    assert_success(s.wait_exit(w2, secs(10)), "early-2");
    for w in [w1, w2] {
        let log = s.log(w);
        assert!(log.contains("coordinator unreachable; retrying"), "{log}");
        assert!(log.contains("reconnected to the coordinator"), "{log}");
        assert!(
            log.contains("the coordinator says the job is done"),
            "{log}"
        );
    }
    let r = report(&s.out);
    for sh in r["shards"].as_array().unwrap() {
        assert_eq!(sh["attempts"], 1, "{sh:#}");
        let w = sh["worker"].as_str().unwrap();
        assert!(w == "early-1" || w == "early-2", "{sh:#}");
    }
    assert_matches_seed(&s.out, &shards);
}

/// Case 8c: A worker that is still in its retry backoff when the job ends
/// (here: it started 3.3 s before the coordinator, so its next try comes
/// about 3 s later, while another worker does the one-shard job at once)
/// must still learn that the job is done and exit 0, as a Kubernetes worker
/// pod must; the coordinator stops as soon as the workers it knows were
/// told, so this one retries until --connect-timeout and fails.
#[test]
fn a_worker_in_backoff_when_the_job_ends_still_exits_0() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 1, 20, 8803);
    let late = s.worker("late", None);
    std::thread::sleep(Duration::from_millis(3300));
    let c = s.coordinator(
        "coordinator",
        &["--lease-timeout", "5s", "--heartbeat-interval", "200ms"],
    );
    let w = s.worker("prompt", None);
    assert_success(s.wait_exit(c, secs(30)), "the coordinator");
    assert_success(s.wait_exit(w, secs(10)), "the prompt worker");
    assert_matches_seed(&s.out, &shards);
    // The job is done; the late worker should hear it (the product's grace
    // period is 10 s, its backoff at most 3 s) instead of waiting 30 s.
    let st = s.wait_exit(late, secs(15));
    assert_success(st, "the late worker");
}

/// Case 8b: ...but not forever: after `--connect-timeout` a worker gives up with
/// an error that names the coordinator.
#[test]
fn a_worker_gives_up_after_the_connect_timeout() {
    let mut s = Scene::new();
    let url = s.url();
    let args: Vec<String> = [
        "worker",
        "--coordinator",
        url.as_str(),
        "--connect-timeout",
        "1s",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let t = Instant::now();
    let w = s.spawn("worker", &args, &[("SHARDPREP_TOKEN", TOKEN)]);
    let st = s.wait_exit(w, secs(15));
    assert!(
        !st.success(),
        "a worker that never reached its coordinator must fail"
    );
    assert!(t.elapsed() < secs(8), "gave up after {:?}", t.elapsed());
    let log = s.log(w);
    assert!(
        log.contains("could not reach the coordinator") && log.contains(&url),
        "{log}"
    );
}

/// Case 9: `run` restarts a worker process that dies (SIGKILL inside a shard);
/// the dead worker's shard comes back after the lease timeout.
#[test]
fn run_restarts_a_worker_killed_inside_a_shard() {
    let mut s = Scene::new();
    let shards = slow_shards(&s.input.clone(), 2, 8901);
    let out = s.out.clone();
    let p = s.run(
        "run",
        &out,
        &[
            "--workers",
            "1",
            "--lease-timeout",
            "1s",
            "--heartbeat-interval",
            "200ms",
        ],
    );
    let run_pid = s.pid(p);
    // Catch the worker inside shard 0 (stopped there), then kill it.
    let mut worker = 0;
    s.wait_until("the worker is caught inside shard 0", secs(30), |_| {
        let kids = children_of(run_pid);
        assert!(kids.len() <= 1, "one worker process: {kids:?}");
        match kids.first() {
            Some(&pid) if freeze_inside(pid, &out, "data-000000.tar") => {
                worker = pid;
                true
            }
            _ => false,
        }
    });
    // SAFETY: kill(2) on the worker process `run` started, stopped just above.
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGKILL) }, 0);

    assert_success(s.wait_exit(p, secs(40)), "run");
    let log = s.log(p);
    assert!(
        log.contains("a worker process died; starting a new one"),
        "run restarted the worker"
    );
    let r = report(&s.out);
    let s0 = shard_entry(&r, "data-000000.tar");
    assert_eq!(s0["attempts"], 2, "{s0:#}");
    assert_eq!(committed(&s.out).len(), 2);
    assert_matches_seed(&s.out, &shards);
}

/// A worker whose shard thread hangs (the hang hook: heartbeats go on) loses
/// the shard to the stall timeout; when the job is done it is told so and
/// must exit like any other worker, not stay alive forever (the runtime
/// must not wait for the hung thread; fixed in e83afae).
#[test]
fn a_worker_with_a_hung_shard_thread_still_exits_when_the_job_is_done() {
    let mut s = Scene::new();
    let shards = make_shards(&s.input.clone(), 2, 20, 9001);
    let c = s.coordinator(
        "coordinator",
        // Heartbeats slower than the stall timeout: wB's lease request
        // notices the stall and takes the shard (see case 4b).
        &[
            "--stall-timeout",
            "1s",
            "--lease-timeout",
            "10s",
            "--heartbeat-interval",
            "3s",
            "--worker-grace",
            "5s",
        ],
    );
    let h = s.worker("wH", Some("hang:data-000000.tar"));
    s.wait_until("wH holds shard 0", secs(20), |s| {
        s.status()
            .and_then(|st| lease_of(&st, "wH"))
            .is_some_and(|(n, _)| n == "data-000000.tar")
    });
    let b = s.worker("wB", None);
    assert_success(s.wait_exit(c, secs(40)), "the coordinator");
    assert_success(s.wait_exit(b, secs(10)), "wB");
    assert_matches_seed(&s.out, &shards);
    assert!(
        s.log(h)
            .contains("the coordinator says the job is done; exiting"),
        "wH was told"
    );
    let st = s.wait_exit(h, secs(5));
    assert_success(st, "wH");
}

/// The files a committed shard wrote, from its file list: (path under data/, size).
fn listed_files(out: &Path, shard: &str) -> Vec<(PathBuf, u64)> {
    let layout = shardprep_core::layout::OutputLayout::new(out);
    let list = std::fs::read(layout.files_list_path(shard)).unwrap();
    shardprep_core::durability::parse_files_list(&list)
        .into_iter()
        .map(|f| {
            let rel = String::from_utf8(f.rel.to_vec()).unwrap();
            (out.join("data").join(rel), f.size.expect("size recorded"))
        })
        .collect()
}

#[test]
fn damaged_files_are_found_and_their_shards_redone() {
    // With the default --data-sync none, a power loss can take files of shards
    // already committed; a user or a tool can delete or truncate them too. A
    // re-run checks every committed shard's files (present, with the size
    // written) and redoes exactly the damaged shards, on any boot.
    let tmp = tempdir();
    let shards = make_shards(&tmp.path().join("shards"), 3, 15, 7401);
    let out = tmp.path().join("out");
    let shards_dir = tmp.path().join("shards");
    let args = [
        "run",
        "--input",
        path_str(&shards_dir),
        "--output",
        path_str(&out),
        "--workers",
        "2",
    ];
    run_ok(&args);
    let damage = |out: &Path| {
        let first = listed_files(out, "data-000000.tar");
        let second = listed_files(out, "data-000001.tar");
        assert!(first.len() > 20 && second.len() > 20);
        for (p, size) in first.iter().chain(&second) {
            assert_eq!(
                std::fs::metadata(p).unwrap().len(),
                *size,
                "{}",
                p.display()
            );
        }
        // What a power loss leaves of unflushed new files: gone, or empty.
        std::fs::remove_file(&first[3].0).unwrap();
        let (txt, _) = second
            .iter()
            .find(|(p, size)| p.extension().is_some_and(|e| e == "txt") && *size > 0)
            .unwrap();
        std::fs::write(txt, b"").unwrap();
    };

    // Same boot: the damage is seen by a stat of each listed file and repaired.
    damage(&out);
    let o = run_ok(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("redoing the shard").count(), 2, "{err}");
    let r = report(&out);
    assert_eq!(r["verdict"], "ok");
    assert_eq!(r["shards_recovered"], 1, "only the undamaged shard is kept");
    assert_matches_seed(&out, &shards);

    // A later boot: the same.
    damage(&out);
    let o = run_raw(&args, &[("SHARDPREP_BOOT_ID", "a-later-boot")]);
    assert!(o.status.success(), "{}", explain(&args, &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("redoing the shard").count(), 2, "{err}");
    assert_eq!(report(&out)["verdict"], "ok");
    assert_matches_seed(&out, &shards);

    // Nothing damaged: nothing redone.
    let o = run_ok(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already complete") && !err.contains("redoing"),
        "{err}"
    );
}

#[test]
fn a_second_job_on_the_same_output_is_refused_naming_the_first() {
    // A coordinator waiting for workers holds OUT; a `run` on the same OUT
    // must refuse at once (exit 2) and name the holder, and must not touch
    // the first job's files. Once the first is gone, the output is free.
    let tmp = tempdir();
    let shards_dir = tmp.path().join("shards");
    let shards = make_shards(&shards_dir, 2, 10, 7501);
    let out = tmp.path().join("out");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let log = tmp.path().join("coord.log");
    let mut coord = Proc::spawn_logged(
        "coordinator",
        command(&[
            "coordinator",
            "--input",
            path_str(&shards_dir),
            "--output",
            path_str(&out),
            "--listen",
            &listen,
        ])
        .env("SHARDPREP_TOKEN", "a-test-token"),
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !out.join(".shardprep/lock").exists()
        || std::fs::read_to_string(out.join(".shardprep/lock"))
            .unwrap_or_default()
            .is_empty()
    {
        assert!(
            Instant::now() < deadline && coord.running(),
            "{}",
            coord.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = [
        "run",
        "--input",
        path_str(&shards_dir),
        "--output",
        path_str(&out),
    ];
    let o = run_raw(&args, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&args, &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another job is using this output")
            && err.contains(&format!("\"pid\":{}", coord.pid())),
        "{err}"
    );
    assert!(
        coord.running(),
        "the first job was disturbed:\n{}",
        coord.log()
    );
    coord.stop();
    run_ok(&args);
    assert_matches_seed(&out, &shards);
}

#[test]
fn collisions_of_completed_shards_are_reported_even_when_a_shard_failed() {
    // A user fixing a failed shard needs every problem at once: the names two
    // completed shards share are listed although nothing was merged.
    let tmp = tempdir();
    let dir = tmp.path().join("shards");
    let shards = make_shards(&dir, 1, 12, 7601);
    std::fs::copy(&shards[0], dir.join("data-000009.tar")).unwrap();
    std::fs::write(dir.join("data-000005.tar"), vec![b'x'; 4096]).unwrap();
    let out = tmp.path().join("out");
    let args = ["run", "--input", path_str(&dir), "--output", path_str(&out)];
    let o = run_raw(&args, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&args, &o));
    let r = report(&out);
    assert_eq!(r["shards_failed"], 1, "{r:#}");
    assert!(r["duplicate_filenames"].as_u64().unwrap() > 0, "{r:#}");
    let listed = &r["duplicate_filenames_listed"][0]["shards"];
    assert_eq!(listed[0], "data-000000.tar", "{r:#}");
    assert_eq!(listed[1], "data-000009.tar", "{r:#}");
}

/// The index formats survive the coordinator's death: `--index-format` with
/// all four, the coordinator SIGKILLed while energon's `index.sqlite` is being
/// written beside the walk (two shards committed, a third being processed),
/// then restarted. The job ends with every format as a clean run writes it
/// (energon's rows, `.info.json`, `split.yaml`, `index.uuid`, each `.tar.idx`
/// and DALI `.idx`, wids' JSON), `verify --deep` agrees, and the dead
/// coordinator's unfinished `index.sqlite` is gone.
#[test]
fn the_index_formats_survive_a_sigkill_of_the_coordinator() {
    let mut s = Scene::new();
    make_shards(&s.input.clone(), 5, 20, 8301);
    let formats = [
        "--mode",
        "index",
        "--index-format",
        "webshart,energon,dali,wids",
    ];
    let mut flags = vec!["--lease-timeout", "5s", "--heartbeat-interval", "200ms"];
    flags.extend(formats);
    let c1 = s.coordinator("coordinator-1", &flags);
    let out = s.out.clone();
    let w = s.worker("w", Some("stall:data-000002.tar:1s"));
    s.wait_until(
        "two shards committed, the third processed",
        secs(20),
        |_| committed(&out).len() == 2 && processed_not_committed(&out, "data-000002.tar"),
    );
    s.signal(c1, libc::SIGKILL);
    assert_eq!(s.wait_exit(c1, secs(5)).signal(), Some(libc::SIGKILL));
    let c2 = s.coordinator("coordinator-2", &flags);
    assert_success(s.wait_exit(c2, secs(30)), "the restarted coordinator");
    assert_success(s.wait_exit(w, secs(10)), "the worker");

    let verify = run_raw(&["verify", path_str(&out), "--deep"], &[]);
    assert!(verify.status.success(), "{}", explain(&["verify"], &verify));
    let clean = s.dir().join("clean");
    run_job(&s.input, &clean, &formats);
    let formats_files = |root: &Path| -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for dir in ["energon", "dali", "wids"] {
            for (p, bytes) in read_tree(&root.join(dir)) {
                let p = Path::new(dir).join(p);
                let bytes = match p.extension().and_then(|e| e.to_str()) {
                    Some("sqlite") => sqlite_rows(&root.join(&p)),
                    _ => bytes,
                };
                // dali.json names each .idx by its path under OUT.
                if !p.ends_with("dali.json") {
                    files.insert(p, bytes);
                }
            }
        }
        files
    };
    let (after, want) = (formats_files(&out), formats_files(&clean));
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (p, bytes) in &want {
        assert!(
            after[p] == *bytes,
            "{} differs from a clean run's",
            p.display()
        );
    }
    let left: Vec<String> = tmp_files(&out)
        .into_iter()
        .filter(|f| f.contains("sqlite"))
        .collect();
    assert!(
        left.is_empty(),
        "the dead coordinator's index.sqlite is left: {left:?}"
    );
}

/// Two shards hold the same names with other bytes (`tar xf` of both in
/// order leaves the later one's files). On two workers the earlier shard
/// can land last: here it is held back 1.5 s, so it does. The job's end
/// check finds `data/` not as the later shard's list says and redoes that
/// shard before it reports, so the first run already ends "ok" with the
/// seed's output, and `verify --deep` agrees.
#[test]
fn a_name_in_two_shards_holds_the_later_shards_file_though_the_earlier_lands_last() {
    let mut s = Scene::new();
    let first = make_shards(&s.input.clone(), 1, 12, 8901).remove(0);
    let later = s.input.join("data-000001.tar");
    same_names_other_bytes(&first, &later);
    let c = s.coordinator(
        "coordinator",
        &["--lease-timeout", "10s", "--heartbeat-interval", "200ms"],
    );
    let held = Some("delay:data-000000.tar:1500ms");
    let w1 = s.worker("w1", held);
    let w2 = s.worker("w2", held);
    assert_success(s.wait_exit(c, secs(60)), "the coordinator");
    assert_success(s.wait_exit(w1, secs(10)), "w1");
    assert_success(s.wait_exit(w2, secs(10)), "w2");
    let r = report(&s.out);
    assert_eq!(r["verdict"], "ok", "{r:#}");
    let redone: Vec<&Value> = r["repairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["action"] == "redo_shard")
        .collect();
    assert_eq!(redone.len(), 1, "{r:#}");
    assert_eq!(redone[0]["subject"], "data-000001.tar", "{r:#}");
    assert!(
        s.log(c).contains("redoing those shards one at a time"),
        "{}",
        s.log(c)
    );
    // The report counts per shard (both wrote a caption for the image
    // without a row), so only data/ and the table are the seed's.
    assert_data_matches_seed(&s.out, &[first, later]);
    let args = ["verify", "--deep", path_str(&s.out)];
    let v = run_raw(&args, &[]);
    assert!(v.status.success(), "{}", explain(&args, &v));
}
