//! Both modes agree: they are one walk (`shard::pass`) with two outputs,
//! and this checks it from the outside against GNU tar. On the fidelity
//! corpus (PAX and GNU long names, V7 directories, header-only types with
//! sizes, sparse files, unknown types, NUL in a PAX path, empty and corrupt
//! tars) they see the same members, refuse the same ones, fail with the same
//! words, and every index entry's bytes are the file `tar xf` writes. Sparse
//! members are the one difference: extract mode expands them, index mode
//! refuses them (`sparse_file`).

mod tar_cases;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::Value;
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::{ShardCounts, ShardManifest};
use shardprep_worker::index::{IndexedShard, index_file};
use shardprep_worker::shard::{LiveProgress, ShardError, ShardTask, process_shard};
use shardprep_worker::tar_reader::Limits;
use tar_cases::*;

fn extract(archive: &Path, out: &Path) -> Result<ShardManifest, ShardError> {
    let task = ShardTask {
        outputs: shardprep_core::mode::JobOutput::Extract {
            members: true,
            captions: false,
        },
        ..ShardTask::new(
            archive.to_path_buf(),
            "s.tar",
            OutputLayout::new(out.to_path_buf()),
        )
    };
    process_shard(&task, &AtomicBool::new(false), &LiveProgress::default()).map(|o| o.manifest)
}

fn index(archive: &Path, dir: &Path) -> Result<IndexedShard, ShardError> {
    index_file(
        archive,
        "s.tar",
        &FieldMap::dalle3(),
        Limits::default(),
        &dir.join("index.parquet"),
        &AtomicBool::new(false),
        &LiveProgress::default(),
    )
}

/// The index's `files`: name → (offset, length).
fn entries(done: &IndexedShard) -> BTreeMap<String, (u64, u64)> {
    let doc: Value = serde_json::from_slice(&done.index).expect("index is JSON");
    let files = doc["files"].as_object().expect("files");
    files
        .iter()
        .map(|(k, v)| {
            let n = |f: &str| v[f].as_u64().expect("number");
            (k.clone(), (n("offset"), n("length")))
        })
        .collect()
}

/// Refused members by reason, without the one index mode adds.
fn refused_but_sparse(c: &ShardCounts) -> BTreeMap<String, u64> {
    let mut r = c.rejected_members.clone();
    r.remove("sparse_file");
    r
}

/// Runs GNU tar, extract mode and index mode on `archive`; checks that they
/// agree. Returns both results for case-specific checks.
fn agree(archive: &[u8]) -> (ShardManifest, IndexedShard) {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = write_archive(tmp.path(), "s.tar", archive);
    assert!(gnu_extract(&path, &tmp.path().join("gnu")), "tar xf fails");
    let x = extract(&path, &tmp.path().join("out")).expect("extract mode reads it");
    let mut gnu = tree(&tmp.path().join("gnu"));
    for i in &x.issues {
        if x.counts.rejected_members.contains_key(&i.kind) {
            gnu.remove(&normal(&i.member));
        }
    }
    assert_eq!(
        tree(&tmp.path().join("out/data")),
        gnu,
        "extract mode vs tar xf"
    );
    let ix = index(&path, tmp.path()).expect("index mode reads it");
    assert_eq!(x.counts.members, ix.counts.members, "members seen");
    assert_eq!(x.counts.duplicate_members, ix.counts.duplicate_members);
    assert_eq!(x.counts.member_warnings, ix.counts.member_warnings);
    let sparse: Vec<&str> = ix
        .issues
        .iter()
        .filter(|i| i.kind == "sparse_file")
        .map(|i| i.member.as_str())
        .collect();
    assert_eq!(
        refused_but_sparse(&x.counts),
        refused_but_sparse(&ix.counts),
        "refusals: extract {:?}, index {:?}",
        x.issues,
        ix.issues
    );
    // Every regular file tar xf writes is an index entry holding its bytes
    // (or a sparse member index mode refuses), and nothing else is.
    let tar = std::fs::read(&path).expect("archive");
    let mut gnu_files: BTreeMap<PathBuf, Vec<u8>> = tree(&tmp.path().join("gnu"))
        .into_iter()
        .filter_map(|(p, n)| match n {
            Node::File(bytes) => Some((p, bytes)),
            _ => None,
        })
        .collect();
    for name in &sparse {
        assert!(
            gnu_files.remove(&normal(name)).is_some(),
            "{name}: refused as sparse but not a file tar xf writes"
        );
    }
    // Members extract mode refuses (links...) tar xf may write; drop them too.
    for i in &x.issues {
        if x.counts.rejected_members.contains_key(&i.kind) {
            gnu_files.remove(&normal(&i.member));
        }
    }
    let e = entries(&ix);
    let keyed: BTreeMap<PathBuf, (u64, u64)> = e.iter().map(|(k, v)| (normal(k), *v)).collect();
    assert_eq!(
        keyed.keys().collect::<Vec<_>>(),
        gnu_files.keys().collect::<Vec<_>>(),
        "index entries vs files of tar xf"
    );
    for (name, (offset, len)) in &keyed {
        let at = &tar[*offset as usize..(*offset + *len) as usize];
        assert!(
            at == gnu_files[name].as_slice(),
            "{}: bytes",
            name.display()
        );
    }
    (x, ix)
}

