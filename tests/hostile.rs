//! Hostile input (issue "Hostile input"): hand-crafted tars with evil member
//! names, links and devices, broken archives, malformed sample JSONs, odd but
//! valid layouts, and a hostile output directory, all through the real binary
//! (`shardprep run`). Every test checks that the rest of the job still
//! completes, that the case is counted and named in report.json, and that
//! nothing is written outside `OUT/data` (a sentinel directory next to OUT
//! stays empty). docs/hostile-input.md lists the cases and the behaviour.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use shardprep_fixtures::append_file;

use crate::util::*;

// ---------------------------------------------------------------- tar building

type Tar = tar::Builder<Vec<u8>>;

fn new_tar() -> Tar {
    tar::Builder::new(Vec::new())
}

/// The archive's bytes, with the end-of-archive blocks.
fn finish(b: Tar) -> Vec<u8> {
    b.into_inner().expect("finish tar")
}

/// Recognisable image bytes (PNG magic, then a pattern).
fn image(seed: u8, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let magic = b"\x89PNG\r\n\x1a\n";
    let n = magic.len().min(len);
    v[..n].copy_from_slice(&magic[..n]);
    v
}

fn sample_json(image_name: &str, caption: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "image_name": image_name,
        "width": 640,
        "height": 480,
        "short_caption": caption,
        "long_caption": "long",
    }))
    .unwrap()
}

/// Appends `<key>.png` (300 bytes) then `<key>.json` with caption `caption <key>`.
fn add_sample(b: &mut Tar, key: &str) {
    append_file(b, &format!("{key}.png"), &image(key.len() as u8, 300)).unwrap();
    append_json(b, key);
}

/// Appends only `<key>.json` naming `<key>.png`, caption `caption <key>`.
fn append_json(b: &mut Tar, key: &str) {
    append_file(
        b,
        &format!("{key}.json"),
        &sample_json(&format!("{key}.png"), &format!("caption {key}")),
    )
    .unwrap();
}

/// A GNU header with the exact name (and link name) bytes, no checks at all:
/// `tar::Builder` refuses `..` and absolute names, real attackers do not.
fn raw_header(name: &[u8], etype: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    assert!(
        name.len() <= 100 && link.len() <= 100,
        "raw names are limited to 100 bytes"
    );
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(etype);
    h.set_cksum();
    h
}

/// Appends a member with raw name bytes; names over 100 bytes get a GNU
/// `././@LongLink` record first, as GNU tar writes them.
fn add_raw(b: &mut Tar, name: &[u8], etype: tar::EntryType, data: &[u8], link: &[u8]) {
    let short = if name.len() > 100 {
        let mut long = name.to_vec();
        long.push(0);
        let h = raw_header(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            long.len() as u64,
            b"",
        );
        b.append(&h, &long[..]).unwrap();
        &name[..100]
    } else {
        name
    };
    let h = raw_header(short, etype, data.len() as u64, link);
    b.append(&h, data).unwrap();
}

fn add_raw_file(b: &mut Tar, name: &[u8], data: &[u8]) {
    add_raw(b, name, tar::EntryType::Regular, data, b"");
}

// ---------------------------------------------------------------- the job

/// A temp dir holding `in/` (shards), `out/` (OUT) and `sentinel/` (must stay empty).
struct Job {
    tmp: TestDir,
    input: PathBuf,
    out: PathBuf,
    sentinel: PathBuf,
}

/// One finished `shardprep run`.
struct Run {
    args: Vec<String>,
    output: Output,
}

impl Run {
    fn explain(&self) -> String {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        explain(&args, &self.output)
    }
    fn all_output(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
    fn assert_ok(&self) {
        assert!(
            self.output.status.success(),
            "expected exit 0\n{}",
            self.explain()
        );
        assert!(
            !self.all_output().contains("panicked"),
            "a panic\n{}",
            self.explain()
        );
    }
    fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.output.status.code(),
            Some(code),
            "exit code\n{}",
            self.explain()
        );
        assert!(
            !self.all_output().contains("panicked"),
            "a panic\n{}",
            self.explain()
        );
    }
}

impl Job {
    fn new() -> Job {
        let tmp = tempdir();
        let input = tmp.path().join("in");
        let out = tmp.path().join("out");
        let sentinel = tmp.path().join("sentinel");
        std::fs::create_dir_all(&input).unwrap();
        std::fs::create_dir_all(&sentinel).unwrap();
        Job {
            tmp,
            input,
            out,
            sentinel,
        }
    }

    fn data(&self) -> PathBuf {
        self.out.join("data")
    }

