//! Fencing and self-healing (issue 17), with real processes and signals: a
//! worker frozen with SIGSTOP right after it leased a shard and resumed
//! after another worker committed that shard changes no committed file; a
//! flipped byte is seen by `verify --deep` and repaired by `run --deep`.
//! Every wait is bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;

const TOKEN: &str = "fencing-suite-shared-token-5d1e8a90";

fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = command(args);
    cmd.env("RUST_LOG", "info")
        .env("SHARDPREP_TOKEN", TOKEN)
        .env("SHARDPREP_CONNECT_TIMEOUT", "30s");
    Proc::spawn_logged(name, &mut cmd, &log)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Polls `cond` every 5 ms; panics after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Files under `data/` with a worker's private temporary name.
fn private_files(out: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(out.join("data"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(".sp"))
                .collect()
        })
        .unwrap_or_default()
}

fn verify(out: &Path, deep: bool) -> std::process::Output {
    let mut args = vec!["verify", path_str(out)];
    if deep {
        args.push("--deep");
    }
    run_raw(&args, &[])
}

#[test]
fn a_worker_resumed_after_its_lease_changes_no_committed_file() {
    let tmp = tempdir();
    let input = tmp.path().join("shards");
    let out = tmp.path().join("dalle3");
    // One shard, big enough that the frozen worker is caught inside it.
    let shards = make_shards(&input, 1, 3000, 17);
    let mut a = freeze_a_worker_and_finish_with_another(tmp.path(), &input, &out);
    a.signal(libc::SIGCONT);
    a.wait_exit(Duration::from_secs(60));
    assert_matches_seed(&out, &shards);
    let v = verify(&out, true);
    assert!(v.status.success(), "{}", explain(&["verify", "--deep"], &v));
    assert_eq!(private_files(&out), Vec::<PathBuf>::new());
}

/// Starts a coordinator on the one shard in `input` and a worker; once the
/// worker holds the shard it is frozen (SIGSTOP) and a second worker
/// finishes the job. Returns the frozen worker; the others have exited.
fn freeze_a_worker_and_finish_with_another(dir: &Path, input: &Path, out: &Path) -> Proc {
    let (mut coord, url) = coordinator(dir, input, out);
    let mut a = worker(dir, &url, "paused", &[]);
    wait_until(
        "the first worker leased the shard",
        Duration::from_secs(60),
        || a.log().contains("processing shard"),
    );
    a.signal(libc::SIGSTOP);
    let mut b = worker(dir, &url, "second", &[]);
    let status = coord.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "coordinator: {}", coord.log());
    assert!(coord.log().contains("verified") || out.join("report.json").is_file());
    b.wait_exit(Duration::from_secs(60));
    a
}

/// The first image file under `data/` (sorted), for tampering.
fn first_image(out: &Path) -> PathBuf {
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    imgs.sort();
    imgs.into_iter().next().expect("an image in data/")
}

#[test]
fn a_flipped_byte_is_seen_by_verify_deep_and_repaired_by_run_deep() {
    let tmp = tempdir();
    let input = tmp.path().join("shards");
    let out = tmp.path().join("dalle3");
    let shards = make_shards(&input, 2, 30, 23);
    run_job(&input, &out, &[]);
    let img = first_image(&out);
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&img, &bytes).unwrap();
    assert!(
        verify(&out, false).status.success(),
        "same size: a plain verify passes"
    );
    let v = verify(&out, true);
    assert!(
        !v.status.success(),
        "verify --deep must see the flipped byte"
    );
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("checksum"),
        "{}",
        explain(&["verify", "--deep"], &v)
    );
    run_job(&input, &out, &["--deep"]);
    let v = verify(&out, true);
    assert!(v.status.success(), "{}", explain(&["verify", "--deep"], &v));
    assert_matches_seed(&out, &shards);
}

