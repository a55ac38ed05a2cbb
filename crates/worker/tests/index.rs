//! Index mode on tars built here with real PNG and JPEG members: offsets
//! against the tar crate's reading (of plain tars), long names (GNU and PAX), truncated tars,
//! images without a row (no entry), determinism, and how little of the images is read.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::Value;
use shardprep_core::fields::FieldMap;
use shardprep_worker::index::{IndexedShard, index_file, index_rel_path};
use shardprep_worker::shard::{LiveProgress, ShardError};
use shardprep_worker::tar_reader::Limits;

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = enc.write_header().expect("png header");
    writer.write_image_data(&pixels).expect("png data");
    writer.finish().expect("png end");
    out
}

fn jpeg_bytes(w: u16, h: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let pixels: Vec<u8> = (0..u32::from(w) * u32::from(h) * 3)
        .map(|i| (i * 13 % 253) as u8)
        .collect();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .expect("jpeg");
    out
}

/// A JPEG with `pad` bytes of APP1 (EXIF-like) segments before its frame header.
fn jpeg_with_app1(w: u16, h: u16, pad: usize) -> Vec<u8> {
    let jpeg = jpeg_bytes(w, h);
    let mut out = jpeg[..2].to_vec();
    let mut left = pad;
    while left > 0 {
        let n = left.min(65_000);
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((n + 2) as u16).to_be_bytes());
        out.extend((0..n).map(|i| (i % 199) as u8));
        left -= n;
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn sample_json(name: &str, w: u32, h: u32, caption: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "image_name": name, "width": w, "height": h,
        "short_caption": caption, "long_caption": "long",
    }))
    .expect("json")
}

fn file_header(size: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(1_700_000_000);
    h
}

fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = file_header(data.len());
    b.append_data(&mut h, name, data).expect("append");
}

/// Appends a member whose name is carried by a PAX `path` record.
fn add_pax(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let record = |key: &str, value: &str| {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}")
    };
    let pax = record("path", name);
    let mut xh = tar::Header::new_ustar();
    xh.set_path("PaxHeaders/x").expect("pax path");
    xh.set_size(pax.len() as u64);
    xh.set_entry_type(tar::EntryType::XHeader);
    xh.set_mode(0o644);
    xh.set_cksum();
    b.append(&xh, pax.as_bytes()).expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_path("short-placeholder").expect("path");
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, data).expect("member");
}

fn write_tar(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let bytes = b.into_inner().expect("tar");
    std::fs::write(dir.join(name), &bytes).expect("write tar");
    bytes
}

fn run(dir: &Path, name: &str) -> Result<IndexedShard, ShardError> {
    let live = LiveProgress::default();
    index_file(
        &dir.join(name),
        name,
        &FieldMap::dalle3(),
        Limits::default(),
        &dir.join(format!("{name}.parquet")),
        &AtomicBool::new(false),
        &live,
    )
}

fn files(done: &IndexedShard) -> BTreeMap<String, Value> {
    let doc: Value = serde_json::from_slice(&done.index).expect("index is JSON");
    doc["files"]
        .as_object()
        .expect("files object")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn mixed_tar(dir: &Path) -> Vec<u8> {
    let long_dir = "d".repeat(120);
    write_tar(dir, "mixed.tar", |b| {
        add(b, "a.png", &png_bytes(33, 17));
        add(b, "a.json", &sample_json("a.png", 33, 17, "a png"));
        add(b, "b.jpg", &jpeg_bytes(40, 24));
        add(b, "b.json", &sample_json("b.jpg", 40, 24, "a jpg"));
        add(b, "c.JPEG", &jpeg_with_app1(21, 35, 70_000));
        add(
            b,
            "c.json",
            &sample_json("c.JPEG", 999, 35, "dims disagree"),
        );
        add(b, &format!("{long_dir}/e.png"), &png_bytes(5, 6));
        add_pax(b, &format!("{}.png", "p".repeat(150)), &png_bytes(7, 8));
        add(b, "notes.txt", b"hello");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "evil.png", "/etc/passwd")
            .expect("link");
    })
}

#[test]
fn offsets_and_lengths_match_the_tar_crate() {
    let dir = tempfile::tempdir().expect("tmp");
    let bytes = mixed_tar(dir.path());
    let done = run(dir.path(), "mixed.tar").expect("indexed");
    let index = files(&done);
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut seen = 0;
    // No row names these images: no sample, so no entry.
    let no_row = [
        format!("{}/e.png", "d".repeat(120)),
        format!("{}.png", "p".repeat(150)),
    ];
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = String::from_utf8(entry.path_bytes().into_owned()).expect("utf-8");
        if entry.header().entry_type() == tar::EntryType::Symlink || no_row.contains(&name) {
            assert!(!index.contains_key(&name), "{name} gets no entry");
            continue;
        }
        let e = index.get(&name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            e["offset"].as_u64(),
            Some(entry.raw_file_position()),
            "{name}"
        );
        assert_eq!(e["length"].as_u64(), Some(entry.size()), "{name}");
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read");
        let off = entry.raw_file_position() as usize;
        assert_eq!(&bytes[off..off + content.len()], &content[..], "{name}");
        seen += 1;
    }
    assert_eq!(seen, index.len());
    assert_eq!(done.counts.rejected_members.get("symlink"), Some(&1));
    assert_eq!(done.counts.members, 10);
}

