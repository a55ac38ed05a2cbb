//! One shard's pieces as the worker builds them (`write_attempt`) and the
//! coordinator reads them back (`ShardPiece::read`), for a shard like the
//! bench set's: `SAMPLES` samples (default 25,000) of an image and a JSON,
//! 89% with a row. Prints the time of each step.
//!
//! `cargo bench -p shardprep-formats --bench shard_piece`

use std::collections::BTreeMap;
use std::time::Instant;

use shardprep_core::index_format::IndexFormats;
use shardprep_formats::{MemberKind, ShardInput, ShardPiece, TarMember, write_attempt};

fn input(samples: u64) -> ShardInput {
    let mut input = ShardInput::new("data-000000.tar".into(), "/tmp/data-000000.tar".into(), 0);
    let mut off = 0u64;
    for i in 0..samples {
        let key = format!("{:016x}{i:08}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for (ext, size) in [("png", 1024u64), ("json", 971)] {
            let name = format!("{key}.{ext}");
            let mut raw = name.as_bytes().to_vec();
            raw.resize(100, 0);
            if ext == "png" && i % 9 != 0 {
                input.add_row_image(&name);
            }
            let end = off + 512 + size.div_ceil(512) * 512;
            input.push(
                TarMember {
                    name: name.as_bytes(),
                    start_offset: off,
                    header_offset: off,
                    data_offset: off + 512,
                    size,
                    kind: MemberKind::Regular,
                    raw_header_name: Some(&raw),
                    typeflag: b'0',
                },
                end,
            );
            off = end;
        }
    }
    input.filesize = off + 1024;
    input
}

fn main() {
    let samples: u64 = std::env::var("SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25_000);
    let reps: u64 = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let dir = tempfile::tempdir().expect("tempdir");
    let formats: IndexFormats = "webshart,energon,dali,wids".parse().expect("formats");
    let mut steps: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
    let mut time = |step: &'static str, t: Instant| {
        steps.entry(step).or_default().push(t.elapsed().as_micros());
    };
    for rep in 0..reps {
        let t = Instant::now();
        let inp = input(samples);
        time("1 make input", t);
        let t = Instant::now();
        let piece = write_attempt(dir.path(), rep, &formats, &inp).expect("write");
        time("2 write_attempt", t);
        let t = Instant::now();
        let gs = shardprep_formats::group::groups(&inp);
        time("3 groups", t);
        let t = Instant::now();
        let (_idx, e) = shardprep_formats::energon::shard_pieces(&gs, inp.end_offset);
        time("4 energon", t);
        let t = Instant::now();
        let _d = shardprep_formats::dali::index_text(&gs);
        time("5 dali", t);
        let t = Instant::now();
        let _w = shardprep_formats::wids::wids_count(&inp);
        time("6 wids", t);
        let t = Instant::now();
        let _j = e.encode().expect("encode");
        time("7 energon rows encoded", t);
        let t = Instant::now();
        drop(e);
        drop(gs);
        drop(inp);
        time("8 drop", t);
        let found = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy()
                    .ends_with(&format!(".{rep}.formats.json"))
            })
            .expect("the piece was written");
        let t = Instant::now();
        let back = ShardPiece::read(&found).expect("read");
        time("9 read piece", t);
        assert_eq!(back.kept, piece.kept);
        let t = Instant::now();
        let head = ShardPiece::read_head(&found).expect("read head");
        time("9 read head", t);
        assert_eq!(head.kept, piece.kept);
    }
    println!("{samples} samples, {reps} repetitions (ms):");
    for (step, mut us) in steps {
        us.sort_unstable();
        let ms = |u: u128| u as f64 / 1000.0;
        println!(
            "  {step:<16} min {:>7.2}  median {:>7.2}",
            ms(us[0]),
            ms(us[us.len() / 2])
        );
    }
}
