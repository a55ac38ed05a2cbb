//! The whole DALLE-3 preparation end to end (issue: core).

use std::process::Stdio;
use std::time::Duration;

use crate::util::*;

#[test]
fn run_with_two_workers_matches_the_seed() {
    let tmp = tempdir();
    let shards = make_shards(&tmp.path().join("shards"), 4, 30, 7001);
    let out = tmp.path().join("dalle3");
    let o = run_ok(&[
        "run",
        "--input",
        path_str(&tmp.path().join("shards")),
        "--output",
        out.to_str().unwrap(),
        "--workers",
        "2",
    ]);
    assert_matches_seed(&out, &shards);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("verdict            OK"), "{stdout}");

    // Report: per-shard counts and the SimpleTuner entry.
    let r = report(&out);
    assert_eq!(r["shards_total"], 4);
    assert_eq!(r["shards"].as_array().unwrap().len(), 4);
    let s0 = &r["shards"][0]["counts"];
    assert_eq!(s0["json_files"], 30);
    assert_eq!(s0["images"], 30);
    // Every 7th JSON lacks width: 30 - 4 = 26 samples.
    assert_eq!(s0["json_with_width"], 26);
    assert_eq!(s0["rows"], 26);
    assert_eq!(s0["captions_written"], 26);
    let workers: std::collections::BTreeSet<_> = r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["worker"].as_str().unwrap().to_string())
        .collect();
    assert!(!workers.is_empty());

    let b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("multidatabackend.json")).unwrap()).unwrap();
    let e = &b[0];
    let abs_out = std::path::absolute(&out).unwrap();
    assert_eq!(e["id"], "dalle3");
    assert_eq!(e["type"], "local");
    assert_eq!(
        e["instance_data_dir"],
        abs_out.join("data").to_str().unwrap()
    );
    assert_eq!(e["caption_strategy"], "textfile");
    assert_eq!(e["metadata_backend"], "parquet");
    assert_eq!(e["resolution"], 1.0);
    assert_eq!(e["resolution_type"], "area");
    assert_eq!(
        e["parquet"]["path"],
        abs_out.join("dalle3.parquet").to_str().unwrap()
    );
    assert_eq!(e["parquet"]["identifier_includes_extension"], true);
}

#[test]
fn parquet_is_byte_identical_across_runs_and_worker_counts() {
    let tmp = tempdir();
    make_shards(&tmp.path().join("shards"), 3, 40, 7002);
    let input = tmp.path().join("shards");
    let mut parquets = Vec::new();
    for (i, workers) in ["1", "3"].iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        run_ok(&[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--workers",
            workers,
        ]);
        parquets.push(std::fs::read(out.join("dalle3.parquet")).unwrap());
    }
    assert!(
        parquets[0] == parquets[1],
        "the parquet differs between runs"
    );
}

#[test]
fn count_mismatch_fails_with_the_numbers_and_still_reports() {
    let tmp = tempdir();
    make_shards(&tmp.path().join("shards"), 2, 10, 7003);
    let out = tmp.path().join("out");
    let shards_dir = tmp.path().join("shards");
    let args = [
        "run",
        "--input",
        path_str(&shards_dir),
        "--output",
        out.to_str().unwrap(),
        "--workers",
        "2",
        "--expect-json",
        "1161957",
    ];
    let o = run_raw(&args, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&args, &o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("expected 1161957 JSON files, found 20"),
        "{}",
        explain(&args, &o)
    );
    let r = report(&out);
    assert_eq!(r["verdict"], "failed");
    assert_eq!(r["expected_json"], 1161957);
    assert_eq!(r["found_json"], 20);

    // With the right number it verifies.
    let mut ok_args = args;
    ok_args[8] = "20";
    run_ok(&ok_args);
    assert_eq!(report(&out)["verdict"], "ok");
}

