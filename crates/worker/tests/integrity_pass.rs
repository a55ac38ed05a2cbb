//! Issue 20 through the shard pass: the images themselves are checked
//! (header size against the JSON, full decode, file digests) on shards the
//! generator made with known faults, and the default rows stay the seed's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::RowAccessor;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::ShardManifest;
use shardprep_fixtures::{GenOptions, generate};
use shardprep_worker::integrity::{DimsSource, IntegrityConfig, OnBadImage, dalle3_hash_fields};
use shardprep_worker::shard::{LiveProgress, ShardTask, process_shard};

/// One shard of `samples` with the given faults (no JSON lacks `width`).
fn shard(
    dir: &Path,
    samples: usize,
    image_bytes: usize,
    faults: impl Fn(&mut GenOptions),
) -> (PathBuf, GenOptions) {
    let mut opts = GenOptions {
        shards: 1,
        samples_per_shard: samples,
        image_bytes,
        seed: 7,
        no_width_every: 0,
        ..GenOptions::default()
    };
    faults(&mut opts);
    let paths = generate(&dir.join("in"), &opts).expect("generate");
    (paths[0].clone(), opts)
}

struct Pass {
    manifest: ShardManifest,
    /// (filename, width, height) of each row, in order.
    rows: Vec<(String, i64, i64)>,
    fragment: Vec<u8>,
    out: PathBuf,
}

fn run(shard: &Path, out: &Path, extract: bool, integrity: IntegrityConfig) -> Pass {
    let task = ShardTask {
        outputs: shardprep_core::mode::JobOutput::Extract {
            members: extract,
            captions: true,
        },
        write_threads: 1,
        integrity,
        ..ShardTask::new(
            shard.to_path_buf(),
            "data-000000.tar",
            OutputLayout::new(out.to_path_buf()),
        )
    };
    let done = process_shard(&task, &AtomicBool::new(false), &LiveProgress::default())
        .unwrap_or_else(|e| panic!("the shard failed: {e}"));
    let path = task.layout.tmp_dir().join(&done.fragment_tmp);
    Pass {
        manifest: done.manifest,
        rows: rows(&path),
        fragment: std::fs::read(&path).expect("fragment"),
        out: out.to_path_buf(),
    }
}

fn rows(path: &Path) -> Vec<(String, i64, i64)> {
    let reader = SerializedFileReader::new(File::open(path).expect("open")).expect("parquet");
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let col = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("no {n} in {names:?}"))
    };
    let (f, w, h) = (col("filename"), col("width"), col("height"));
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|r| {
            let r = r.expect("row");
            (
                r.get_string(f).expect("filename").clone(),
                r.get_long(w).expect("width"),
                r.get_long(h).expect("height"),
            )
        })
        .collect()
}

/// Image names of the samples carrying a fault.
fn faulty(
    opts: &GenOptions,
    pass: &Pass,
    pick: impl Fn(shardprep_fixtures::Faults) -> bool,
) -> BTreeSet<String> {
    // Rows are in sample order, one per sample (no JSON lacks width here).
    assert_eq!(pass.rows.len(), opts.samples_per_shard);
    pass.rows
        .iter()
        .enumerate()
        .filter(|(i, _)| pick(opts.faults_of(*i)))
        .map(|(_, r)| r.0.clone())
        .collect()
}

/// Members listed with `kind`, and the count of that reason.
fn listed(m: &ShardManifest, kind: &str) -> (BTreeSet<String>, u64) {
    let members = m
        .image_issues
        .iter()
        .filter(|i| i.kind == kind)
        .map(|i| i.member.clone())
        .collect();
    (
        members,
        m.counts.image_problems.get(kind).copied().unwrap_or(0),
    )
}

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read data/") {
        let p = e.expect("entry").path();
        out.insert(
            p.strip_prefix(dir).expect("under").to_path_buf(),
            std::fs::read(&p).expect("read"),
        );
    }
    out
}