/// A member name as the path it makes (`./` dropped).
fn normal(name: &str) -> PathBuf {
    Path::new(name)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

#[test]
fn long_names_pax_and_gnu_last_one_wins() {
    let long = format!("{}/{}.txt", "d".repeat(120), "n".repeat(130));
    let archive = concat(&[
        &pax(b'x', &[("path", long.as_bytes())]),
        &file("hdr1.txt", b"P"),
        &long_name(b"first.txt\0"),
        &long_name(b"second.txt\0junk"),
        &file("hdr2.txt", b"L"),
        &pax(b'x', &[("path", b"p1.txt")]),
        &pax(b'x', &[("path", b"p2.txt")]),
        &file("hdr3.txt", b"PP"),
        &long_name(b"l.txt\0"),
        &pax(b'x', &[("path", b"pax-beats-long.txt")]),
        &file("hdr4.txt", b"B"),
        &pax(b'x', &[("size", b"3")]),
        &member(Hdr::new(b"sized.txt", b'0', 0), b"SSS"),
        &file("p2.txt", b"dup, the later copy"),
        &EOA,
    ]);
    let (x, ix) = agree(&archive);
    let names: Vec<String> = entries(&ix).into_keys().collect();
    assert!(names.contains(&long), "{names:?}");
    for n in ["second.txt", "p2.txt", "pax-beats-long.txt", "sized.txt"] {
        assert!(names.iter().any(|k| k == n), "{n} in {names:?}");
    }
    assert_eq!(x.counts.members, 6);
    assert_eq!(ix.counts.duplicate_members, 1);
}

#[test]
fn gnu_tar_long_names_in_both_formats() {
    for format in ["gnu", "pax"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let deep = format!("{}/{}", "a".repeat(90), "b".repeat(90));
        sh(
            tmp.path(),
            &format!(
                "mkdir -p src/{deep} && printf deep > src/{deep}/{}.json
                 printf short > src/s.txt && ln -s s.txt src/link
                 tar --format={format} --sort=name -cf a.tar -C src .",
                "c".repeat(110)
            ),
        );
        let (x, ix) = agree(&std::fs::read(tmp.path().join("a.tar")).expect("tar"));
        assert_eq!(x.counts.json_files, 1, "{format}");
        assert_eq!(ix.counts.json_files, 1, "{format}");
        assert_eq!(ix.counts.rejected_members.get("symlink"), Some(&1));
    }
}

#[test]
fn v7_directories_and_header_only_types_with_sizes() {
    let archive = concat(&[
        &Hdr::new(b"vd/", 0, 0).v7().bytes(),
        &member(Hdr::new(b"vd/x.txt", 0, 1).v7(), b"X"),
        &Hdr::new(b"sd/", 0, 512).v7().bytes(),
        &Hdr::new(b"d", b'5', 1024).bytes(),
        &Hdr::new(b"l", b'2', 600).link(b"a.txt").bytes(),
        &Hdr::new(b"h", b'1', 700).link(b"vd/x.txt").bytes(),
        &Hdr::new(b"f", b'6', 600).bytes(),
        &file("a.txt", b"A"),
        &file("b.txt", &b"B".repeat(700)),
        &EOA,
    ]);
    let (x, ix) = agree(&archive);
    assert_eq!(x.counts.members, 9);
    assert_eq!(entries(&ix).len(), 3, "vd/x.txt, a.txt, b.txt");
    assert_eq!(ix.counts.rejected_members.values().sum::<u64>(), 3);
}

#[test]
fn sparse_members_are_refused_by_index_mode_only() {
    for flags in [
        "--format=posix --sparse-version=0.0",
        "--format=posix --sparse-version=0.1",
        "--format=posix --sparse-version=1.0",
        "--format=gnu",
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        sh(
            tmp.path(),
            &format!(
                "mkdir -p src/sub && truncate -s 20M src/sub/sparse.db
                 printf hello | dd of=src/sub/sparse.db bs=1 seek=4096 conv=notrunc status=none
                 printf world | dd of=src/sub/sparse.db bs=1 seek=15000000 conv=notrunc status=none
                 printf '{{}}' > src/a.json && printf plain > src/z.txt
                 tar --sparse {flags} -cf a.tar -C src sub a.json z.txt"
            ),
        );
        let (x, ix) = agree(&std::fs::read(tmp.path().join("a.tar")).expect("tar"));
        assert!(x.counts.rejected_members.is_empty(), "{flags}: expanded");
        assert_eq!(
            ix.counts.rejected_members.get("sparse_file"),
            Some(&1),
            "{flags}: {:?}",
            ix.issues
        );
        let issue = ix.issues.iter().find(|i| i.kind == "sparse_file");
        assert_eq!(issue.map(|i| i.member.as_str()), Some("sub/sparse.db"));
    }
}

#[test]
fn unknown_types_nul_in_pax_path_and_gnu_special_types() {
    let archive = concat(&[
        &member(Hdr::new(b"u.txt", b'Q', 3), b"QQQ"),
        &member(Hdr::new(b"c.txt", b'7', 3), b"CCC"),
        &member(Hdr::new(b"label", b'V', 3), b"VVV"),
        &pax(b'x', &[("path", b"cut.txt\0rest")]),
        &file("hdr.txt", b"N"),
        &file("a.txt", b"A"),
        &EOA,
    ]);
    let (x, ix) = agree(&archive);
    assert_eq!(x.counts.member_warnings.get("unknown_entry_type"), Some(&1));
    assert_eq!(x.counts.rejected_members.get("volume_label"), Some(&1));
    let names: Vec<String> = entries(&ix).into_keys().collect();
    assert_eq!(names, ["a.txt", "c.txt", "cut.txt", "u.txt"]);
}

#[test]
fn an_empty_tar_is_a_done_shard_in_both_modes() {
    for archive in [EOA.to_vec(), long_name(b"x.txt\0")] {
        let (x, ix) = agree(&archive);
        assert_eq!((x.counts.members, ix.counts.members), (0, 0));
    }
}

#[test]
fn damage_fails_both_modes_with_the_same_words() {
    let big = file("cut.bin", &vec![7u8; 5000]);
    let mut bad_sum = Hdr::new(b"bad.txt", b'0', 1).bytes();
    bad_sum[148] = b'7';
    let cases: Vec<Vec<u8>> = vec![
        big[..3512].to_vec(),
        big[..5000].to_vec(),
        concat(&[&file("ok.txt", b"1"), &big[..300]]),
        concat(&[&file("good.txt", b"G"), &bad_sum, &EOA]),
        concat(&[
            &file("ok.txt", b"1"),
            &Hdr::new(b"n.txt", b'0', 0).size_field([0xff; 12]).bytes(),
            &EOA,
        ]),
    ];
    for (i, archive) in cases.iter().enumerate() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = write_archive(tmp.path(), "s.tar", archive);
        let x = extract(&path, &tmp.path().join("out")).expect_err("extract fails");
        let ix = index(&path, tmp.path()).expect_err("index fails");
        assert!(matches!(x, ShardError::Corrupt { .. }), "case {i}: {x}");
        assert_eq!(x.to_string(), ix.to_string(), "case {i}");
    }
}
