//! `--mode index`: a webshart index per shard instead of extracted files,
//! through the real binary (coordinator, workers, gRPC, files on disk).

use std::path::Path;

use serde_json::Value;

use crate::server::{Route, Server};
use crate::util::*;

fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

/// Shards with lying dimensions too, so that the mismatch count is not zero.
fn shards(dir: &Path) -> Vec<std::path::PathBuf> {
    generate(
        dir,
        &GenOptions {
            shards: 3,
            samples_per_shard: 12,
            image_bytes: 700,
            seed: 19,
            no_width_every: 5,
            lying_dims_every: 4,
            ..GenOptions::default()
        },
    )
    .expect("generate shards")
}

fn verify(out: &Path) -> std::process::Output {
    run_raw(&["verify", path_str(out)], &[])
}

fn files_under(dir: &Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

#[test]
fn index_mode_writes_an_index_per_shard_and_the_extract_modes_parquet() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let (out, ext) = (dir.path().join("out"), dir.path().join("ext"));
    run_job(&input, &out, &["--mode", "index"]);
    run_job(&input, &ext, &[]);

    for tar in &tars {
        let name = tar.file_name().unwrap().to_str().unwrap();
        let index = out.join("index").join(name.replace(".tar", ".json"));
        let doc = read_json(&index);
        assert_eq!(
            doc["filesize"].as_u64(),
            Some(std::fs::metadata(tar).unwrap().len())
        );
        assert!(doc["files"].as_object().is_some_and(|f| !f.is_empty()));
    }
    assert_eq!(files_under(&out.join("index")), tars.len());
    assert_eq!(
        std::fs::read(out.join("dalle3.parquet")).unwrap(),
        std::fs::read(ext.join("dalle3.parquet")).unwrap(),
        "index mode must give the extract mode's parquet byte for byte"
    );
    assert_eq!(
        files_under(&out.join("data")),
        0,
        "index mode extracts nothing"
    );

    let report = read_json(&out.join("report.json"));
    assert_eq!(report["verdict"], "ok");
    assert_eq!(report["mode"], "index");
    let ext_report = read_json(&ext.join("report.json"));
    assert_eq!(report["found_json"], ext_report["found_json"]);
    assert_eq!(report["rows"], ext_report["rows"]);
    let ix = &report["index"];
    let left_out: u64 = report["totals"]["images_left_out"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(left_out > 0, "JSONs without width leave images out");
    assert_eq!(
        ix["entries"].as_u64(),
        Some(report["totals"]["members"].as_u64().unwrap() - left_out),
        "every member of these shards is a regular file with a safe name; images without a row get no entry: {ix}"
    );
    assert_eq!(ix["images_with_dimensions"], report["rows"]);
    assert_eq!(
        report["totals"]["images_left_out"],
        ext_report["totals"]["images_left_out"]
    );
    assert!(ix["dimension_mismatches"].as_u64().unwrap() > 0, "{ix}");

    let entry = read_json(&out.join("multidatabackend.json"));
    let e = &entry[0];
    assert_eq!(e["type"], "webshart");
    assert_eq!(
        e["source"],
        std::path::absolute(&input).unwrap().to_str().unwrap()
    );
    assert_eq!(
        e["metadata"],
        std::path::absolute(out.join("index"))
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(e["webshart"]["shard_cache_gb"], 0);

    let v = verify(&out);
    assert!(v.status.success(), "{}", explain(&["verify"], &v));
}

#[test]
fn a_rerun_of_an_index_job_is_a_no_op_and_a_lost_index_is_redone() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let out = dir.path().join("out");
    run_job(&input, &out, &["--mode", "index"]);
    let index = out.join("index").join("data-000001.json");
    let first = std::fs::read(&index).unwrap();
    let report = read_json(&out.join("report.json"));

    run_job(&input, &out, &["--mode", "index"]);
    let again = read_json(&out.join("report.json"));
    assert_eq!(
        again["finished_at"], report["finished_at"],
        "a re-run rewrites nothing"
    );

    std::fs::remove_file(&index).unwrap();
    let out2 = run_job(&input, &out, &["--mode", "index"]);
    assert_eq!(
        std::fs::read(&index).unwrap(),
        first,
        "the same tar gives the same bytes"
    );
    let redone = read_json(&out.join("report.json"));
    assert_eq!(
        redone["shards_recovered"].as_u64(),
        Some(tars.len() as u64 - 1)
    );
    assert!(
        String::from_utf8_lossy(&out2.stderr).contains("index file is missing"),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
}

#[test]
fn a_truncated_shard_gets_no_index_and_the_report_names_it() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let cut = &tars[1];
    let len = std::fs::metadata(cut).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(cut).unwrap();
    f.set_len(len / 2 + 100).unwrap();
    drop(f);
    let out = dir.path().join("out");
    let args = [
        "run",
        "--input",
        path_str(&input),
        "--output",
        path_str(&out),
        "--workers",
        "2",
        "--mode",
        "index",
    ];
    let r = run_raw(&args, &[]);
    assert!(!r.status.success(), "{}", explain(&args, &r));
    assert!(!out.join("index").join("data-000001.json").exists());
    assert!(out.join("index").join("data-000000.json").is_file());
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["verdict"], "failed");
    let failures = report["failures"].to_string();
    assert!(
        failures.contains("data-000001.tar") && failures.contains("truncated"),
        "{failures}"
    );
    assert!(!verify(&out).status.success());
}