#[test]
fn coordinator_and_workers_as_separate_processes() {
    let tmp = tempdir();
    let shards = make_shards(&tmp.path().join("shards"), 5, 20, 7004);
    let out = tmp.path().join("out");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let coord = Proc::spawn(
        "coordinator",
        command(&["coordinator", "--input"])
            .arg(tmp.path().join("shards"))
            .arg("--output")
            .arg(&out)
            .args(["--listen", &listen, "--token-file"])
            .arg(&token_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut workers: Vec<_> = (0..2)
        .map(|i| {
            Proc::spawn(
                &format!("w{i}"),
                command(&[
                    "worker",
                    "--coordinator",
                    &format!("http://{listen}"),
                    "--worker-id",
                    &format!("w{i}"),
                ])
                .env("SHARDPREP_TOKEN", "s3cret-token")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            )
        })
        .collect();
    let co = coord.output(Duration::from_secs(60));
    assert!(
        co.status.success(),
        "coordinator failed: {}",
        String::from_utf8_lossy(&co.stderr)
    );
    for w in &mut workers {
        let st = w.wait_exit(Duration::from_secs(60));
        assert!(st.success(), "worker exited with {st}");
    }
    assert_matches_seed(&out, &shards);
    let r = report(&out);
    let by: std::collections::BTreeSet<_> = r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["worker"].as_str().unwrap().to_string())
        .collect();
    assert!(by.iter().all(|w| w == "w0" || w == "w1"), "{by:?}");
}

#[test]
fn finished_job_rerun_is_a_no_op() {
    let tmp = tempdir();
    make_shards(&tmp.path().join("shards"), 2, 10, 7005);
    let out = tmp.path().join("out");
    let shards_dir = tmp.path().join("shards");
    let args = [
        "run",
        "--input",
        path_str(&shards_dir),
        "--output",
        out.to_str().unwrap(),
        "--workers",
        "1",
    ];
    run_ok(&args);
    let pq = out.join("dalle3.parquet");
    let before = std::fs::metadata(&pq).unwrap().modified().unwrap();
    let report_before = std::fs::read(out.join("report.json")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let o = run_ok(&args);
    assert_eq!(
        std::fs::metadata(&pq).unwrap().modified().unwrap(),
        before,
        "the parquet was rewritten"
    );
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        report_before,
        "the report was rewritten"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already complete"),
        "{}",
        explain(&args, &o)
    );
}

#[test]
fn no_shards_is_a_clear_error() {
    let tmp = tempdir();
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let empty_dir = tmp.path().join("empty");
    let o_dir = tmp.path().join("o");
    let args = [
        "run",
        "--input",
        path_str(&empty_dir),
        "--output",
        path_str(&o_dir),
        "--workers",
        "1",
    ];
    let o = run_raw(&args, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no *.tar shards"),
        "{}",
        explain(&args, &o)
    );
}

#[test]
fn every_data_sync_mode_gives_the_same_output() {
    let tmp = tempdir();
    let shards = make_shards(&tmp.path().join("shards"), 3, 15, 7006);
    let modes: [(&[&str], &str, bool); 5] = [
        (&[], "none", false),
        (&["--data-sync", "none"], "none", false),
        (&["--data-sync", "end"], "end", false),
        (&["--no-sync-per-shard"], "end", false),
        (&["--data-sync", "shard"], "shard", true),
    ];
    for (i, (flags, name, synced)) in modes.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        run_job(&tmp.path().join("shards"), &out, flags);
        assert_matches_seed(&out, &shards);
        assert_eq!(report(&out)["data_sync"], *name, "{flags:?}");
        // Each manifest says whether its files were on disk at commit time,
        // and on which boot: what a restart needs to know what to check.
        let frags = out.join(".shardprep/fragments");
        let mut manifests = 0;
        for e in std::fs::read_dir(&frags).unwrap() {
            let p = e.unwrap().path();
            if p.to_string_lossy().ends_with(".manifest.json") {
                let m: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                assert_eq!(m["data_synced"], *synced, "{flags:?} {}", p.display());
                assert!(!m["boot_id"].as_str().unwrap().is_empty());
                manifests += 1;
            }
        }
        assert_eq!(manifests, 3);
    }
    let both = run_raw(
        &[
            "run",
            "--input",
            "x",
            "--output",
            "y",
            "--data-sync",
            "end",
            "--no-sync-per-shard",
        ],
        &[],
    );
    assert!(!both.status.success(), "conflicting flags were accepted");
}

#[test]
fn symlinked_shards_in_the_input_folder_are_read() {
    // Users link shards from a download cache into a folder; those are their files.
    let tmp = tempdir();
    let shards = make_shards(&tmp.path().join("cache"), 2, 10, 7007);
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    for s in &shards {
        std::os::unix::fs::symlink(s, input.join(s.file_name().unwrap())).unwrap();
    }
    let out = tmp.path().join("out");
    run_job(&input, &out, &[]);
    assert_matches_seed(&out, &shards);
}
