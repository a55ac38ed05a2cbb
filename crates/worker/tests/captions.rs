//! Caption files the trainer needs beyond the seed's, and caption warnings
//! (issue 16): SimpleTuner's textfile mode reads `<stem>.txt` for every
//! image in `data/`, so an image no row captions gets one too; captions that
//! textfile and parquet modes read differently are counted as warnings.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::json;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::ShardManifest;
use shardprep_fixtures::append_file;
use shardprep_worker::shard::{LiveProgress, ShardTask, process_shard};

/// Writes a tar of `members` and processes it into a fresh `OUT`.
fn run(
    members: &[(impl AsRef<str>, Vec<u8>)],
    write_captions: bool,
    write_threads: usize,
) -> (tempfile::TempDir, ShardManifest) {
    let tmp = tempfile::tempdir().unwrap();
    let shard_path = tmp.path().join("s.tar");
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        append_file(&mut b, name.as_ref(), data).unwrap();
    }
    std::fs::write(&shard_path, b.into_inner().unwrap()).unwrap();
    let task = ShardTask {
        outputs: shardprep_core::mode::JobOutput::Extract {
            members: true,
            captions: write_captions,
        },
        write_threads,
        ..ShardTask::new(
            shard_path,
            "s.tar",
            OutputLayout::new(tmp.path().join("out")),
        )
    };
    let out = process_shard(&task, &AtomicBool::new(false), &LiveProgress::default())
        .unwrap_or_else(|e| panic!("the shard failed: {e}"));
    (tmp, out.manifest)
}

fn sample(image: &str, caption: &str, width: bool) -> Vec<u8> {
    let mut j = json!({"image_name": image, "height": 512, "short_caption": caption});
    if width {
        j["width"] = json!(640);
    }
    j.to_string().into_bytes()
}

fn read(tmp: &tempfile::TempDir, rel: &str) -> Option<String> {
    std::fs::read_to_string(tmp.path().join("out/data").join(rel)).ok()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

/// A shard with every case of an image and its caption.
fn mixed_shard() -> Vec<(&'static str, Vec<u8>)> {
    let bad_height =
        br#"{"image_name":"e.png","width":64,"height":"x","short_caption":"skipped e"}"#;
    vec![
        // A row: the seed's caption file.
        ("a.png", b"img a".to_vec()),
        ("a.json", sample("a.png", "cat a", true)),
        // No width: no row, but the JSON's caption.
        ("b.jpg", b"img b".to_vec()),
        ("b.json", sample("b.jpg", "no width b", false)),
        // No JSON at all: an empty caption file.
        ("c.png", b"img c".to_vec()),
        // A .txt member of the image's stem: left as it is.
        ("d.png", b"img d".to_vec()),
        ("d.txt", b"member text".to_vec()),
        // With width but skipped (bad height): the JSON's caption.
        ("e.png", b"img e".to_vec()),
        ("e.json", bad_height.to_vec()),
        // In a subdirectory: the caption file sits beside it.
        ("sub/f.png", b"img f".to_vec()),
        // The row comes before its image.
        ("g.json", sample("g.png", "cat g", true)),
        ("g.png", vec![7u8; 100_000]),
        // A JSON without width naming no image of the shard: nothing to caption.
        ("h.json", sample("zz.png", "orphan", false)),
    ]
}

#[test]
fn every_extracted_image_gets_a_caption_file_in_textfile_mode() {
    let (tmp, m) = run(&mixed_shard(), true, 0);
    let c = &m.counts;
    // The seed's rows and caption files are unchanged.
    assert_eq!(c.rows, 2);
    assert_eq!(c.captions_written, 2);
    assert_eq!(read(&tmp, "a.txt").as_deref(), Some("cat a"));
    assert_eq!(read(&tmp, "g.txt").as_deref(), Some("cat g"));
    // The images no row captions get one each.
    assert_eq!(c.captions_for_unlisted_images, 4, "{c:?}");
    assert_eq!(read(&tmp, "b.txt").as_deref(), Some("no width b"));
    assert_eq!(read(&tmp, "c.txt").as_deref(), Some(""));
    assert_eq!(read(&tmp, "e.txt").as_deref(), Some("skipped e"));
    assert_eq!(read(&tmp, "sub/f.txt").as_deref(), Some(""));
    assert_eq!(read(&tmp, "d.txt").as_deref(), Some("member text"));
    assert_eq!(read(&tmp, "h.txt"), None, "no image h, no caption h");
    assert_eq!(read(&tmp, "zz.txt"), None);
    // What the trainer walks: every image has its .txt.
    let data = files(&tmp.path().join("out/data"));
    for img in data
        .iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("png" | "jpg")))
    {
        assert!(
            data.contains(&img.with_extension("txt")),
            "{} has no caption file",
            img.display()
        );
    }
    // The files list names the extra caption files too (a redo removes them).
    let tmp_dir = tmp.path().join("out/.shardprep/tmp");
    let files_list = std::fs::read_dir(&tmp_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "files"))
        .unwrap();
    let listed = std::fs::read(files_list).unwrap();
    assert!(listed.windows(9).any(|w| w == b"sub/f.txt"));
}