#[test]
fn verify_catches_a_tampered_index() {
    let dir = tempdir();
    let input = dir.path().join("in");
    shards(&input);
    let out = dir.path().join("out");
    run_job(&input, &out, &["--mode", "index"]);
    let index = out.join("index").join("data-000000.json");
    let mut doc = read_json(&index);
    let image = doc["files"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, v)| !k.ends_with(".json") && v.get("width").is_some())
        .map(|(k, _)| k.clone())
        .expect("an image entry with dimensions");
    let e = &mut doc["files"][&image];
    e["offset"] = Value::from(e["offset"].as_u64().unwrap() + 512);
    std::fs::write(&index, serde_json::to_vec(&doc).unwrap()).unwrap();
    let v = verify(&out);
    let text = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success(), "{text}");
    assert!(
        text.contains("image signature") && text.contains(&image),
        "{text}"
    );

    // An entry past the end of the tar.
    e_past_end(&index, &image);
    let v = verify(&out);
    let text = String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(text.contains("ends past the tar"), "{text}");
}

fn e_past_end(index: &Path, image: &str) {
    let mut doc = read_json(index);
    let size = doc["filesize"].as_u64().unwrap();
    doc["files"][image]["offset"] = Value::from(size);
    std::fs::write(index, serde_json::to_vec(&doc).unwrap()).unwrap();
}

#[test]
fn index_mode_refuses_inputs_webshart_cannot_read_naming_what_to_do() {
    let dir = tempdir();
    let out = dir.path().join("out");
    for (input, says) in [
        (
            "https://127.0.0.1:9/shards/data-{000000..000001}.tar",
            "mount the bucket or server as a folder",
        ),
        ("s3://bucket/dalle3/data/", "webshart 0.6.0 reads tars only"),
        (
            "hf://datasets/acme/mini@v2/data",
            "index hf://datasets/acme/mini/data (the main revision)",
        ),
    ] {
        let args = [
            "run",
            "--input",
            input,
            "--output",
            path_str(&out),
            "--mode",
            "index",
        ];
        let r = run_raw(&args, &[]);
        assert!(!r.status.success(), "{}", explain(&args, &r));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(says), "{input}: {err}");
    }
}

/// The index of a tar without its informational `path`.
fn without_path(mut doc: Value) -> Value {
    doc.as_object_mut().map(|o| o.remove("path"));
    doc
}

/// A fake Hub (tree API and resolve URLs with Range support, one shard
/// redirected to a "CDN") serving `tars` as `data/<name>` of `acme/mini`.
fn fake_hub(tars: &[std::path::PathBuf]) -> Server {
    let server = Server::start();
    let mut entries = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let name = tar.file_name().unwrap().to_str().unwrap();
        let data = std::fs::read(tar).unwrap();
        let etag = format!("{:016x}", shardprep_core::layout::fnv1a64(&data));
        entries.push(format!(
            r#"{{"type":"file","oid":"{i}","size":134,"path":"data/{name}","lfs":{{"oid":"{etag}","size":{},"pointerSize":134}}}}"#,
            data.len()
        ));
        let resolve = format!("/datasets/acme/mini/resolve/main/data/{name}");
        if i == 1 {
            let cdn = format!("/cdn/{name}");
            server.route(&resolve, Route::Redirect(server.url(&cdn)));
            server.route(&cdn, Route::file(&data, &etag));
        } else {
            server.route(&resolve, Route::file(&data, &etag));
        }
    }
    server.route(
        "/api/datasets/acme/mini/tree/main/data",
        Route::Json {
            body: format!("[{}]", entries.join(",")),
            link: None,
        },
    );
    server
}

