//! One shard's pieces as the worker builds them (`write_attempt`) and the
//! coordinator reads them back (`ShardPiece::read`), for a shard like the
//! bench set's: `SAMPLES` samples (default 25,000) of an image and a JSON,
//! 89% with a row. Prints the time of each step.
//!
//! `cargo bench -p shardprep-formats --bench shard_piece`

use std::time::Instant;

use shardprep_core::index_format::IndexFormats;
use shardprep_formats::{MemberKind, ShardInput, ShardPiece, TarMember, write_attempt};

fn input(samples: u64) -> ShardInput {
    let mut members = Vec::new();
    let mut rows = foldhash::HashSet::default();
    let mut off = 0u64;
    for i in 0..samples {
        let key = format!("{:016x}{i:08}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for (ext, size) in [("png", 1024u64), ("json", 971)] {
            let name = format!("{key}.{ext}");
            let mut raw = name.as_bytes().to_vec();
            raw.resize(100, 0);
            if ext == "png" && i % 9 != 0 {
                rows.insert(name.clone());
            }
            members.push(TarMember {
                name: name.into_bytes(),
                start_offset: off,
                header_offset: off,
                data_offset: off + 512,
                size,
                kind: MemberKind::Regular,
                raw_header_name: Some(raw),
                typeflag: b'0',
            });
            off += 512 + size.div_ceil(512) * 512;
        }
    }
    ShardInput {
        shard_name: "data-000000.tar".into(),
        tar_path: "/tmp/data-000000.tar".into(),
        filesize: off + 1024,
        end_offset: off,
        members,
        row_images: rows,
    }
}

fn main() {
    let samples: u64 = std::env::var("SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let formats: IndexFormats = "webshart,energon,dali,wids".parse().expect("formats");
    for rep in 0..5 {
        let t = Instant::now();
        let inp = input(samples);
        let make = t.elapsed();
        let t = Instant::now();
        let piece = write_attempt(dir.path(), rep, &formats, &inp).expect("write");
        let write = t.elapsed();
        let t = Instant::now();
        let gs = shardprep_formats::group::groups(&inp);
        let g_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let (_idx, e) = shardprep_formats::energon::shard_pieces(&gs, inp.end_offset);
        let e_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let _d = shardprep_formats::dali::index_text(&gs);
        let d_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let _w = shardprep_formats::wids::wids_count(&inp);
        let w_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let _j = serde_json::to_vec(&e).expect("json");
        let j_ms = t.elapsed().as_millis();
        drop((gs, e));
        println!("  groups {g_ms} energon {e_ms} dali {d_ms} wids {w_ms} json {j_ms}");
        let t = Instant::now();
        drop(inp);
        let free = t.elapsed();
        let path = dir
            .path()
            .join(format!("data-000000.tar-*.{rep}.formats.json"));
        let found = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy()
                    .ends_with(&format!(".{rep}.formats.json"))
            })
            .unwrap_or(path);
        let t = Instant::now();
        let back = ShardPiece::read(&found).expect("read");
        let read = t.elapsed();
        assert_eq!(back.kept, piece.kept);
        let t = Instant::now();
        let head = ShardPiece::read_head(&found).expect("read head");
        let head_ms = t.elapsed().as_millis();
        assert_eq!(head.kept, piece.kept);
        println!(
            "make {:>4} ms  write_attempt {:>4} ms  drop input {:>3} ms  read piece {:>4} ms, head {head_ms} ms ({} kept)",
            make.as_millis(),
            write.as_millis(),
            free.as_millis(),
            read.as_millis(),
            piece.kept
        );
    }
}