#[test]
fn writer_threads_write_the_same_caption_files() {
    let (tmp0, m0) = run(&mixed_shard(), true, 0);
    for threads in [1, 3] {
        let (tmp, m) = run(&mixed_shard(), true, threads);
        assert_eq!(m.counts, m0.counts, "{threads} threads");
        assert_eq!(m.issues, m0.issues, "{threads} threads");
        let data0 = files(&tmp0.path().join("out/data"));
        assert_eq!(files(&tmp.path().join("out/data")), data0);
        for f in data0 {
            let f = f.to_str().unwrap();
            assert_eq!(read(&tmp, f), read(&tmp0, f), "{f}, {threads} threads");
        }
    }
}

#[test]
fn parquet_mode_writes_no_caption_files() {
    let (tmp, m) = run(&mixed_shard(), false, 2);
    assert_eq!(m.counts.rows, 2);
    assert_eq!(m.counts.captions_written, 0);
    assert_eq!(m.counts.captions_for_unlisted_images, 0);
    let txt: Vec<PathBuf> = files(&tmp.path().join("out/data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    assert_eq!(txt, [PathBuf::from("d.txt")], "only the .txt member");
}

#[test]
fn captions_with_newlines_or_surrounding_whitespace_are_warned_not_skipped() {
    let captions = [
        ("p1", "two\nlines"),
        ("p2", " padded "),
        ("p3", "fine"),
        ("p4", "ends with a newline\n"),
        ("p5", "windows\r\nline"),
    ];
    let mut members = Vec::new();
    for (key, caption) in captions {
        let img = format!("{key}.png");
        members.push((format!("{key}.json"), sample(&img, caption, true)));
        members.push((img, b"img".to_vec()));
    }
    let (tmp, m) = run(&members, true, 0);
    let c = &m.counts;
    assert_eq!(c.rows, 5, "warnings skip nothing");
    assert_eq!(c.skipped_total(), 0);
    assert_eq!(c.caption_warnings.get("newline"), Some(&3));
    assert_eq!(c.caption_warnings.get("surrounding_whitespace"), Some(&2));
    assert_eq!(c.caption_warnings.len(), 2);
    // The caption files hold the caption exactly, as the parquet does.
    assert_eq!(read(&tmp, "p1.txt").as_deref(), Some("two\nlines"));
    assert_eq!(read(&tmp, "p2.txt").as_deref(), Some(" padded "));
    let listed = |kind: &str| {
        let mut v: Vec<&str> = m
            .issues
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.member.as_str())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed("caption_newline"), ["p1.json", "p4.json", "p5.json"]);
    assert_eq!(
        listed("caption_surrounding_whitespace"),
        ["p2.json", "p4.json"]
    );
}

#[test]
fn a_sparse_image_gets_its_caption_file_too() {
    // SimpleTuner's textfile setup stops on an image in data/ without `<stem>.txt`; GNU sparse
    // members are written through their own path (holes seeked over), which once skipped it.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let img = std::fs::File::create(src.join("holes.png")).unwrap();
    img.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&img, b"data", 2 << 20).unwrap();
    let shard_path = tmp.path().join("s.tar");
    let status = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&shard_path)
        .arg("-C")
        .arg(&src)
        .arg("holes.png")
        .status()
        .expect("GNU tar runs");
    assert!(status.success());
    let task = ShardTask::new(
        shard_path,
        "s.tar",
        OutputLayout::new(tmp.path().join("out")),
    );
    let out = process_shard(&task, &AtomicBool::new(false), &LiveProgress::default())
        .unwrap_or_else(|e| panic!("the shard failed: {e}"));
    let data = tmp.path().join("out/data");
    assert_eq!(
        std::fs::metadata(data.join("holes.png")).unwrap().len(),
        4 << 20
    );
    assert_eq!(read(&tmp, "holes.txt").as_deref(), Some(""));
    assert_eq!(out.manifest.counts.captions_for_unlisted_images, 1);
}
