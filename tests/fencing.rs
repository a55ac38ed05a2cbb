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
    let port = free_port();
    let mut coord_args = strings(&["coordinator", "--input", path_str(&input), "--output"]);
    coord_args.extend(strings(&[path_str(&out), "--listen"]));
    coord_args.push(format!("127.0.0.1:{port}"));
    coord_args.extend(strings(&[
        "--lease-timeout",
        "2s",
        "--heartbeat-interval",
        "300ms",
        "--worker-grace",
        "2s",
    ]));
    let mut coord = spawn(tmp.path(), "coordinator", &coord_args);
    let worker = |id: &str| {
        let mut a = strings(&["worker", "--coordinator"]);
        a.push(format!("http://127.0.0.1:{port}"));
        a.extend(strings(&["--worker-id", id]));
        spawn(tmp.path(), id, &a)
    };
    let mut a = worker("paused");
    wait_until(
        "the first worker leased the shard",
        Duration::from_secs(60),
        || a.log().contains("processing shard"),
    );
    a.signal(libc::SIGSTOP);
    let mut b = worker("second");
    let status = coord.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "coordinator: {}", coord.log());
    assert!(coord.log().contains("verified") || out.join("report.json").is_file());
    a.signal(libc::SIGCONT);
    a.wait_exit(Duration::from_secs(60));
    b.wait_exit(Duration::from_secs(60));
    assert_matches_seed(&out, &shards);
    let v = verify(&out, true);
    assert!(v.status.success(), "{}", explain(&["verify", "--deep"], &v));
    assert_eq!(private_files(&out), Vec::<PathBuf>::new());
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