/// Starts a coordinator on a free port with a 2 s lease; returns it and its URL.
fn coordinator(dir: &Path, input: &Path, out: &Path) -> (Proc, String) {
    let port = free_port();
    let mut args = strings(&["coordinator", "--input", path_str(input), "--output"]);
    args.extend(strings(&[path_str(out), "--listen"]));
    args.push(format!("127.0.0.1:{port}"));
    args.extend(strings(&[
        "--lease-timeout",
        "2s",
        "--heartbeat-interval",
        "300ms",
        "--worker-grace",
        "2s",
    ]));
    (
        spawn(dir, "coordinator", &args),
        format!("http://127.0.0.1:{port}"),
    )
}

fn worker(dir: &Path, url: &str, id: &str, extra: &[&str]) -> Proc {
    let mut a = strings(&["worker", "--coordinator", url, "--worker-id", id]);
    a.extend(strings(extra));
    spawn(dir, id, &a)
}

/// Cut off from the coordinator (SIGSTOP of the coordinator: its socket
/// stays open, so every request just waits), a worker stops its shard at its
/// own lease deadline, long before any request timeout, and writes nothing
/// more; once the coordinator runs again the job ends verified.
#[test]
fn a_worker_cut_off_from_the_coordinator_stops_at_its_lease_deadline() {
    let tmp = tempdir();
    let input = tmp.path().join("shards");
    let out = tmp.path().join("dalle3");
    let shards = make_shards(&input, 2, 40, 23);
    let (mut coord, url) = coordinator(tmp.path(), &input, &out);
    // The hang fault keeps the shard open (heartbeating) until the lease ends.
    let mut w = worker(
        tmp.path(),
        &url,
        "cut",
        &["--fault", "hang:data-000000.tar"],
    );
    wait_until("the worker leased shard 0", Duration::from_secs(60), || {
        w.log().contains("processing shard")
    });
    std::thread::sleep(Duration::from_millis(500));
    coord.signal(libc::SIGSTOP);
    let cut = Instant::now();
    wait_until(
        "the worker stopped at its own lease deadline",
        Duration::from_secs(20),
        || {
            w.log()
                .contains("no heartbeat got through before the lease deadline")
        },
    );
    // 0.8 × 2 s after the last acknowledged heartbeat: well before the 60 s
    // request timeout that stopped it before fencing.
    assert!(cut.elapsed() < Duration::from_secs(10), "{}", w.log());
    // Its hang fault would hold the shard again: retire it, let another finish.
    w.signal(libc::SIGKILL);
    w.wait_exit(Duration::from_secs(60));
    coord.signal(libc::SIGCONT);
    let mut other = worker(tmp.path(), &url, "other", &[]);
    let status = coord.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "coordinator: {}", coord.log());
    other.wait_exit(Duration::from_secs(60));
    assert_matches_seed(&out, &shards);
    assert!(verify(&out, true).status.success());
    assert_eq!(private_files(&out), Vec::<PathBuf>::new());
}

/// As the SIGSTOP test, with 400 KiB images (each written by the streaming
/// path, not the writer threads), and the resumed worker killed a few ms
/// after SIGCONT, while it may be publishing: no committed file changes.
#[test]
fn a_big_image_worker_resumed_then_killed_changes_no_committed_file() {
    let tmp = tempdir();
    let input = tmp.path().join("shards");
    let out = tmp.path().join("dalle3");
    let shards = shardprep_fixtures::generate(
        &input,
        &shardprep_fixtures::GenOptions {
            shards: 1,
            samples_per_shard: 60,
            image_bytes: 400 * 1024,
            seed: 29,
            no_width_every: 7,
            ..shardprep_fixtures::GenOptions::default()
        },
    )
    .expect("generate shards");
    let mut a = freeze_a_worker_and_finish_with_another(tmp.path(), &input, &out);
    let before = verify(&out, true);
    assert!(
        before.status.success(),
        "{}",
        explain(&["verify", "--deep"], &before)
    );
    a.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(3));
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(60));
    assert_matches_seed(&out, &shards);
    let v = verify(&out, true);
    assert!(v.status.success(), "{}", explain(&["verify", "--deep"], &v));
}