/// Index mode on `hf://datasets/OWNER/NAME/data` reads the tars by range
/// requests: every index equals the local index of the same tars (but for
/// `path`), lies at the shard's path in the repository (where webshart looks
/// for it), the entry names the repository and its subfolder, and the
/// images' bytes were not transferred.
#[test]
fn index_mode_on_a_hub_folder_reads_ranges_and_gives_the_local_index() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let opts = shardprep_fixtures::GenOptions {
        shards: 3,
        samples_per_shard: 12,
        image_bytes: 200_000,
        seed: 1907,
        no_width_every: 5,
        lying_dims_every: 4,
        ..Default::default()
    };
    let tars = shardprep_fixtures::generate(&input, &opts).unwrap();
    let (local, hub) = (dir.path().join("local"), dir.path().join("hub"));
    run_job(&input, &local, &["--mode", "index"]);
    let server = fake_hub(&tars);
    let endpoint = server.url("");
    let args = [
        "run",
        "--input",
        "hf://datasets/acme/mini/data",
        "--output",
        path_str(&hub),
        "--workers",
        "2",
        "--mode",
        "index",
    ];
    let env = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("NO_PROXY", "127.0.0.1,localhost"),
    ];
    let r = run_raw(&args, &env);
    assert!(r.status.success(), "{}", explain(&args, &r));

    let mut total = 0;
    for tar in &tars {
        let name = tar.file_name().unwrap().to_str().unwrap();
        total += std::fs::metadata(tar).unwrap().len();
        let json = name.replace(".tar", ".json");
        let remote = read_json(&hub.join("index/data").join(&json));
        assert_eq!(remote["path"], format!("data/{name}"));
        assert_eq!(
            without_path(remote),
            without_path(read_json(&local.join("index").join(&json))),
            "{name}: the index of the Hub shard differs from the local one"
        );
    }
    assert_eq!(files_under(&hub.join("index")), tars.len());
    assert_eq!(
        std::fs::read(hub.join("dalle3.parquet")).unwrap(),
        std::fs::read(local.join("dalle3.parquet")).unwrap()
    );

    let report = read_json(&hub.join("report.json"));
    assert_eq!(report["verdict"], "ok", "{report:#}");
    let read = report["totals"]["bytes_read"].as_u64().unwrap();
    assert!(
        read > 0 && read * 4 < total,
        "index mode transferred {read} of {total} bytes: the images must be skipped"
    );
    let tar_gets: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.path().ends_with(".tar"))
        .collect();
    assert!(tar_gets.len() >= tars.len(), "{tar_gets:#?}");
    for s in &tar_gets {
        let range = s.header("range").unwrap_or_default();
        assert!(
            range.starts_with("bytes=") && !range.ends_with('-'),
            "only bounded range requests: {s:?}"
        );
    }

    let e = &read_json(&hub.join("multidatabackend.json"))[0];
    assert_eq!(e["type"], "webshart");
    assert_eq!(e["source"], "acme/mini");
    assert_eq!(e["subfolder"], "data");
    let index = std::path::absolute(hub.join("index")).unwrap();
    assert_eq!(e["metadata"], index.to_str().unwrap());
    let v = verify(&hub);
    assert!(v.status.success(), "{}", explain(&["verify"], &v));
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(said.contains("the tars are remote"), "{said}");
}

