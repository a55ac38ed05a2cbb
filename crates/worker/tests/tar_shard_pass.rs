//! Issue 18 through the shard pass: `data/` equals `tar xf` (members the
//! pass refuses are listed in the manifest, by name and reason).

mod tar_cases;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::ShardManifest;
use shardprep_worker::shard::{LiveProgress, ShardError, ShardTask, process_shard};
use tar_cases::*;

fn run_pass(archive: &Path, out: &Path) -> Result<ShardManifest, ShardError> {
    let task = ShardTask {
        outputs: shardprep_core::mode::JobOutput::Extract {
            members: true,
            captions: false,
        },
        write_threads: 1,
        ..ShardTask::new(
            archive.to_path_buf(),
            "s.tar",
            OutputLayout::new(out.to_path_buf()),
        )
    };
    process_shard(&task, &AtomicBool::new(false), &LiveProgress::default()).map(|o| o.manifest)
}

/// Runs the pass and `tar xf`; `data/` must equal tar's tree minus the
/// members the manifest lists as refused. Returns the manifest.
fn pass_matches_gnu_tar(dir: &Path, archive: &Path) -> ShardManifest {
    assert!(gnu_extract(archive, &dir.join("gnu")));
    let manifest = run_pass(archive, &dir.join("out")).expect("the pass reads what GNU tar reads");
    let mut gnu = tree(&dir.join("gnu"));
    // Only refused members are missing; members with a warning are there.
    for issue in &manifest.issues {
        if manifest.counts.rejected_members.contains_key(&issue.kind) {
            gnu.remove(Path::new(&issue.member));
        }
    }
    assert_eq!(
        tree(&dir.join("out/data")),
        gnu,
        "data/ differs from tar xf"
    );
    manifest
}

#[test]
fn sparse_members_are_expanded_as_sparse_files() {
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
             printf '{{}}' > src/a.json
             tar --sparse {flags} -cf a.tar -C src sub a.json"
            ),
        );
        let manifest = pass_matches_gnu_tar(tmp.path(), &tmp.path().join("a.tar"));
        assert!(
            manifest.counts.rejected_members.is_empty(),
            "{flags}: {:?}",
            manifest.issues
        );
        let db = tmp.path().join("out/data/sub/sparse.db");
        assert!(allocated(&db) <= 64 << 10, "{flags}: holes were written");
    }
}

#[test]
fn header_only_types_with_sizes_lose_no_members() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = concat(&[
        &Hdr::new(b"d", b'5', 1024).bytes(),
        &Hdr::new(b"l", b'2', 600).link(b"a.txt").bytes(),
        &Hdr::new(b"f", b'6', 600).bytes(),
        &file("a.txt", b"A"),
        &Hdr::new(b"vd/", 0, 0).v7().bytes(),
        &long_name(b"first.txt\0"),
        &long_name(b"second.txt\0junk"),
        &file("hdr.txt", b"L"),
        &pax(b'x', &[("path", b"p.txt")]),
        &EOA,
    ]);
    let path = write_archive(tmp.path(), "a.tar", &archive);
    let m = pass_matches_gnu_tar(tmp.path(), &path);
    assert_eq!(m.counts.members, 6);
    assert_eq!(m.counts.files_extracted, 2);
    assert_eq!(
        m.counts.rejected_members.values().sum::<u64>(),
        2,
        "{:?}",
        m.issues
    );
    assert!(tmp.path().join("out/data/vd").is_dir());
}

#[test]
fn an_empty_tar_is_a_done_shard() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = write_archive(tmp.path(), "a.tar", &EOA);
    let m = run_pass(&path, &tmp.path().join("out")).expect("a valid empty tar");
    assert_eq!(m.counts.members, 0);
}

#[test]
fn a_too_large_sparse_member_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    sh(tmp.path(), "mkdir src && truncate -s 2T src/huge.img && printf x | dd of=src/huge.img bs=1 seek=99 conv=notrunc status=none
        printf b > src/b.txt && tar --sparse --format=posix --sparse-version=1.0 -cf a.tar -C src huge.img b.txt");
    let m = run_pass(&tmp.path().join("a.tar"), &tmp.path().join("out")).expect("pass");
    assert_eq!(m.counts.rejected_members.get("sparse_too_large"), Some(&1));
    assert_eq!(m.issues[0].member, "huge.img");
    assert_eq!(
        std::fs::read(tmp.path().join("out/data/b.txt")).expect("b"),
        b"b"
    );
}