    fn add(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.input.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A well-formed shard of `n` samples with keys `<prefix><i>`.
    fn add_good(&self, name: &str, prefix: &str, n: usize) {
        let mut b = new_tar();
        for i in 0..n {
            add_sample(&mut b, &format!("{prefix}{i}"));
        }
        self.add(name, &finish(b));
    }

    fn run(&self, workers: &str, extra: &[&str]) -> Run {
        let mut args: Vec<String> = [
            "run",
            "--input",
            path_str(&self.input),
            "--output",
            path_str(&self.out),
            "--workers",
            workers,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = run_raw(&a, &[]);
        Run { args, output }
    }

    fn report(&self) -> Value {
        report(&self.out)
    }

    /// Nothing outside `OUT/data` and OUT's own files: the temp dir holds only
    /// in/, out/ and an empty sentinel/; OUT only its known entries; data/ only
    /// files and directories (plus the symlinks the test put there itself).
    fn assert_contained(&self, own_links: &[&str]) {
        let mut top: Vec<String> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["in", "out", "sentinel"],
            "unexpected files next to OUT"
        );
        let leaked: Vec<_> = std::fs::read_dir(&self.sentinel)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(leaked.is_empty(), "written outside OUT: {leaked:?}");
        if !self.out.is_dir() {
            return;
        }
        for e in std::fs::read_dir(&self.out).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                [
                    "data",
                    ".shardprep",
                    "dalle3.parquet",
                    "report.json",
                    "report.html",
                    "multidatabackend.json"
                ]
                .contains(&name.as_str()),
                "unexpected OUT/{name}"
            );
        }
        let data = self.data();
        if !data.is_dir() {
            return;
        }
        let mut stack = vec![data.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let rel = p
                    .strip_prefix(&data)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if meta.file_type().is_symlink() {
                    assert!(
                        own_links.contains(&rel.as_str()),
                        "a symlink was created: data/{rel}"
                    );
                } else if meta.is_dir() {
                    stack.push(p);
                } else {
                    assert!(
                        meta.is_file(),
                        "data/{rel} is not a regular file: {:?}",
                        meta.file_type()
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- report helpers

fn shard<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no shard {name} in the report: {r:#}"))
}

/// Members listed in a shard's issues with `kind`, in order.
fn issues(s: &Value, kind: &str) -> Vec<String> {
    s["issues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind)
        .map(|i| i["member"].as_str().unwrap().to_string())
        .collect()
}

/// `counts[group]` of a shard as a map (e.g. `rejected_members`).
fn by_reason(s: &Value, group: &str) -> serde_json::Map<String, Value> {
    s["counts"][group].as_object().cloned().unwrap_or_default()
}

fn reasons(pairs: &[(&str, u64)]) -> serde_json::Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

/// Parquet rows by file name.
fn rows_by_name(job: &Job) -> std::collections::BTreeMap<String, Row> {
    read_rows(&job.out.join("dalle3.parquet"))
        .into_iter()
        .map(|r| (r.3.clone(), r))
        .collect()
}

/// The job completed (exit 0, verdict ok) and `good.tar` (made by
/// `add_good(.., "g", n)`) gave its rows.
fn assert_good_shard_done(job: &Job, run: &Run, n: usize) {
    run.assert_ok();
    let r = job.report();
    assert_eq!(r["verdict"], "ok", "{r:#}");
    let g = shard(&r, "good.tar");
    assert_eq!(g["state"], "done");
    assert_eq!(g["counts"]["rows"], n as u64);
    let rows = rows_by_name(job);
    for i in 0..n {
        let name = format!("g{i}.png");
        assert_eq!(
            rows[&name],
            (640, 480, format!("caption g{i}"), name.clone())
        );
        assert_eq!(
            std::fs::read(job.data().join(format!("g{i}.txt"))).unwrap(),
            format!("caption g{i}").as_bytes()
        );
    }
}

/// The job finished the other shards but failed on `bad`: exit 1, a report
/// with verdict failed, `bad` in `failures` with an error naming it and a
/// byte offset (and `what`), tried once (not retryable), no final parquet.
fn assert_shard_failed(job: &Job, run: &Run, bad: &str, what: &[&str]) -> Value {
    run.assert_exit(1);
    let r = job.report();
    assert_eq!(r["verdict"], "failed", "{r:#}");
    let failures = r["failures"].as_array().unwrap();
    let f = failures
        .iter()
        .find(|f| f["name"] == bad)
        .unwrap_or_else(|| panic!("{bad} is not in failures: {r:#}"));
    assert_eq!(f["state"], "failed");
    assert_eq!(f["attempts"], 1, "a broken tar is not retried: {f:#}");
    let err = f["error"].as_str().unwrap();
    assert!(
        err.contains(bad),
        "the error does not name the shard: {err}"
    );
    assert!(
        err.contains("byte offset"),
        "the error gives no byte offset: {err}"
    );
    for w in what {
        assert!(err.contains(w), "the error does not say {w:?}: {err}");
    }
    assert!(
        run.all_output().contains(bad),
        "the output does not name {bad}\n{}",
        run.explain()
    );
    let g = shard(&r, "good.tar");
    assert_eq!(g["state"], "done", "the other shard must complete: {r:#}");
    assert_eq!(g["counts"]["rows"], 2);
    assert!(
        std::fs::read(job.data().join("g1.txt")).is_ok(),
        "good.tar was not extracted"
    );
    assert!(
        !job.out.join("dalle3.parquet").exists(),
        "a final parquet was written despite a failed shard"
    );
    job.assert_contained(&[]);
    f.clone()
}

// ---------------------------------------------------------------- evil member paths

#[test]
fn parent_dir_member_paths_are_refused() {
    let job = Job::new();
    let deep = format!("../../../shardprep-hostile-{}-deep", std::process::id());
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    add_raw_file(&mut b, b"../x", b"escaped");
    add_raw_file(&mut b, b"a/../../x", b"escaped");
    add_raw_file(&mut b, b"../../sentinel/x", b"escaped");
    add_raw_file(&mut b, deep.as_bytes(), b"escaped");
    add_raw_file(&mut b, b"./ok/../../x.json", b"{}");
    add_sample(&mut b, "a1");
    job.add("evil.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "evil.tar");
    assert_eq!(
        by_reason(s, "rejected_members"),
        reasons(&[("parent_dir_path", 5)])
    );
    assert_eq!(
        issues(s, "parent_dir_path"),
        [
            "../x",
            "a/../../x",
            "../../sentinel/x",
            deep.as_str(),
            "./ok/../../x.json"
        ]
    );
    assert_eq!(
        s["counts"]["rows"], 2,
        "the samples around the evil members are kept"
    );
    assert_eq!(r["totals"]["rejected_members"]["parent_dir_path"], 5);
    assert!(
        !job.out.join("x").exists()
            && !job.data().join("a").exists()
            && !job.data().join("ok").exists()
    );
    let parent = job.tmp.path().parent().unwrap();
    assert!(!parent.join(deep.trim_start_matches("../../../")).exists());
    job.assert_contained(&[]);
}

#[test]
fn nul_byte_in_a_long_member_name_cuts_it_as_gnu_tar_does() {
    let job = Job::new();
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    // A GNU long name record can carry a NUL inside the name.
    let name = format!("{}\0/../../sentinel/x", "n".repeat(120));
    add_raw_file(&mut b, name.as_bytes(), b"escaped");
    job.add("evil.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "evil.tar");
    // GNU tar cuts a long name at its first NUL (issue 18): the member is
    // extracted under the part before it, nothing leaves data/.
    assert_eq!(by_reason(s, "rejected_members"), reasons(&[]));
    assert_eq!(
        std::fs::read(job.data().join("n".repeat(120))).unwrap(),
        b"escaped"
    );
    assert!(issues(s, "nul_in_name").is_empty());
    assert_eq!(s["counts"]["rows"], 1);
    job.assert_contained(&[]);
}

#[test]
fn absolute_member_path_is_refused() {
    let job = Job::new();
    let abs = job.sentinel.join("abs.txt");
    let abs_long = job.sentinel.join(format!("{}.txt", "l".repeat(120)));
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    add_raw_file(&mut b, abs.as_os_str().as_bytes(), b"escaped");
    add_raw_file(&mut b, abs_long.as_os_str().as_bytes(), b"escaped");
    add_raw_file(&mut b, b"//double/slash.txt", b"escaped");
    job.add("evil.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "evil.tar");
    assert_eq!(
        by_reason(s, "rejected_members"),
        reasons(&[("absolute_path", 3)])
    );
    assert_eq!(
        issues(s, "absolute_path"),
        [
            abs.to_str().unwrap(),
            abs_long.to_str().unwrap(),
            "//double/slash.txt"
        ]
    );
    assert_eq!(s["counts"]["rows"], 1);
    job.assert_contained(&[]);
}

#[test]
fn member_through_a_symlink_in_data_is_not_written() {
    let job = Job::new();
    let data = job.data();
    std::fs::create_dir_all(&data).unwrap();
    // Left in OUT/data by someone (or an earlier, less careful tool): they point outside.
    std::os::unix::fs::symlink(&job.sentinel, data.join("link")).unwrap();
    std::os::unix::fs::symlink(job.sentinel.join("leaf"), data.join("leaf")).unwrap();
    std::os::unix::fs::symlink(job.sentinel.join("cap.txt"), data.join("cap.txt")).unwrap();
    let mut b = new_tar();
    add_raw_file(&mut b, b"link/evil", b"through the link");
    add_raw_file(&mut b, b"link/sub/deeper.png", b"through the link");
    add_raw_file(&mut b, b"leaf", b"onto the link");
    // The caption data/cap.txt would be written through a symlink too.
    add_sample(&mut b, "cap");
    add_sample(&mut b, "a0");
    job.add("evil.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "evil.tar");
    assert_eq!(
        by_reason(s, "rejected_members"),
        reasons(&[("path_through_non_directory", 2), ("symlink_in_the_way", 2)])
    );
    assert_eq!(
        issues(s, "path_through_non_directory"),
        ["link/evil", "link/sub/deeper.png"]
    );
    // The refused caption is named by its JSON member.
    assert_eq!(issues(s, "symlink_in_the_way"), ["leaf", "cap.json"]);
    assert_eq!(
        s["counts"]["rows"], 2,
        "the rows stay (the caption is also in the parquet)"
    );
    for l in ["link", "leaf", "cap.txt"] {
        assert!(
            std::fs::symlink_metadata(data.join(l))
                .unwrap()
                .file_type()
                .is_symlink(),
            "data/{l} was replaced"
        );
    }
    job.assert_contained(&["link", "leaf", "cap.txt"]);
}

// ---------------------------------------------------------------- links and special files

/// One shard with a special member between two samples: refused with
/// `reason`, named, the samples kept, nothing created for it. `{sentinel}`
/// in `link` stands for the sentinel directory's absolute path.
fn special_member(etype: tar::EntryType, name: &str, link: &str, reason: &str) {
    let job = Job::new();
    let link = link.replace("{sentinel}", job.sentinel.to_str().unwrap());
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    let mut h = raw_header(name.as_bytes(), etype, 0, link.as_bytes());
    if matches!(etype, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_cksum();
    }
    b.append(&h, &[][..]).unwrap();
    // A file "inside" the special member: must land in a real data/ directory.
    add_raw_file(&mut b, format!("{name}/inner").as_bytes(), b"inner");
    add_sample(&mut b, "a1");
    job.add("evil.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "evil.tar");
    assert_eq!(by_reason(s, "rejected_members"), reasons(&[(reason, 1)]));
    assert_eq!(issues(s, reason), [name]);
    assert_eq!(r["totals"]["rejected_members"][reason], 1);
    assert_eq!(s["counts"]["rows"], 2);
    let meta = std::fs::symlink_metadata(job.data().join(name)).unwrap();
    assert!(
        meta.is_dir(),
        "data/{name} should be a plain directory, is {:?}",
        meta.file_type()
    );
    assert_eq!(
        std::fs::read(job.data().join(name).join("inner")).unwrap(),
        b"inner"
    );
    job.assert_contained(&[]);
}

#[test]
fn symlink_member_is_not_extracted() {
    special_member(tar::EntryType::Symlink, "s", "{sentinel}", "symlink");
    special_member(tar::EntryType::Symlink, "rel", "../../sentinel", "symlink");
}

#[test]
fn hard_link_member_is_not_extracted() {
    special_member(tar::EntryType::Link, "h", "/etc/passwd", "hard_link");
    special_member(tar::EntryType::Link, "h2", "a0.png", "hard_link");
}

#[test]
fn char_and_block_device_members_are_not_extracted() {
    special_member(tar::EntryType::Char, "c", "", "device");
    special_member(tar::EntryType::Block, "blk", "", "device");
}

#[test]
fn fifo_member_is_not_extracted() {
    special_member(tar::EntryType::Fifo, "f", "", "fifo");
}

// ---------------------------------------------------------------- broken archives

/// Three samples: each is a 1000-byte image (512 header + 1024 data) and a
/// small JSON (512 + 512), so sample i starts at byte 2560 * i.
fn three_samples() -> Vec<u8> {
    let mut b = new_tar();
    for i in 0..3 {
        let key = format!("b{i}");
        append_file(&mut b, &format!("{key}.png"), &image(i, 1000)).unwrap();
        append_json(&mut b, &key);
    }
    let v = finish(b);
    assert_eq!(v.len(), 3 * 2560 + 1024);
    v
}

/// Files of the shard's first sample are in data/, byte-identical to the tar's.
fn assert_first_sample_extracted(job: &Job) {
    assert_eq!(
        std::fs::read(job.data().join("b0.png")).unwrap(),
        image(0, 1000)
    );
    assert_eq!(
        std::fs::read(job.data().join("b0.json")).unwrap(),
        sample_json("b0.png", "caption b0")
    );
}

#[test]
fn truncated_mid_member_fails_the_shard_with_its_offset() {
    let job = Job::new();
    let whole = three_samples();
    // 300 bytes into the data of b1.png (header at 2560, data at 3072).
    job.add("bad.tar", &whole[..3372]);
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_shard_failed(
        &job,
        &run,
        "bad.tar",
        &["truncated", "byte offset 3372", "b1.png"],
    );
    assert_first_sample_extracted(&job);
    // The cut member is left as written so far (as `tar xf` leaves it); a
    // run on the repaired shard overwrites it.
    assert_eq!(
        std::fs::read(job.data().join("b1.png")).unwrap(),
        image(1, 1000)[..300]
    );
}

#[test]
fn truncated_mid_header_fails_the_shard_with_its_offset() {
    let job = Job::new();
    let whole = three_samples();
    // 100 bytes into the header of b1.png: the last good member ends at 2560.
    job.add("bad.tar", &whole[..2660]);
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_shard_failed(
        &job,
        &run,
        "bad.tar",
        &["broken tar header", "byte offset 2560"],
    );
    assert_first_sample_extracted(&job);
}

#[test]
fn corrupted_header_checksum_fails_the_shard_with_its_offset() {
    let job = Job::new();
    let mut whole = three_samples();
    // Flip a name byte of b1.png's header without fixing the checksum.
    whole[2560] ^= 0x20;
    job.add("bad.tar", &whole);
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_shard_failed(&job, &run, "bad.tar", &["checksum", "byte offset 2560"]);
    assert_first_sample_extracted(&job);
    assert!(
        !job.data().join("b2.png").exists(),
        "nothing after the break is extracted"
    );
}

#[test]
fn empty_file_named_tar_fails_the_shard() {
    let job = Job::new();
    job.add("bad.tar", b"");
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_shard_failed(&job, &run, "bad.tar", &["empty", "byte offset 0"]);
}

#[test]
fn non_tar_file_named_tar_fails_the_shard() {
    let job = Job::new();
    let text: Vec<u8> = b"this is a text file, not a tar archive\n".repeat(60);
    job.add("bad.tar", &text);
    job.add("short.tar", b"hello\n");
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_shard_failed(&job, &run, "bad.tar", &["byte offset 0"]);
    let r = assert_shard_failed(&job, &run, "short.tar", &["byte offset 0"]);
    assert_eq!(r["name"], "short.tar");
    assert_eq!(job.report()["shards_failed"], 2);
}

/// A gzip file holding `data` (stored deflate blocks; no compressor needed).
fn gzip(data: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let chunks: Vec<&[u8]> = data.chunks(65535).collect();
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        out.extend_from_slice(&(c.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[test]
fn gzip_compressed_tar_named_tar_fails_the_shard_and_says_so() {
    let job = Job::new();
    let gz = gzip(&three_samples());
    // Check the hand-made gzip with the real gunzip when there is one.
    if let Ok(mut child) = std::process::Command::new("gzip")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        child.stdin.take().unwrap().write_all(&gz).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "the test's gzip stream is invalid"
        );
    }
    job.add("bad.tar", &gz);
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_shard_failed(&job, &run, "bad.tar", &["gzip", "byte offset 0"]);
}

// ---------------------------------------------------------------- sample JSONs

#[test]
fn malformed_sample_jsons_are_skipped_by_reason_and_named() {
    let job = Job::new();
    let j = |w: Value, h: Value, cap: Option<Value>, name: Option<Value>| {
        let mut o = json!({"width": w, "height": h});
        if let Some(c) = cap {
            o["short_caption"] = c;
        }
        if let Some(n) = name {
            o["image_name"] = n;
        }
        serde_json::to_vec(&o).unwrap()
    };
    let c = |s: &str| Some(json!(s));
    // (key, JSON, expected reason or None for a row with this width)
    let cases: Vec<(&str, Vec<u8>, Result<i64, &str>)> = vec![
        (
            "w_str",
            j(json!("1024"), json!(480), c("str"), c("w_str.png")),
            Ok(1024),
        ),
        (
            "w_float",
            j(json!(1024.0), json!(480), c("float"), c("w_float.png")),
            Ok(1024),
        ),
        (
            "w_max",
            j(json!(1_000_000), json!(480), c("max"), c("w_max.png")),
            Ok(1_000_000),
        ),
        (
            "bad_syntax",
            br#"{"width": 1, "height": "#.to_vec(),
            Err("invalid_json"),
        ),
        (
            "trailing",
            br#"{"width": 1} {"#.to_vec(),
            Err("invalid_json"),
        ),
        (
            "not_utf8",
            b"{\"width\": 1, \"short_caption\": \"\xff\"}".to_vec(),
            Err("invalid_json"),
        ),
        ("array", b"[1, 2, 3]".to_vec(), Err("json_not_object")),
        ("string", br#""width""#.to_vec(), Err("json_not_object")),
        (
            "w_frac",
            j(json!(10.5), json!(480), c("x"), c("w_frac.png")),
            Err("invalid_width"),
        ),
        (
            "w_neg",
            j(json!(-640), json!(480), c("x"), c("w_neg.png")),
            Err("invalid_width"),
        ),
        (
            "w_zero",
            j(json!(0), json!(480), c("x"), c("w_zero.png")),
            Err("invalid_width"),
        ),
        (
            "w_absurd",
            j(json!(1_000_001), json!(480), c("x"), c("w_absurd.png")),
            Err("invalid_width"),
        ),
        (
            "w_huge",
            j(json!(1e300), json!(480), c("x"), c("w_huge.png")),
            Err("invalid_width"),
        ),
        (
            "w_text",
            j(json!("wide"), json!(480), c("x"), c("w_text.png")),
            Err("invalid_width"),
        ),
        (
            "h_neg",
            j(json!(640), json!(-1), c("x"), c("h_neg.png")),
            Err("invalid_height"),
        ),
        (
            "h_missing",
            br#"{"width": 640, "short_caption": "x", "image_name": "h_missing.png"}"#.to_vec(),
            Err("missing_height"),
        ),
        (
            "cap_missing",
            j(json!(640), json!(480), None, c("cap_missing.png")),
            Err("missing_caption"),
        ),
        (
            "cap_number",
            j(json!(640), json!(480), Some(json!(42)), c("cap_number.png")),
            Err("caption_not_string"),
        ),
        (
            "cap_object",
            j(
                json!(640),
                json!(480),
                Some(json!({"a": 1})),
                c("cap_object.png"),
            ),
            Err("caption_not_string"),
        ),
        (
            "cap_empty",
            j(json!(640), json!(480), c("  \n"), c("cap_empty.png")),
            Err("empty_caption"),
        ),
        (
            "name_missing",
            j(json!(640), json!(480), c("x"), None),
            Err("missing_filename"),
        ),
        (
            "name_number",
            j(json!(640), json!(480), c("x"), Some(json!(7))),
            Err("filename_not_string"),
        ),
        (
            "name_slash",
            j(json!(640), json!(480), c("x"), c("sub/name_slash.png")),
            Err("unsafe_filename"),
        ),
        (
            "name_dotdot",
            j(json!(640), json!(480), c("x"), c("../name_dotdot.png")),
            Err("unsafe_filename"),
        ),
        (
            "name_abs",
            j(json!(640), json!(480), c("x"), c("/etc/passwd")),
            Err("unsafe_filename"),
        ),
    ];
    let mut b = new_tar();
    for (key, bytes, want) in &cases {
        if want.is_ok() {
            append_file(&mut b, &format!("{key}.png"), &image(1, 64)).unwrap();
        }
        append_file(&mut b, &format!("{key}.json"), bytes).unwrap();
    }
    // No width: not a sample (the seed's `if "width" not in content: continue`).
    append_file(
        &mut b,
        "no_width.json",
        br#"{"height": 1, "short_caption": "x", "image_name": "nw.png"}"#,
    )
    .unwrap();
    // Below the top of data/: extracted, not a sample (the seed globs data/*.json).
    append_file(&mut b, "sub/deep.json", &sample_json("w_str.png", "deep")).unwrap();
    job.add("json.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "json.tar");
    let mut problems = Vec::new();
    let rows = rows_by_name(&job);
    let mut want_skipped = serde_json::Map::new();
    for (key, _, want) in &cases {
        let member = format!("{key}.json");
        match want {
            Ok(w) => match rows.get(&format!("{key}.png")) {
                Some(row) if row.0 == *w && row.1 == 480 => {}
                other => problems.push(format!(
                    "{member}: expected a row of width {w}, got {other:?}"
                )),
            },
            Err(reason) => {
                *want_skipped.entry(reason.to_string()).or_insert(json!(0)) = json!(
                    want_skipped
                        .get(*reason)
                        .and_then(Value::as_u64)
                        .unwrap_or(0)
                        + 1
                );
                if !issues(s, reason).contains(&member) {
                    problems.push(format!(
                        "{member}: not listed as {reason}; issues: {}",
                        s["issues"]
                    ));
                }
                if rows.keys().any(|n| n.starts_with(key)) {
                    problems.push(format!("{member}: has a row"));
                }
            }
        }
    }
    want_skipped.insert("json_in_subdirectory".into(), json!(1));
    if issues(s, "json_in_subdirectory") != ["sub/deep.json"] {
        problems.push(format!("sub/deep.json not listed; issues: {}", s["issues"]));
    }
    if by_reason(s, "skipped") != want_skipped {
        problems.push(format!(
            "skipped counts: got {}, want {}",
            s["counts"]["skipped"],
            Value::Object(want_skipped.clone())
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(r["totals"]["skipped"], Value::Object(want_skipped));
    assert_eq!(s["counts"]["json_files"], cases.len() as u64 + 2);
    assert_eq!(s["counts"]["rows"], 3);
    // Captions only for the rows.
    assert_eq!(std::fs::read(job.data().join("w_str.txt")).unwrap(), b"str");
    assert!(!job.data().join("cap_empty.txt").exists());
    assert!(!job.data().join("no_width.txt").exists() && !job.data().join("nw.txt").exists());
    job.assert_contained(&[]);
}

#[test]
fn huge_json_is_extracted_but_skipped_as_too_large() {
    let job = Job::new();
    let caption = "x".repeat(17 << 20);
    let big = serde_json::to_vec(
        &json!({"image_name": "big.png", "width": 640, "height": 480, "short_caption": caption}),
    )
    .unwrap();
    assert!(big.len() > 16 << 20);
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    append_file(&mut b, "big.png", &image(3, 100)).unwrap();
    append_file(&mut b, "big.json", &big).unwrap();
    add_sample(&mut b, "a1");
    job.add("big.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("1", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "big.tar");
    assert_eq!(by_reason(s, "skipped"), reasons(&[("json_too_large", 1)]));
    assert_eq!(issues(s, "json_too_large"), ["big.json"]);
    assert_eq!(
        s["counts"]["rows"], 2,
        "the samples after the big JSON are read"
    );
    assert!(
        std::fs::read(job.data().join("big.json")).unwrap() == big,
        "data/big.json differs from the member"
    );
    // Too large to parse: no row, an empty caption file for its image.
    assert_eq!(std::fs::read(job.data().join("big.txt")).unwrap(), b"");
    assert_eq!(rows_by_name(&job)["a1.png"].2, "caption a1");
    job.assert_contained(&[]);
}

// ---------------------------------------------------------------- odd but valid layouts

#[test]
fn non_adjacent_sample_members_make_the_right_row() {
    let job = Job::new();
    let mut b = new_tar();
    append_json(&mut b, "far");
    for i in 0..5 {
        add_sample(&mut b, &format!("mid{i}"));
    }
    // The image comes long after its JSON; another JSON comes before its image.
    append_json(&mut b, "late");
    append_file(&mut b, "far.png", &image(9, 300)).unwrap();
    append_file(&mut b, "late.png", &image(8, 300)).unwrap();
    job.add("mixed.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "mixed.tar");
    assert_eq!(s["counts"]["rows"], 7);
    assert_eq!(s["counts"]["json_without_image"], 0);
    assert_eq!(s["counts"]["images_without_json"], 0);
    let rows = read_rows(&job.out.join("dalle3.parquet"));
    // Rows follow the JSON members' order (good.tar sorts first).
    assert_eq!(
        rows[2],
        (640, 480, "caption far".to_string(), "far.png".to_string())
    );
    assert_eq!(
        rows[8],
        (640, 480, "caption late".to_string(), "late.png".to_string())
    );
    assert_eq!(
        std::fs::read(job.data().join("far.txt")).unwrap(),
        b"caption far"
    );
    assert_eq!(
        std::fs::read(job.data().join("far.png")).unwrap(),
        image(9, 300)
    );
    job.assert_contained(&[]);
}

#[test]
fn gnu_and_pax_long_names_are_read_in_full() {
    let job = Job::new();
    let gnu_key = format!("gnu-{}", "g".repeat(140));
    let pax_key = format!("pax-{}", "p".repeat(140));
    let deep = format!("{}/deep-file.bin", ["dir"; 40].join("/"));
    let mut b = new_tar();
    // tar::Builder writes GNU ././@LongLink records for names over 100 bytes.
    add_sample(&mut b, &gnu_key);
    append_file(&mut b, &deep, b"deep").unwrap();
    // PAX: an `x` record with the path, then a ustar header with a cut name.
    for (name, data) in [
        (format!("{pax_key}.png"), image(5, 300)),
        (
            format!("{pax_key}.json"),
            sample_json(&format!("{pax_key}.png"), "pax caption"),
        ),
    ] {
        b.append_pax_extensions([("path", name.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.as_ustar_mut()
            .unwrap()
            .name
            .copy_from_slice(&name.as_bytes()[..100]);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    job.add("long.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "long.tar");
    assert_eq!(s["counts"]["rows"], 2);
    assert_eq!(s["counts"]["members"], 5);
    assert_eq!(s["issues"], json!([]), "no problem with long names");
    let rows = rows_by_name(&job);
    assert_eq!(
        rows[&format!("{gnu_key}.png")].2,
        format!("caption {gnu_key}")
    );
    assert_eq!(rows[&format!("{pax_key}.png")].2, "pax caption");
    assert_eq!(
        std::fs::read(job.data().join(format!("{pax_key}.png"))).unwrap(),
        image(5, 300)
    );
    assert_eq!(
        std::fs::read(job.data().join(format!("{pax_key}.txt"))).unwrap(),
        b"pax caption"
    );
    assert!(job.data().join(format!("{gnu_key}.png")).is_file());
    assert_eq!(std::fs::read(job.data().join(&deep)).unwrap(), b"deep");
    assert!(
        !job.data().join(&pax_key[..100]).exists(),
        "the cut ustar name was used"
    );
    job.assert_contained(&[]);
}

#[test]
fn member_names_too_long_for_the_filesystem_are_refused() {
    let job = Job::new();
    // A 300-byte component (NAME_MAX is 255) and a 4,200-byte path (PATH_MAX is 4096).
    let long_component = format!("{}.png", "n".repeat(300));
    let long_path = format!("{}/f.bin", vec!["d".repeat(200); 21].join("/"));
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    add_raw_file(&mut b, long_component.as_bytes(), b"too long");
    add_raw_file(&mut b, long_path.as_bytes(), b"too long");
    add_sample(&mut b, "a1");
    job.add("long.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "long.tar");
    assert_eq!(
        s["attempts"], 1,
        "a member name is not a disk problem: no retry"
    );
    assert_eq!(
        by_reason(s, "rejected_members"),
        reasons(&[("name_too_long", 2)])
    );
    assert_eq!(
        issues(s, "name_too_long"),
        [long_component.as_str(), long_path.as_str()]
    );
    assert_eq!(s["counts"]["rows"], 2, "the samples after them are kept");
    job.assert_contained(&[]);
}

#[test]
fn same_member_twice_in_a_shard_is_counted_and_the_later_copy_wins() {
    let job = Job::new();
    let mut b = new_tar();
    append_file(&mut b, "dup.png", b"first").unwrap();
    add_sample(&mut b, "a0");
    append_file(&mut b, "dup.png", b"second").unwrap();
    append_json(&mut b, "dup");
    job.add("dup.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "dup.tar");
    assert_eq!(s["counts"]["duplicate_members"], 1);
    assert_eq!(r["totals"]["duplicate_members"], 1);
    assert_eq!(issues(s, "duplicate_member"), ["dup.png"]);
    assert_eq!(
        std::fs::read(job.data().join("dup.png")).unwrap(),
        b"second"
    );
    assert_eq!(s["counts"]["rows"], 2);
    job.assert_contained(&[]);
}

/// The shard `name` after a job in `mode` on one good sample plus, for each
/// `(key, json)`, the image `<key>.png` and that JSON as `<key>.json`.
fn shard_with_jsons(mode: &str, name: &str, jsons: &[(&str, Value)]) -> Value {
    let job = Job::new();
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    for (key, json) in jsons {
        append_file(&mut b, &format!("{key}.png"), &image(3, 300)).unwrap();
        let bytes = serde_json::to_vec(json).unwrap();
        append_file(&mut b, &format!("{key}.json"), &bytes).unwrap();
    }
    job.add(name, &finish(b));
    job.run("1", &["--mode", mode]).assert_ok();
    shard(&job.report(), name).clone()
}

/// A JSON without `width` is no row (the seed's rule), but it still names
/// its image: that image is not "without JSON", in either mode.
#[test]
fn an_image_named_by_a_json_without_width_is_not_an_orphan() {
    for mode in ["extract", "index"] {
        let no_width = json!({"image_name": "nw.png", "short_caption": "c"});
        let s = shard_with_jsons(mode, "nowidth.tar", &[("nw", no_width)]);
        assert_eq!(s["counts"]["rows"], 1, "{mode}: {s:#}");
        assert_eq!(s["counts"]["images_without_json"], 0, "{mode}: {s:#}");
        assert_eq!(s["counts"]["json_without_image"], 0, "{mode}: {s:#}");
        assert!(issues(&s, "image_without_json").is_empty(), "{mode}: {s:#}");
    }
}

/// A JSON with width that makes no row (empty caption, bad width) still
/// names its image: the image is left out (`no_row`), not an orphan.
#[test]
fn an_image_whose_json_made_no_row_is_left_out_not_an_orphan() {
    for mode in ["extract", "index"] {
        let jsons = [
            (
                "empty",
                json!({"image_name": "empty.png", "width": 4, "height": 4, "short_caption": ""}),
            ),
            (
                "badw",
                json!({"image_name": "badw.png", "width": null, "height": 4, "short_caption": "c"}),
            ),
        ];
        let s = shard_with_jsons(mode, "norow.tar", &jsons);
        assert_eq!(s["counts"]["rows"], 1, "{mode}: {s:#}");
        assert_eq!(s["counts"]["images_without_json"], 0, "{mode}: {s:#}");
        assert!(issues(&s, "image_without_json").is_empty(), "{mode}: {s:#}");
        assert_eq!(s["counts"]["images_left_out"]["no_row"], 2, "{mode}: {s:#}");
        assert_eq!(issues(&s, "empty_caption"), ["empty.json"], "{mode}: {s:#}");
        assert_eq!(issues(&s, "invalid_width"), ["badw.json"], "{mode}: {s:#}");
    }
}

#[test]
fn json_without_image_and_image_without_json_are_counted_and_named() {
    let job = Job::new();
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    append_json(&mut b, "lonely_json");
    append_file(&mut b, "lonely_image.jpg", &image(2, 50)).unwrap();
    job.add("orphans.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "orphans.tar");
    assert_eq!(s["counts"]["json_without_image"], 1);
    assert_eq!(s["counts"]["images_without_json"], 1);
    assert_eq!(issues(s, "json_without_image"), ["lonely_json.png"]);
    assert_eq!(issues(s, "image_without_json"), ["lonely_image.jpg"]);
    assert_eq!(r["totals"]["json_without_image"], 1);
    assert_eq!(r["totals"]["images_without_json"], 1);
    // The row of the JSON stays (as in the seed); the image is extracted.
    assert_eq!(s["counts"]["rows"], 2);
    assert!(rows_by_name(&job).contains_key("lonely_json.png"));
    assert_eq!(
        std::fs::read(job.data().join("lonely_image.jpg")).unwrap(),
        image(2, 50)
    );
    job.assert_contained(&[]);
}

/// A JSON twice in one shard: `tar xf` leaves the later file and the
/// seed's compile.py reads only it, so only the later makes a row, also
/// when it has no width (its image then has no row at all). The same in
/// index mode and when rows wait for their image's verdict (`--dims image`).
#[test]
fn a_json_twice_in_a_shard_makes_only_the_later_ones_row() {
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    append_file(&mut b, "two.png", &image(5, 300)).unwrap();
    append_file(&mut b, "two.json", &sample_json("two.png", "the first")).unwrap();
    append_file(&mut b, "two.json", &sample_json("two.png", "the second")).unwrap();
    append_file(&mut b, "gone.png", &image(6, 300)).unwrap();
    append_file(&mut b, "gone.json", &sample_json("gone.png", "replaced")).unwrap();
    let no_width = json!({"image_name": "gone.png", "short_caption": "no width"});
    let no_width = serde_json::to_vec(&no_width).unwrap();
    append_file(&mut b, "gone.json", &no_width).unwrap();
    let tar = finish(b);
    let variants: [&[&str]; 4] = [
        &["--mode", "extract"],
        &["--mode", "extract", "--dims", "image"],
        &["--mode", "index"],
        &["--mode", "index", "--dims", "image"],
    ];
    for args in variants {
        let job = Job::new();
        let shard_path = job.add("twice.tar", &tar);
        job.run("1", args).assert_ok();
        let rows = read_rows(&job.out.join("dalle3.parquet"));
        let got: Vec<_> = rows.iter().map(|r| (r.3.as_str(), r.2.as_str())).collect();
        let want = [("a0.png", "caption a0"), ("two.png", "the second")];
        assert_eq!(got, want, "{args:?}");
        let r = job.report();
        assert_eq!((&r["rows"], &r["fragment_rows"]), (&json!(2), &json!(2)));
        let s = shard(&r, "twice.tar");
        assert_eq!(
            s["counts"]["images_left_out"],
            json!({"no_width": 1}),
            "{args:?}"
        );
        if args[1] == "extract" {
            assert_data_matches_seed(&job.out, &[shard_path]);
            // gone.png has no row now: its caption file is the one an image
            // without a row gets (its JSON's caption), not the withdrawn row's.
            let txt = std::fs::read(job.data().join("gone.txt")).unwrap();
            assert_eq!(txt, b"no width", "{args:?}");
            assert_eq!(s["counts"]["captions_for_unlisted_images"], 1);
            assert_eq!(
                std::fs::read(job.data().join("two.txt")).unwrap(),
                b"the second"
            );
        } else {
            let index = std::fs::read(job.out.join("index/twice.json")).unwrap();
            let index: Value = serde_json::from_slice(&index).unwrap();
            assert_eq!(index["files"]["two.png"]["captions"], "the second");
            assert!(index["files"].get("gone.png").is_none(), "{index:#}");
        }
        let out = job.out.to_str().unwrap();
        let verify = run_raw(&["verify", out, "--deep"], &[]);
        assert!(verify.status.success(), "{}", explain(&["verify"], &verify));
    }
}

#[test]
fn same_name_in_two_shards_keeps_the_later_shards_file_and_row_only() {
    let job = Job::new();
    for (name, caption) in [("a.tar", "from a"), ("b.tar", "from b")] {
        let mut b = new_tar();
        append_file(&mut b, "same.png", caption.as_bytes()).unwrap();
        append_file(&mut b, "same.json", &sample_json("same.png", caption)).unwrap();
        add_sample(&mut b, &format!("own-{}", &name[..1]));
        job.add(name, &finish(b));
    }
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    // The seed's compile.py reads data/same.json, which is b's: one row.
    let rows = read_rows(&job.out.join("dalle3.parquet"));
    let same: Vec<_> = rows.iter().filter(|r| r.3 == "same.png").collect();
    assert_eq!(same.len(), 1, "only the row of the JSON data/ holds");
    assert_eq!(same[0].2, "from b");
    assert_eq!(r["rows_shadowed"], 1);
    assert_eq!(
        r["rows"].as_u64().unwrap() + 1,
        r["fragment_rows"].as_u64().unwrap()
    );
    assert_eq!(
        r["json_replaced_listed"],
        json!([{"json": "same.json", "shard": "a.tar", "by": "b.tar"}])
    );
    assert_eq!(r["duplicate_filenames"], 0, "no two rows name one image");
    // Shards run in any order on two workers, but data/ holds the later
    // shard's file, as `tar xf` of the shards in order leaves it (the end
    // check compares the bytes of a path two shards wrote, not only its
    // size: here both are 6 bytes).
    let img = std::fs::read(job.data().join("same.png")).unwrap();
    assert_eq!(img, b"from b");
    let txt = std::fs::read(job.data().join("same.txt")).unwrap();
    assert_eq!(txt, b"from b");
    job.assert_contained(&[]);
}

/// A PNG whose header says `w` x `h` (signature and IHDR; the header check
/// reads no further).
fn png_sized(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    v.extend(image(seed, 64).into_iter().skip(8));
    v
}

fn sized_json(image_name: &str, caption: &str, w: u32, h: u32) -> Vec<u8> {
    let j = json!({"image_name": image_name, "short_caption": caption, "width": w, "height": h});
    serde_json::to_vec(&j).unwrap()
}

/// Samples split across shards, as `tar xf` of the shards in order pairs
/// them: an image a later shard replaced under an earlier shard's row
/// (`x`), a JSON whose image only a later shard has (`w`), and the reverse
/// (`y`). The table and `data/` are the seed's; each caption file holds its
/// row's caption even where a later shard wrote the caption of an image
/// without a row there; each such image is checked against its row (a size
/// unlike the row's is in the report, and `verify --deep` passes); with
/// `--dims image` the row takes the image's size. A changed caption file the
/// job's end wrote is found and put back by a re-run.
#[test]
fn a_sample_split_across_shards_is_paired_as_tar_xf_pairs_it() {
    let mut a = new_tar();
    append_file(&mut a, "x.png", &png_sized(3, 3, 1)).unwrap();
    append_file(&mut a, "x.json", &sized_json("x.png", "x from a", 3, 3)).unwrap();
    append_file(&mut a, "w.json", &sized_json("w.png", "w from a", 9, 9)).unwrap();
    append_file(&mut a, "y.png", &png_sized(4, 4, 2)).unwrap();
    append_file(&mut a, "a0.png", &png_sized(7, 7, 5)).unwrap();
    append_file(&mut a, "a0.json", &sized_json("a0.png", "a0", 7, 7)).unwrap();
    let mut b = new_tar();
    append_file(&mut b, "x.png", &png_sized(6, 6, 3)).unwrap();
    append_file(&mut b, "w.png", &png_sized(5, 5, 4)).unwrap();
    append_file(&mut b, "y.json", &sized_json("y.png", "y from b", 9, 9)).unwrap();
    append_file(&mut b, "b0.png", &png_sized(8, 8, 6)).unwrap();
    append_file(&mut b, "b0.json", &sized_json("b0.png", "b0", 8, 8)).unwrap();
    let (a, b) = (finish(a), finish(b));
    for dims in ["json", "image"] {
        let job = Job::new();
        let shards = [job.add("a.tar", &a), job.add("b.tar", &b)];
        job.run("2", &["--dims", dims]).assert_ok();
        let (_, unlisted) = assert_data_matches_seed_dims(&job.out, &shards, dims);
        assert_eq!(unlisted, 0, "every caption file is a row's");
        let r = job.report();
        assert_eq!(r["verdict"], "ok");
        assert_eq!(r["rows_paired_across_shards"], 3, "{r:#}");
        assert_eq!(r["rows_paired_listed"], json!(["x.png", "w.png", "y.png"]));
        assert_eq!(r["totals"]["image_problems"], json!({"dims_mismatch": 3}));
        assert_eq!(issues_of(&r, "a.tar", "image_issues"), ["x.png", "w.png"]);
        assert_eq!(issues_of(&r, "b.tar", "image_issues"), ["y.png"]);
        for (txt, caption) in [
            ("x.txt", "x from a"),
            ("w.txt", "w from a"),
            ("y.txt", "y from b"),
        ] {
            assert_eq!(
                std::fs::read(job.data().join(txt)).unwrap(),
                caption.as_bytes()
            );
        }
        let out = job.out.to_str().unwrap();
        let verify = run_raw(&["verify", out, "--deep"], &[]);
        assert!(verify.status.success(), "{}", explain(&["verify"], &verify));

        // Same size, other bytes: found by the judge, put back by a re-run.
        std::fs::write(job.data().join("x.txt"), b"x from b").unwrap();
        let verify = run_raw(&["verify", out], &[]);
        let said = String::from_utf8_lossy(&verify.stdout).into_owned();
        assert!(
            !verify.status.success() && said.contains("data/x.txt"),
            "{said}"
        );
        job.run("2", &["--dims", dims]).assert_ok();
        assert_eq!(
            std::fs::read(job.data().join("x.txt")).unwrap(),
            b"x from a"
        );
        let verify = run_raw(&["verify", out, "--deep"], &[]);
        assert!(verify.status.success(), "{}", explain(&["verify"], &verify));
        job.assert_contained(&[]);
    }
}

/// [`assert_data_matches_seed`], with the rows' sizes of the images under
/// `--dims image`.
fn assert_data_matches_seed_dims(out: &Path, shards: &[PathBuf], dims: &str) -> (Expected, u64) {
    if dims == "json" {
        return assert_data_matches_seed(out, shards);
    }
    let rows = read_rows(&out.join("dalle3.parquet"));
    let sizes: Vec<_> = rows.iter().map(|r| (r.3.clone(), r.0, r.1)).collect();
    for (name, w, h) in &sizes {
        let png = std::fs::read(out.join("data").join(name)).unwrap();
        let real = (
            i64::from(u32::from_be_bytes(png[16..20].try_into().unwrap())),
            i64::from(u32::from_be_bytes(png[20..24].try_into().unwrap())),
        );
        assert_eq!(
            (*w, *h),
            real,
            "{name}: --dims image gives the image's size"
        );
    }
    let e = oracle(shards, "short_caption");
    let mut got = read_tree(&out.join("data"));
    let unlisted = take_unlisted_captions(&mut got, &e.files);
    assert_eq!(got, e.files, "data/ differs from the seed's");
    (e, unlisted)
}

/// The member names of `kind` (`issues` or `image_issues`) of shard `name`.
fn issues_of(r: &Value, name: &str, kind: &str) -> Vec<String> {
    let s = shard(r, name);
    s[kind]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["member"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn non_utf8_member_names_are_extracted_with_their_raw_bytes() {
    let job = Job::new();
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    add_raw_file(&mut b, b"caf\xe9.bin", b"latin-1 name");
    add_raw_file(&mut b, b"d\xff\xfe/x\x01y.jpg", b"binary dir name");
    job.add("bytes.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let data = job.data();
    assert_eq!(
        std::fs::read(data.join(OsStr::from_bytes(b"caf\xe9.bin"))).unwrap(),
        b"latin-1 name"
    );
    assert_eq!(
        std::fs::read(data.join(OsStr::from_bytes(b"d\xff\xfe/x\x01y.jpg"))).unwrap(),
        b"binary dir name"
    );
    let r = job.report();
    let s = shard(&r, "bytes.tar");
    assert_eq!(s["counts"]["files_extracted"], 4);
    assert_eq!(s["counts"]["rows"], 1);
    assert_eq!(s["counts"]["rejected_members"], json!({}));
    job.assert_contained(&[]);
}

#[test]
fn unusual_unicode_in_captions_and_names_is_kept_exactly() {
    let job = Job::new();
    let captions = [
        (
            "combining",
            "e\u{301}le\u{300}ve \u{5d0}\u{5b8} \u{202e}reversed\u{202c}",
        ),
        ("emoji", "👩‍👩‍👧‍👦 family \u{fe0f}\u{200d} 🏳️‍🌈 𝕌𝕟𝕚𝕔𝕠𝕕𝕖"),
        (
            "separators",
            "line\u{2028}para\u{2029}tab\tcr\r\nbom\u{feff}end",
        ),
        ("controls", "nul\u{0}bell\u{7}del\u{7f}"),
        ("猫 ☃", "雪だるま ☃ と猫 🐈"),
    ];
    let mut b = new_tar();
    for (key, caption) in captions {
        append_file(&mut b, &format!("{key}.png"), &image(4, 40)).unwrap();
        append_file(
            &mut b,
            &format!("{key}.json"),
            &sample_json(&format!("{key}.png"), caption),
        )
        .unwrap();
    }
    // A lone UTF-16 surrogate escape cannot become a caption (Python would
    // fail to write it): skipped, not a crash.
    append_file(
        &mut b,
        "surrogate.json",
        br#"{"image_name": "surrogate.png", "width": 1, "height": 1, "short_caption": "bad \ud800 half"}"#,
    )
    .unwrap();
    job.add("uni.tar", &finish(b));
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let rows = rows_by_name(&job);
    for (key, caption) in captions {
        let name = format!("{key}.png");
        assert_eq!(rows[&name].2, caption, "caption of {name}");
        assert_eq!(
            std::fs::read(job.data().join(format!("{key}.txt"))).unwrap(),
            caption.as_bytes()
        );
    }
    let r = job.report();
    let s = shard(&r, "uni.tar");
    assert_eq!(s["counts"]["rows"], captions.len() as u64);
    assert_eq!(by_reason(s, "skipped"), reasons(&[("invalid_json", 1)]));
    assert_eq!(issues(s, "invalid_json"), ["surrogate.json"]);
    job.assert_contained(&[]);
}

/// Samples in the many-members shard (two members each). 100,000 samples
/// (200,000 members) take about a minute in a debug build; set
/// `HOSTILE_MANY_SAMPLES=100000` to run the full size.
fn many_samples() -> usize {
    std::env::var("HOSTILE_MANY_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000)
}

#[test]
fn shard_with_very_many_tiny_members() {
    let job = Job::new();
    let n = many_samples();
    let path = job.input.join("many.tar");
    {
        let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        let mut b = tar::Builder::new(f);
        for i in 0..n {
            let key = format!("m{i:06}");
            append_file(&mut b, &format!("{key}.jpg"), b"\xff\xd8\xff").unwrap();
            let j = format!(
                r#"{{"image_name":"{key}.jpg","width":8,"height":8,"short_caption":"c{i}"}}"#
            );
            append_file(&mut b, &format!("{key}.json"), j.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
    }
    job.add_good("good.tar", "g", 2);
    let started = std::time::Instant::now();
    let run = job.run("2", &[]);
    eprintln!(
        "{} members: {:.1} s",
        2 * n,
        started.elapsed().as_secs_f64()
    );
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "many.tar");
    assert_eq!(s["counts"]["members"], 2 * n as u64);
    assert_eq!(s["counts"]["rows"], n as u64);
    assert_eq!(s["counts"]["captions_written"], n as u64);
    assert_eq!(s["issues"], json!([]));
    let last = format!("m{:06}", n - 1);
    assert_eq!(
        std::fs::read(job.data().join(format!("{last}.txt"))).unwrap(),
        format!("c{}", n - 1).as_bytes()
    );
    assert_eq!(read_rows(&job.out.join("dalle3.parquet")).len(), n + 2);
    job.assert_contained(&[]);
}

#[test]
fn unusual_shard_file_names_work() {
    let job = Job::new();
    let names = [
        "with space & ünïcödé.tar",
        "new\nline.tar",
        "-dash.tar",
        "a'quote\".tar",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut b = new_tar();
        add_sample(&mut b, &format!("s{i}"));
        job.add(name, &finish(b));
    }
    job.add_good("good.tar", "g", 2);

    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    for (i, name) in names.iter().enumerate() {
        let s = shard(&r, name);
        assert_eq!(s["state"], "done");
        assert_eq!(s["counts"]["rows"], 1);
        assert!(job.data().join(format!("s{i}.txt")).is_file());
    }
    job.assert_contained(&[]);
}

#[test]
fn non_utf8_shard_file_name_is_not_silently_dropped() {
    let job = Job::new();
    let mut b = new_tar();
    add_sample(&mut b, "x0");
    std::fs::write(job.input.join(OsStr::from_bytes(b"caf\xe9.tar")), finish(b)).unwrap();
    job.add_good("good.tar", "g", 2);

    let run = job.run("1", &[]);
    let r = job.report();
    let listed = r["shards_total"] == 2
        || r["problems"].to_string().contains("caf")
        || r["failures"].to_string().contains("caf");
    assert!(
        listed,
        "the non-UTF-8 shard is in neither shards, failures nor problems\n{}\n{r:#}",
        run.explain()
    );
}

// ---------------------------------------------------------------- hostile output directory

#[test]
fn unwritable_output_is_a_clear_error() {
    let job = Job::new();
    job.add_good("good.tar", "g", 2);
    // As root, permission bits do not stop writes: an OUT that is a regular file does.
    std::fs::write(&job.out, b"not a directory").unwrap();
    let run = job.run("1", &[]);
    assert!(
        !run.output.status.success(),
        "expected a failure\n{}",
        run.explain()
    );
    let all = run.all_output();
    assert!(!all.contains("panicked"), "{}", run.explain());
    assert!(
        all.contains(job.out.to_str().unwrap()),
        "the error does not name OUT\n{}",
        run.explain()
    );
    assert!(
        all.to_lowercase().contains("cannot"),
        "not a clear error\n{}",
        run.explain()
    );
    assert_eq!(
        std::fs::read(&job.out).unwrap(),
        b"not a directory",
        "OUT (a file) was changed"
    );

    // Not root: a read-only OUT directory.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("note: running as root; the chmod 0555 part is skipped (root writes anyway)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::remove_file(&job.out).unwrap();
    std::fs::create_dir(&job.out).unwrap();
    std::fs::set_permissions(&job.out, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = job.run("1", &[]);
    std::fs::set_permissions(&job.out, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !run.output.status.success(),
        "expected a failure\n{}",
        run.explain()
    );
    let all = run.all_output();
    assert!(!all.contains("panicked"), "{}", run.explain());
    assert!(
        all.contains(job.out.to_str().unwrap()) && all.contains("ermission"),
        "{}",
        run.explain()
    );
}

/// Unmounts a tmpfs when dropped (also when the test fails).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Runs a job whose shard does not fit on a 1 MiB tmpfs mounted on OUT;
/// `None` (with a note) where mounting is not possible.
fn full_disk_run(job: &Job) -> Option<(Run, Mount)> {
    std::fs::create_dir_all(&job.out).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&job.out)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!(
            "note: cannot mount a 1 MiB tmpfs here (not root?); the full-disk test is skipped"
        );
        return None;
    }
    let mount = Mount(job.out.clone());
    let mut b = new_tar();
    for i in 0..12 {
        append_file(&mut b, &format!("big{i}.png"), &image(i, 200_000)).unwrap();
        append_json(&mut b, &format!("big{i}"));
    }
    job.add("big.tar", &finish(b));
    Some((job.run("1", &["--max-attempts", "1"]), mount))
}

#[test]
fn full_disk_fails_the_shard_with_a_clear_message() {
    let job = Job::new();
    let Some((run, _mount)) = full_disk_run(&job) else {
        return;
    };
    assert!(
        !run.output.status.success(),
        "a full disk must fail the job\n{}",
        run.explain()
    );
    let all = run.all_output();
    assert!(!all.contains("panicked"), "{}", run.explain());
    assert!(
        all.contains("cannot write") && all.contains("free space") && all.contains("big.tar"),
        "no clear message about the full disk\n{}",
        run.explain()
    );
    assert!(
        !job.out.join("dalle3.parquet").exists(),
        "a parquet was written"
    );
    if let Ok(bytes) = std::fs::read(job.out.join("report.json")) {
        let r: Value = serde_json::from_slice(&bytes).unwrap();
        assert_ne!(r["verdict"], "ok");
        assert_eq!(r["failures"][0]["name"], "big.tar");
    }
    assert_no_temporaries(&job.out);
    job.assert_contained(&[]);
}

#[test]
fn full_disk_leaves_no_temporary_report() {
    let job = Job::new();
    let Some((run, _mount)) = full_disk_run(&job) else {
        return;
    };
    assert!(!run.output.status.success(), "{}", run.explain());
    assert_no_temporaries(&job.out);
    job.assert_contained(&[]);
}

/// No temporary file of a failed write (`*.tmp`: the parquet, the report,
/// the entry) is left in `OUT`.
fn assert_no_temporaries(out: &Path) {
    let left: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        left.is_empty(),
        "temporary files left behind in OUT: {left:?}"
    );
}

// ---------------------------------------------------------------- sparse files

/// A GNU tar archive holding `big.db` (10 MiB expanded, 1 byte of data,
/// PAX sparse 1.0) and `after.txt`.
fn sparse_tar() -> Vec<u8> {
    let tmp = tempdir();
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(
            "mkdir src && truncate -s 10M src/big.db
             printf x | dd of=src/big.db bs=1 seek=4096 conv=notrunc status=none
             printf after > src/after.txt
             tar --sparse --format=posix --sparse-version=1.0 -cf a.tar -C src big.db after.txt",
        )
        .current_dir(tmp.path())
        .output()
        .expect("sh and GNU tar run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(tmp.path().join("a.tar")).unwrap()
}

#[test]
fn a_sparse_member_past_max_sparse_size_is_refused_and_named() {
    let flag: &[&str] = &["--max-sparse-size", "1M"];
    let index: &[&str] = &["--max-sparse-size", "1M", "--mode", "index"];
    let env = [("SHARDPREP_MAX_SPARSE_SIZE", "1048576")];
    for (how, extra, envs) in [
        ("flag", flag, &[][..]),
        ("env", &[][..], &env[..]),
        ("index", index, &[][..]),
    ] {
        let job = Job::new();
        job.add("sparse.tar", &sparse_tar());
        job.add_good("good.tar", "g", 2);
        let mut args: Vec<&str> = vec!["run", "--input", path_str(&job.input)];
        args.extend(["--output", path_str(&job.out), "--workers", "2"]);
        args.extend(extra);
        let run = Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            output: run_raw(&args, envs),
        };
        run.assert_ok();
        let r = job.report();
        assert_eq!(r["verdict"], "ok", "{how}: {r:#}");
        let s = shard(&r, "sparse.tar");
        assert_eq!(
            by_reason(s, "rejected_members"),
            reasons(&[("sparse_too_large", 1)]),
            "{how}"
        );
        assert_eq!(issues(s, "sparse_too_large"), ["big.db"], "{how}");
        let detail = s["issues"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("10485760") && detail.contains("1048576-byte limit"),
            "{how}: {detail}"
        );
        assert_eq!(r["totals"]["rejected_members"]["sparse_too_large"], 1);
        assert!(!job.data().join("big.db").exists(), "{how}");
        if how != "index" {
            assert_eq!(
                std::fs::read(job.data().join("after.txt")).unwrap(),
                b"after"
            );
        }
    }
    // Under the default cap (1 TiB) the member is expanded, as a sparse file.
    let job = Job::new();
    job.add("sparse.tar", &sparse_tar());
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let big = std::fs::metadata(job.data().join("big.db")).unwrap();
    assert_eq!(big.len(), 10 << 20);
    assert!(std::os::unix::fs::MetadataExt::blocks(&big) * 512 <= 64 << 10);
}

#[test]
fn max_sparse_size_takes_units_and_refuses_garbage() {
    let help = run_ok(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--max-sparse-size <BYTES>"), "{help}");
    let job = Job::new();
    let run = job.run("1", &["--max-sparse-size", "lots"]);
    assert_eq!(run.output.status.code(), Some(2), "{}", run.explain());
    assert!(
        run.all_output().contains("invalid size \"lots\""),
        "{}",
        run.explain()
    );
}

#[test]
fn an_unknown_type_flag_is_extracted_as_a_file_with_a_warning() {
    let job = Job::new();
    let mut b = new_tar();
    add_sample(&mut b, "a0");
    let h = raw_header(b"odd.bin", tar::EntryType::new(b'Q'), 3, b"");
    b.append(&h, &b"QQQ"[..]).unwrap();
    add_sample(&mut b, "a1");
    job.add("odd.tar", &finish(b));
    job.add_good("good.tar", "g", 2);
    let run = job.run("2", &[]);
    assert_good_shard_done(&job, &run, 2);
    let r = job.report();
    let s = shard(&r, "odd.tar");
    assert_eq!(by_reason(s, "rejected_members"), reasons(&[]));
    assert_eq!(issues(s, "unknown_entry_type"), ["odd.bin"]);
    assert_eq!(r["totals"]["member_warnings"]["unknown_entry_type"], 1);
    assert_eq!(std::fs::read(job.data().join("odd.bin")).unwrap(), b"QQQ");
    assert!(
        run.all_output()
            .contains("member warnings    unknown_entry_type"),
        "{}",
        run.explain()
    );
}

/// Every index format over hostile keys at once: a key longer than a
/// SQLite page holds (its cells overflow), Unicode, braces, a space, a
/// quote, a key twice in a shard and once more in another, a name that is
/// not UTF-8, a JSON without width. The job ends OK, `verify --deep` agrees,
/// and SQLite itself reads `index.sqlite` (which shardprep writes without
/// SQLite's engine) whole: one row per sample energon loads, with its parts.
#[test]
fn hostile_keys_in_every_index_format() {
    let job = Job::new();
    let long = format!("long-{}", "k".repeat(6000));
    let mut b = new_tar();
    let kept_a = [
        "plain",
        long.as_str(),
        "ключ-é",
        "br{ace}s",
        "with space",
        "quote\"d",
        "across",
    ];
    for key in kept_a {
        add_sample(&mut b, key);
    }
    add_sample(&mut b, "twice");
    add_sample(&mut b, "between");
    add_sample(&mut b, "twice");
    add_raw_file(&mut b, b"bad-\xff.png", &image(1, 300));
    append_file(&mut b, "nowidth.png", &image(2, 300)).unwrap();
    append_file(
        &mut b,
        "nowidth.json",
        br#"{"image_name": "nowidth.png", "short_caption": "no width"}"#,
    )
    .unwrap();
    job.add("a.tar", &finish(b));
    let mut b = new_tar();
    add_sample(&mut b, "across");
    add_sample(&mut b, "only-b");
    job.add("b.tar", &finish(b));

    let formats = [
        "--mode",
        "index",
        "--index-format",
        "webshart,energon,dali,wids",
    ];
    let run = job.run("2", &formats);
    let out = path_str(&job.out);
    let verify = run_raw(&["verify", out, "--deep"], &[]);
    assert!(
        verify.status.success(),
        "{}\n{}",
        run.explain(),
        explain(&["verify"], &verify)
    );

    let db = rusqlite::Connection::open(job.out.join("energon/.nv-meta/index.sqlite")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut st = db
        .prepare("SELECT tar_file_id, sample_key FROM samples ORDER BY tar_file_id, sample_index")
        .unwrap();
    let keys: Vec<(i64, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut want: Vec<(i64, String)> = kept_a.iter().map(|k| (0, k.to_string())).collect();
    want.push((0, "between".into()));
    want.push((1, "only-b".into()));
    assert_eq!(
        keys, want,
        "energon's samples: `across` once (the first shard's)"
    );
    let parts: i64 = db
        .query_row("SELECT COUNT(*) FROM sample_parts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(parts, 2 * want.len() as i64, "a png and a json per sample");
    let (long_key, size): (String, i64) = db
        .query_row(
            "SELECT s.sample_key, p.content_byte_size FROM samples s JOIN sample_parts p \
             ON p.tar_file_id = s.tar_file_id AND p.sample_index = s.sample_index \
             WHERE s.sample_key = ?1 AND p.part_name = 'png'",
            [&long],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((long_key.len(), size), (long.len(), 300));
}
