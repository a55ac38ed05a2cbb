//! What a trainer does to an output after shardprep: writes its caches into
//! `data/`, mounts `OUT` elsewhere, reads every path of the entry. `verify`
//! and a re-run of `run` must agree about such a folder, and every path in
//! `multidatabackend.json` must be usable by the trainer (issue 16).
//!
//! Self-contained on purpose (its own command helper, which clears the
//! caller's `SHARDPREP_*` variables), so it does not lean on `util`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use shardprep_fixtures::{GenOptions, generate};

/// Runs the binary in `cwd` with a clean `SHARDPREP_*` environment.
fn shardprep(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardprep"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHARDPREP_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("start shardprep")
}

fn text(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = shardprep(cwd, args);
    let t = text(&o);
    assert!(o.status.success(), "shardprep {}\n{t}", args.join(" "));
    t
}

/// A temp dir with three small DALLE-3-style shards in `shards/`.
fn scene(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("shardprep-training-")
        .tempdir()
        .expect("temp dir");
    generate(
        &tmp.path().join("shards"),
        &GenOptions {
            shards: 3,
            samples_per_shard: 10,
            image_bytes: 700,
            seed,
            no_width_every: 7,
            ..GenOptions::default()
        },
    )
    .expect("generate shards");
    let root = tmp.path().to_path_buf();
    (tmp, root)
}

fn entry(out: &Path) -> Value {
    let bytes = std::fs::read(out.join("multidatabackend.json")).expect("entry");
    let v: Value = serde_json::from_slice(&bytes).expect("entry JSON");
    v[0].clone()
}

/// What SimpleTuner leaves in `data/` after its data-backend setup.
fn write_trainer_caches(data: &Path) {
    std::fs::write(data.join("aspect_ratio_bucket_indices_dalle3.json"), b"{}").unwrap();
    std::fs::write(data.join("aspect_ratio_bucket_metadata_dalle3.json"), b"{}").unwrap();
}

#[test]
fn verify_passes_after_the_trainer_writes_into_data_and_agrees_with_a_rerun() {
    let (_tmp, root) = scene(16_001);
    let run = [
        "run",
        "--input",
        "shards",
        "--output",
        "out",
        "--workers",
        "2",
    ];
    ok(&root, &run);
    let json_members = {
        let r: Value =
            serde_json::from_slice(&std::fs::read(root.join("out/report.json")).unwrap()).unwrap();
        r["found_json"].as_u64().unwrap()
    };
    write_trainer_caches(&root.join("out/data"));
    let expect = json_members.to_string();

    let v = ok(&root, &["verify", "out", "--expect-json", &expect]);
    assert!(!v.contains("duplicate names"), "{v}");
    assert!(
        v.contains(&format!("data/ holds {json_members} *.json files")),
        "verify must count what the shards wrote, not the trainer's files\n{v}"
    );
    assert!(
        v.contains("2 foreign files")
            && v.contains("aspect_ratio_bucket_indices_dalle3.json")
            && v.contains("aspect_ratio_bucket_metadata_dalle3.json"),
        "verify must name the files no shard wrote\n{v}"
    );
    let j = shardprep(&root, &["verify", "out", "--json"]);
    let j: Value = serde_json::from_slice(&j.stdout).expect("verify --json");
    assert_eq!(j["foreign_files_total"], 2, "{j:#}");

    // A re-run with the same flags: complete, nothing redone, and its
    // summary says the shards came from the earlier run (it said 0).
    let t = ok(&root, &run);
    assert!(t.contains("already complete and verified"), "{t}");
    assert!(t.contains("(3 from an earlier run)"), "{t}");

    // Both see the same damage, naming it: a JSON the shards wrote is gone.
    // verify fails naming it; a re-run redoes the shard it came from, and
    // then both agree again that the folder is whole.
    let gone = std::fs::read_dir(root.join("out/data"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".json") && !n.starts_with("aspect_ratio_bucket"))
        .expect("a JSON member");
    std::fs::remove_file(root.join("out/data").join(&gone)).unwrap();
    let v = shardprep(&root, &["verify", "out"]);
    assert!(!v.status.success(), "{}", text(&v));
    assert!(
        text(&v).contains(&gone),
        "the missing file is named\n{}",
        text(&v)
    );
    let r = ok(&root, &run);
    assert!(
        r.contains("redoing the shard") && !r.contains("already complete"),
        "a re-run must repair, not call this folder complete\n{r}"
    );
    assert!(
        root.join("out/data").join(&gone).is_file(),
        "{gone} is back"
    );
    ok(&root, &["verify", "out", "--expect-json", &expect]);
}

#[test]
fn every_path_of_the_entry_is_absolute_and_trainer_root_rebases_them() {
    let (_tmp, root) = scene(16_002);
    let abs = std::path::absolute(&root).unwrap();
    ok(
        &root,
        &[
            "run",
            "--input",
            "shards",
            "--output",
            "out",
            "--workers",
            "2",
            "--instance-data-dir",
            "out/data",
            "--cache-dir-vae",
            "cache/vae",
        ],
    );
    let e = entry(&root.join("out"));
    assert_eq!(
        e["instance_data_dir"],
        abs.join("out/data").to_str().unwrap(),
        "{e:#}"
    );
    assert_eq!(
        e["parquet"]["path"],
        abs.join("out/dalle3.parquet").to_str().unwrap()
    );
    assert_eq!(
        e["cache_dir_vae"],
        format!("{}/", abs.join("cache/vae").display())
    );

    ok(
        &root,
        &[
            "run",
            "--input",
            "shards",
            "--output",
            "out2",
            "--workers",
            "2",
            "--trainer-root",
            "/mnt/train",
            "--cache-dir-vae",
            "/fast/vae",
        ],
    );
    let e = entry(&root.join("out2"));
    assert_eq!(e["instance_data_dir"], "/mnt/train/data", "{e:#}");
    assert_eq!(e["parquet"]["path"], "/mnt/train/dalle3.parquet");
    assert_eq!(
        e["cache_dir_vae"], "/fast/vae/",
        "a per-path flag still wins"
    );
    let help = ok(&root, &["run", "--help"]);
    assert!(help.contains("--trainer-root"), "{help}");
    assert!(
        help.contains("made absolute against the current directory"),
        "{help}"
    );
}