/// `--input-list` of local paths: the list's common folder is the webshart
/// `source`, each index lies at its shard's path under it, and verify holds.
#[test]
fn index_mode_takes_an_input_list_of_local_paths() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let sub = input.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let moved = sub.join(tars[1].file_name().unwrap());
    std::fs::rename(&tars[1], &moved).unwrap();
    let list = dir.path().join("shards.txt");
    std::fs::write(
        &list,
        format!("{}\n# a comment\n{}\n", tars[0].display(), moved.display()),
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = [
        "run",
        "--input-list",
        path_str(&list),
        "--output",
        path_str(&out),
        "--mode",
        "index",
    ];
    let r = run_raw(&args, &[]);
    assert!(r.status.success(), "{}", explain(&args, &r));
    let name0 = tars[0].file_name().unwrap().to_str().unwrap();
    let name1 = moved.file_name().unwrap().to_str().unwrap();
    assert!(
        out.join("index")
            .join(name0.replace(".tar", ".json"))
            .is_file()
    );
    let doc = read_json(&out.join("index/sub").join(name1.replace(".tar", ".json")));
    assert_eq!(
        doc["filesize"].as_u64(),
        Some(std::fs::metadata(&moved).unwrap().len())
    );
    assert_eq!(files_under(&out.join("index")), 2);
    let e = &read_json(&out.join("multidatabackend.json"))[0];
    let root = std::path::absolute(&input).unwrap();
    assert_eq!(e["source"], root.to_str().unwrap());
    let v = verify(&out);
    assert!(v.status.success(), "{}", explain(&["verify"], &v));
}

/// A shard with what the trainer must not take: shard 0 of `tars` with an
/// image no JSON names, an image in a subfolder with its JSON, a JSON
/// naming an image the shard lacks, an image twice, a symlink, a name
/// leaving `data/`.
fn hostile_shard(tars: &[std::path::PathBuf], dest: &Path) {
    let mut archive = tar::Archive::new(std::fs::File::open(&tars[0]).unwrap());
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_str().unwrap().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        members.push((name, bytes));
    }
    let image = members
        .iter()
        .find(|(n, _)| n.ends_with(".png"))
        .cloned()
        .expect("a png in the shard");
    let json = |name: &str| {
        serde_json::to_vec(&serde_json::json!({
            "image_name": name, "width": 1, "height": 1, "short_caption": format!("caption of {name}"),
        }))
        .unwrap()
    };
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    for (n, bytes) in &members {
        add(&mut b, n, bytes);
    }
    add(&mut b, "lone.png", &image.1);
    add(&mut b, "sub/nested.png", &image.1);
    add(&mut b, "sub/nested.json", &json("nested.png"));
    add(&mut b, "ghost.json", &json("ghost.png"));
    add(&mut b, &image.0, &image.1);
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    b.append_link(&mut link, "evil.png", "/etc/passwd").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(image.1.len() as u64);
    h.set_mode(0o644);
    h.as_old_mut().name[..13].copy_from_slice(b"../escape.png");
    h.set_cksum();
    b.append(&h, &image.1[..]).unwrap();
    std::fs::write(dest, b.into_inner().unwrap()).unwrap();
}