#[test]
fn damage_is_permanent_and_input_loss_is_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let full = file("cut.bin", &vec![7u8; 5000]);
    let path = write_archive(tmp.path(), "a.tar", &full[..3512]);
    let e = run_pass(&path, &tmp.path().join("out")).expect_err("truncated");
    assert!(
        matches!(&e, ShardError::Corrupt { member: Some(m), offset: 3512, .. } if m == "cut.bin"),
        "{e}"
    );
    let neg = concat(&[
        &Hdr::new(b"n.txt", b'0', 0).size_field([0xff; 12]).bytes(),
        &EOA,
    ]);
    let path = write_archive(tmp.path(), "b.tar", &neg);
    let e = run_pass(&path, &tmp.path().join("out2")).expect_err("negative");
    assert!(e.to_string().contains("negative size"), "{e}");
}

#[test]
fn unknown_type_flags_are_extracted_as_gnu_tar_does_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tmp");
    let flags = [b'Q', b'N', b'8', b'z', 0x01, 0x80];
    let mut parts: Vec<Vec<u8>> = flags
        .iter()
        .enumerate()
        .map(|(i, &f)| member(Hdr::new(format!("u{i}.txt").as_bytes(), f, 3), b"UUU"))
        .collect();
    // A GNU volume label: its data skipped, nothing written (by tar xf either).
    parts.push(member(Hdr::new(b"label", b'V', 5), b"VVVVV"));
    parts.push(file("a.txt", b"A"));
    parts.push(EOA.to_vec());
    let path = write_archive(tmp.path(), "a.tar", &parts.concat());
    let m = pass_matches_gnu_tar(tmp.path(), &path);
    assert_eq!(m.counts.files_extracted, flags.len() as u64 + 1);
    assert_eq!(
        m.counts.member_warnings.get("unknown_entry_type"),
        Some(&(flags.len() as u64))
    );
    let warned: Vec<_> = m
        .issues
        .iter()
        .filter(|i| i.kind == "unknown_entry_type")
        .collect();
    assert_eq!(warned.len(), flags.len());
    assert!(warned[0].detail.contains("'Q'"), "{}", warned[0].detail);
    assert!(warned[4].detail.contains("0x01"), "{}", warned[4].detail);
    assert_eq!(m.counts.rejected_members.get("volume_label"), Some(&1));
    // Files of unknown type stay in data/ (the refusal filter above must not hide them).
    assert_eq!(
        std::fs::read(tmp.path().join("out/data/u0.txt")).expect("u0"),
        b"UUU"
    );
}

#[test]
fn a_multivolume_continuation_is_refused_as_gnu_tar_refuses_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = concat(&[
        &member(Hdr::new(b"cont.bin", b'M', 3), b"MMM"),
        &file("a.txt", b"A"),
        &EOA,
    ]);
    let path = write_archive(tmp.path(), "a.tar", &archive);
    // GNU tar: "Cannot extract -- file is continued from another volume", goes on, exits 2.
    assert!(!gnu_extract(&path, &tmp.path().join("gnu")));
    let m = run_pass(&path, &tmp.path().join("out")).expect("pass");
    assert_eq!(
        tree(&tmp.path().join("out/data")),
        tree(&tmp.path().join("gnu"))
    );
    assert_eq!(
        m.counts.rejected_members.get("multivolume_continuation"),
        Some(&1)
    );
}

#[test]
fn nul_in_a_pax_path_ends_the_name_as_in_gnu_tar() {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = concat(&[
        &pax(b'x', &[("path", b"ab\0cd.txt")]),
        &file("hdr.txt", b"1"),
        &pax(b'x', &[("path", b"d/x\0y/z.txt")]),
        &file("hdr2.txt", b"2"),
        &pax(b'x', &[("path", b"nul.txt\0")]),
        &file("hdr3.txt", b"3"),
        &EOA,
    ]);
    let path = write_archive(tmp.path(), "a.tar", &archive);
    let m = pass_matches_gnu_tar(tmp.path(), &path);
    assert!(m.counts.rejected_members.is_empty(), "{:?}", m.issues);
    for (name, data) in [("ab", "1"), ("d/x", "2"), ("nul.txt", "3")] {
        let got = std::fs::read(tmp.path().join("out/data").join(name)).expect(name);
        assert_eq!(got, data.as_bytes(), "{name}");
    }
    // A NUL first leaves no name: tar substitutes `.` and fails; refused by name here.
    let lead = concat(&[
        &pax(b'x', &[("path", b"\0lead.txt")]),
        &file("hdr.txt", b"1"),
        &file("a.txt", b"A"),
        &EOA,
    ]);
    let path = write_archive(tmp.path(), "b.tar", &lead);
    assert!(!gnu_extract(&path, &tmp.path().join("gnu-b")));
    let m = run_pass(&path, &tmp.path().join("out-b")).expect("pass");
    assert_eq!(m.counts.rejected_members.get("empty_name"), Some(&1));
    assert_eq!(
        tree(&tmp.path().join("out-b/data")),
        tree(&tmp.path().join("gnu-b"))
    );
}