#[test]
fn images_get_dimensions_and_captions_from_their_json() {
    let dir = tempfile::tempdir().expect("tmp");
    mixed_tar(dir.path());
    let done = run(dir.path(), "mixed.tar").expect("indexed");
    let index = files(&done);
    let dims = |k: &str| (index[k]["width"].as_u64(), index[k]["height"].as_u64());
    assert_eq!(dims("a.png"), (Some(33), Some(17)));
    assert_eq!(dims("b.jpg"), (Some(40), Some(24)));
    assert_eq!(
        dims("c.JPEG"),
        (Some(21), Some(35)),
        "SOF found past 70 KB of APP1"
    );
    assert!(
        !index.contains_key(&format!("{}.png", "p".repeat(150))),
        "an image no row names has no entry"
    );
    assert_eq!(index["a.png"]["captions"], "a png");
    assert_eq!(index["b.jpg"]["captions"], "a jpg");
    assert!(
        index["a.json"].get("captions").is_none(),
        "JSONs are plain entries"
    );
    assert!(index["notes.txt"].get("width").is_none());
    assert_eq!(done.stats.dimension_mismatches, 1);
    // The image checks of extract mode, on the image heads.
    assert_eq!(done.counts.image_problems.get("dims_mismatch"), Some(&1));
    assert_eq!(done.counts.images_checked, 4);
    let left_out = [
        ("in_subdirectory".to_string(), 1),
        ("no_row".to_string(), 1),
    ];
    assert_eq!(done.counts.images_left_out, BTreeMap::from(left_out));
    assert_eq!(done.counts.rows, 3);
    assert_eq!(done.counts.json_files, 3);
    assert_eq!(done.counts.images, 5);
}

#[test]
fn gnu_tar_pax_archives_are_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let long = format!("{}-ünï.png", "x".repeat(140));
    std::fs::write(src.join(&long), png_bytes(9, 4)).expect("png");
    let stem = long.trim_end_matches(".png");
    std::fs::write(
        src.join(format!("{stem}.json")),
        sample_json(&long, 9, 4, "pax caption"),
    )
    .expect("json");
    let status = std::process::Command::new("tar")
        .args(["--format=pax", "--sort=name", "-cf"])
        .arg(dir.path().join("pax.tar"))
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    let done = run(dir.path(), "pax.tar").expect("indexed");
    let index = files(&done);
    let key = format!("./{long}");
    let e = &index[&key];
    assert_eq!(
        (e["width"].as_u64(), e["height"].as_u64()),
        (Some(9), Some(4))
    );
    assert_eq!(e["captions"], "pax caption");
    assert_eq!(done.counts.rows, 1);
    let tar = std::fs::read(dir.path().join("pax.tar")).expect("read");
    let off = e["offset"].as_u64().expect("offset") as usize;
    assert_eq!(&tar[off..off + 8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn a_tar_cut_mid_member_fails_naming_the_member() {
    let dir = tempfile::tempdir().expect("tmp");
    let bytes = mixed_tar(dir.path());
    let cut = bytes.len() / 2;
    std::fs::write(dir.path().join("cut.tar"), &bytes[..cut]).expect("write");
    let err = run(dir.path(), "cut.tar").expect_err("a cut tar fails");
    assert!(
        !err.failure_kind().retryable(),
        "a truncated tar stays truncated: {err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("truncated") && msg.contains("cut.tar"),
        "{msg}"
    );
    assert!(
        matches!(
            err,
            ShardError::Corrupt {
                member: Some(_),
                ..
            }
        ),
        "{msg}"
    );
    // A header cut in two.
    let first_data = 512 + png_bytes(33, 17).len().div_ceil(512) * 512;
    std::fs::write(dir.path().join("cut2.tar"), &bytes[..first_data + 100]).expect("write");
    let msg = run(dir.path(), "cut2.tar").expect_err("fails").to_string();
    // The words of the extract pass (both walk the tar with tar_reader).
    assert!(
        msg.contains("ends inside a header") && msg.contains("after member \"a.png\""),
        "{msg}"
    );
}

#[test]
fn broken_and_compressed_inputs_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut bytes = mixed_tar(dir.path());
    bytes[100] ^= 0xFF;
    std::fs::write(dir.path().join("bad.tar"), &bytes).expect("write");
    let msg = run(dir.path(), "bad.tar").expect_err("fails").to_string();
    assert!(msg.contains("checksum"), "{msg}");
    std::fs::write(dir.path().join("gz.tar"), [0x1f, 0x8b, 8, 0]).expect("write");
    let msg = run(dir.path(), "gz.tar").expect_err("fails").to_string();
    assert!(msg.contains("gzip"), "{msg}");
    std::fs::write(dir.path().join("empty.tar"), [0u8; 0]).expect("write");
    let msg = run(dir.path(), "empty.tar").expect_err("fails").to_string();
    assert!(msg.contains("empty, not a tar"), "{msg}");
    // Only end-of-archive blocks: a valid empty tar, a done shard (as in the extract pass).
    std::fs::write(dir.path().join("eoa.tar"), [0u8; 1024]).expect("write");
    let done = run(dir.path(), "eoa.tar").expect("an empty tar is indexed");
    assert_eq!((done.counts.members, files(&done).len()), (0, 0));
}

#[test]
fn the_index_is_byte_identical_across_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    mixed_tar(dir.path());
    let a = run(dir.path(), "mixed.tar").expect("indexed").index;
    let b = run(dir.path(), "mixed.tar").expect("indexed").index;
    assert_eq!(a, b);
    let doc: Value = serde_json::from_slice(&a).expect("json");
    assert_eq!(
        doc["filesize"].as_u64(),
        Some(
            std::fs::metadata(dir.path().join("mixed.tar"))
                .expect("stat")
                .len()
        )
    );
    assert_eq!(doc["path"], "mixed.tar");
}