/// (image file name, caption) of every image entry of every index under `dir`.
fn index_samples(dir: &Path) -> std::collections::BTreeSet<(String, String)> {
    let mut got = std::collections::BTreeSet::new();
    for index in walk(dir) {
        let doc = read_json(&index);
        for (name, e) in doc["files"].as_object().unwrap() {
            if name.ends_with(".json") || name.ends_with(".txt") {
                continue;
            }
            assert!(e["width"].is_u64() && e["height"].is_u64(), "{name}: {e}");
            let caption = e["captions"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {e}"));
            got.insert((name.clone(), caption.to_string()));
        }
    }
    got
}

#[test]
fn both_modes_give_the_trainer_the_same_samples_and_the_same_report() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = generate(
        &input,
        &GenOptions {
            shards: 2,
            samples_per_shard: 20,
            image_bytes: 700,
            seed: 25,
            no_width_every: 4,
            lying_dims_every: 6,
            truncated_every: 7,
            ..GenOptions::default()
        },
    )
    .expect("generate shards");
    hostile_shard(&tars, &input.join("data-000009.tar"));
    let (ix, ext) = (dir.path().join("ix"), dir.path().join("ext"));
    let flags = ["--on-bad-image", "skip"];
    run_job(&input, &ix, &[&["--mode", "index"][..], &flags].concat());
    run_job(&input, &ext, &flags);

    // What the trainer takes: the parquet's rows whose image is in data/ (extract), the
    // entries with size and caption (index).
    let rows: std::collections::BTreeSet<(String, String)> = read_rows(&ext.join("dalle3.parquet"))
        .into_iter()
        .filter(|(_, _, _, name)| ext.join("data").join(name).is_file())
        .map(|(_, _, caption, name)| (name, caption))
        .collect();
    assert!(rows.len() > 20, "{rows:?}");
    let entries = index_samples(&ix.join("index"));
    assert_eq!(entries, rows, "index entries vs parquet rows");

    let (a, b) = (report(&ix), report(&ext));
    let (ta, tb) = (&a["totals"], &b["totals"]);
    for key in [
        "skipped",
        "rejected_members",
        "image_problems",
        "images_checked",
        "images_left_out",
        "json_without_image",
        "images_without_json",
        "duplicate_members",
        "rows",
    ] {
        assert_eq!(ta[key], tb[key], "totals.{key}: index vs extract");
    }
    let left_out = &tb["images_left_out"];
    for reason in ["no_width", "bad_image", "no_row", "in_subdirectory"] {
        assert!(left_out[reason].as_u64() > Some(0), "{reason}: {left_out}");
    }
    let kinds = |r: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = r["shards"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                let list = |k: &str| s[k].as_array().cloned().unwrap_or_default();
                [list("issues"), list("image_issues")].concat()
            })
            .map(|i| (i["member"].to_string(), i["kind"].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(kinds(&a), kinds(&b), "listed issues: index vs extract");
    let v = verify(&ix);
    assert!(v.status.success(), "{}", explain(&["verify"], &v));
}

#[test]
fn index_format_is_refused_where_it_cannot_be_written_naming_what_to_do() {
    let dir = tempdir();
    let input = dir.path().join("in");
    shards(&input);
    let out = dir.path().join("out");
    let local = path_str(&input);
    for (args, says) in [
        (
            vec!["--index-format", "dali"],
            "--index-format dali needs --mode index",
        ),
        (
            vec!["--mode", "index", "--index-format", "webshart,lmdb"],
            "unknown index format \"lmdb\"",
        ),
    ] {
        let mut all = vec!["run", "--input", local, "--output", path_str(&out)];
        all.extend(args);
        let r = run_raw(&all, &[]);
        assert!(!r.status.success(), "{}", explain(&all, &r));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let remote = [
        "run",
        "--input",
        "hf://datasets/acme/mini/data",
        "--output",
        path_str(&out),
        "--mode",
        "index",
        "--index-format",
        "webshart,energon",
    ];
    let r = run_raw(&remote, &[]);
    assert!(!r.status.success(), "{}", explain(&remote, &r));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("need a local --input folder"), "{err}");
    assert!(!out.join("energon").exists());
}

#[test]
fn index_formats_follow_the_flag_on_a_rerun_and_a_rerun_rewrites_nothing() {
    let dir = tempdir();
    let input = dir.path().join("in");
    let tars = shards(&input);
    let out = dir.path().join("out");
    let all = ["--mode", "index", "--index-format", "energon,dali,wids"];
    run_job(&input, &out, &all);
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["index_formats"]["formats"], "energon,dali,wids");
    assert!(out.join("energon/.nv-meta/index.sqlite").is_file());
    assert!(out.join("dali/dali.json").is_file() && out.join("wids/wids.json").is_file());
    // No webshart index was asked for: none, and no SimpleTuner entry pointing at one.
    assert!(!out.join("index").exists() || files_under(&out.join("index")) == 0);
    assert!(!out.join("multidatabackend.json").exists());
    let tar_idx = out.join("energon/data-000001.tar.idx");
    let first = std::fs::read(&tar_idx).unwrap();

    run_job(&input, &out, &all);
    let again = read_json(&out.join("report.json"));
    assert_eq!(
        again["finished_at"], report["finished_at"],
        "a re-run rewrites nothing"
    );

    // webshart alone: the shards are redone for its index, the other formats' files go.
    run_job(&input, &out, &["--mode", "index"]);
    let web = read_json(&out.join("report.json"));
    assert!(web.get("index_formats").is_none(), "{web}");
    assert_eq!(files_under(&out.join("index")), tars.len());
    assert!(!out.join("energon").exists() && !out.join("dali").exists());
    assert!(verify(&out).status.success());

    // Back to all four: the pieces come back byte for byte.
    let four = [
        "--mode",
        "index",
        "--index-format",
        "webshart,energon,dali,wids",
    ];
    run_job(&input, &out, &four);
    assert_eq!(std::fs::read(&tar_idx).unwrap(), first);
    assert!(verify(&out).status.success());
}