#[test]
fn lying_jsons_are_listed_as_dims_mismatch_and_dims_image_fixes_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, opts) = shard(tmp.path(), 24, 1024, |o| o.lying_dims_every = 4);
    let json = run(
        &path,
        &tmp.path().join("a"),
        true,
        IntegrityConfig::default(),
    );
    let liars = faulty(&opts, &json, |f| f.lying_dims);
    assert_eq!(liars.len(), 6);
    let (members, n) = listed(&json.manifest, "dims_mismatch");
    assert_eq!(members, liars, "{:?}", json.manifest.image_issues);
    assert_eq!(n, 6);
    assert_eq!(json.manifest.counts.images_checked, 24);
    assert!(
        !json
            .manifest
            .counts
            .image_problems
            .contains_key("unreadable_image_header")
    );
    // --dims image: the liars' rows take the image's size, the others are unchanged.
    let cfg = IntegrityConfig {
        dims: DimsSource::Image,
        ..IntegrityConfig::default()
    };
    let image = run(&path, &tmp.path().join("b"), true, cfg);
    assert_eq!(image.rows.len(), json.rows.len());
    for (a, b) in json.rows.iter().zip(&image.rows) {
        assert_eq!(a.0, b.0);
        if liars.contains(&a.0) {
            assert_eq!((a.1 - 128, a.2 - 64), (b.1, b.2), "{}", a.0);
        } else {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn truncated_images_fail_to_decode_and_skip_drops_their_rows_and_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, opts) = shard(tmp.path(), 20, 1024, |o| o.truncated_every = 5);
    let keep = IntegrityConfig {
        check_decode: true,
        ..IntegrityConfig::default()
    };
    let kept = run(&path, &tmp.path().join("a"), true, keep.clone());
    let cut = faulty(&opts, &kept, |f| f.truncated);
    assert_eq!(cut.len(), 4);
    let (members, n) = listed(&kept.manifest, "decode_failed");
    assert_eq!(members, cut, "{:?}", kept.manifest.image_issues);
    assert_eq!(n, 4);
    let skip = IntegrityConfig {
        on_bad_image: OnBadImage::Skip,
        ..keep
    };
    let skipped = run(&path, &tmp.path().join("b"), true, skip);
    let names: BTreeSet<String> = skipped.rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(skipped.rows.len(), 16);
    assert!(names.is_disjoint(&cut), "{names:?}");
    assert_eq!(skipped.manifest.counts.skipped.get("bad_image"), Some(&4));
    assert_eq!(skipped.manifest.counts.rows, 16);
    for image in &cut {
        let stem = image.rsplit_once('.').map(|s| s.0).unwrap_or(image);
        let caption = |p: &Pass| std::fs::read(p.out.join(format!("data/{stem}.txt")));
        assert!(!caption(&kept).expect("kept caption").is_empty());
        // The image stays in data/ (as tar xf leaves it); the trainer's
        // textfile mode finds an empty caption beside it, not the row's.
        assert_eq!(
            caption(&skipped).expect("caption file beside the image"),
            b""
        );
    }
}

#[test]
fn large_streamed_images_are_checked_too_with_and_without_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    // 200 KB images: over the writer pool's cap, so they are streamed.
    let (path, opts) = shard(tmp.path(), 10, 200 << 10, |o| {
        o.truncated_every = 3;
        o.lying_dims_every = 4;
    });
    let cfg = IntegrityConfig {
        check_decode: true,
        ..IntegrityConfig::default()
    };
    for (extract, out) in [(true, "a"), (false, "b")] {
        let pass = run(&path, &tmp.path().join(out), extract, cfg.clone());
        let (liars, n) = listed(&pass.manifest, "dims_mismatch");
        assert_eq!(liars, faulty(&opts, &pass, |f| f.lying_dims));
        assert_eq!(n, 2);
        if extract {
            // Decoded from the file written, as the member passed.
            let (cut, _) = listed(&pass.manifest, "decode_failed");
            assert_eq!(
                cut,
                faulty(&opts, &pass, |f| f.truncated),
                "{:?}",
                pass.manifest.issues
            );
        }
    }
}

#[test]
fn wrong_hashes_are_found_with_the_dalle3_hash_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, opts) = shard(tmp.path(), 21, 1024, |o| o.wrong_hash_every = 7);
    let plain = run(
        &path,
        &tmp.path().join("a"),
        true,
        IntegrityConfig::default(),
    );
    assert!(
        !plain
            .manifest
            .counts
            .image_problems
            .contains_key("hash_mismatch")
    );
    let cfg = IntegrityConfig {
        hashes: dalle3_hash_fields(),
        ..IntegrityConfig::default()
    };
    let checked = run(&path, &tmp.path().join("b"), true, cfg);
    let wrong = faulty(&opts, &checked, |f| f.wrong_hash);
    assert_eq!(wrong.len(), 3);
    let (members, n) = listed(&checked.manifest, "hash_mismatch");
    assert_eq!(members, wrong, "{:?}", checked.manifest.image_issues);
    // Both fields (md5_file_hash, sha512_hash) are wrong in each.
    assert_eq!(n, 6);
    assert_eq!(
        checked.manifest.image_checks.hash_fields,
        ["md5_file_hash=md5", "sha512_hash=sha512"]
    );
}

#[test]
fn checks_that_keep_every_row_change_no_output_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = shard(tmp.path(), 30, 1024, |o| {
        o.lying_dims_every = 4;
        o.truncated_every = 5;
        o.wrong_hash_every = 7;
        o.no_width_every = 9;
    });
    let plain = run(
        &path,
        &tmp.path().join("a"),
        true,
        IntegrityConfig::default(),
    );
    let all = IntegrityConfig {
        check_decode: true,
        hashes: dalle3_hash_fields(),
        ..IntegrityConfig::default()
    };
    let checked = run(&path, &tmp.path().join("b"), true, all);
    assert!(
        checked.manifest.counts.image_problems.len() >= 3,
        "{:?}",
        checked.manifest.counts
    );
    assert_eq!(plain.fragment, checked.fragment, "the fragment changed");
    assert_eq!(
        tree(&plain.out.join("data")),
        tree(&checked.out.join("data"))
    );
    assert_eq!(plain.manifest.counts.rows, checked.manifest.counts.rows);
}