#[test]
fn large_images_are_seeked_over_not_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let n = 12;
    let mut total = 0;
    write_tar(dir.path(), "big.tar", |b| {
        for i in 0..n {
            // A real JPEG with 2 MB after it: only its head is read.
            let mut img = jpeg_bytes(64, 48);
            img.resize(img.len() + 2_000_000, 0);
            total += img.len();
            add(b, &format!("{i:03}.jpg"), &img);
            add(
                b,
                &format!("{i:03}.json"),
                &sample_json(&format!("{i:03}.jpg"), 64, 48, "big"),
            );
        }
    });
    let done = run(dir.path(), "big.tar").expect("indexed");
    assert_eq!(done.stats.images_with_dimensions, n);
    let read = done.counts.bytes_read;
    assert!(
        read * 20 < total as u64,
        "read {read} of {total} image bytes"
    );
}

#[test]
fn duplicates_keep_the_later_copy_and_unsafe_names_get_no_entry() {
    let dir = tempfile::tempdir().expect("tmp");
    let bytes = write_tar(dir.path(), "dup.tar", |b| {
        add(b, "a.png", &png_bytes(2, 2));
        add(b, "a.png", &png_bytes(3, 3));
        add(b, "a.json", &sample_json("a.png", 3, 3, "the later copy"));
        let data = png_bytes(4, 4);
        let mut h = file_header(data.len());
        // `append_data` refuses `..`; write the name into the header directly.
        h.as_old_mut().name[..13].copy_from_slice(b"../escape.png");
        h.set_cksum();
        b.append(&h, &data[..]).expect("append");
    });
    let _ = bytes;
    let done = run(dir.path(), "dup.tar").expect("indexed");
    let index = files(&done);
    assert_eq!(index["a.png"]["width"].as_u64(), Some(3));
    assert_eq!(done.counts.duplicate_members, 1);
    assert_eq!(index.len(), 2, "a.png and a.json");
    assert_eq!(
        done.counts.rejected_members.get("parent_dir_path"),
        Some(&1)
    );
}

#[test]
fn index_paths_follow_webshart_naming() {
    assert_eq!(
        index_rel_path("data-000001.tar").expect("ok"),
        Path::new("data-000001.json")
    );
    assert_eq!(
        index_rel_path("sub/x.y.tar").expect("ok"),
        Path::new("sub/x.y.json")
    );
    assert!(index_rel_path("../x.tar").is_none());
}

/// Keeps `Seek` in use for readers of the offsets (and the import honest).
#[test]
fn an_entry_offset_is_where_a_reader_seeks() {
    let dir = tempfile::tempdir().expect("tmp");
    mixed_tar(dir.path());
    let done = run(dir.path(), "mixed.tar").expect("indexed");
    let e = &files(&done)["b.jpg"];
    let mut f = std::fs::File::open(dir.path().join("mixed.tar")).expect("open");
    f.seek(SeekFrom::Start(e["offset"].as_u64().expect("offset")))
        .expect("seek");
    let mut soi = [0u8; 3];
    f.read_exact(&mut soi).expect("read");
    assert_eq!(soi, [0xFF, 0xD8, 0xFF]);
}
