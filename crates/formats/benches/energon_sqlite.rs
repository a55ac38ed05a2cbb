//! Energon's `index.sqlite` for a simulated job: `SAMPLES` samples (default
//! 10,000,000) in shards of 10,000, two parts each (jpg + json), built as
//! the coordinator builds it (SQLite's file format written directly, shards
//! in dataset order). Prints rows/s.
//!
//! `cargo bench -p shardprep-formats --bench energon_sqlite` (SAMPLES=... to change the size).

use std::time::Instant;

use shardprep_formats::energon::EnergonShard;
use shardprep_formats::energon_sqlite::build_sqlite;

fn main() {
    let total: u64 = std::env::var("SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let per_shard = 10_000u64;
    let dir = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("energon-bench-{}.sqlite", std::process::id()));
    let shards = total.div_ceil(per_shard);
    let mut next = 0u64;
    let started = Instant::now();
    let mut make_ms = 0u128;
    let res = build_sqlite(&path, || {
        if next == shards {
            return Ok(None);
        }
        let t = Instant::now();
        let id = next;
        next += 1;
        let mut s = EnergonShard {
            count: per_shard,
            ..Default::default()
        };
        for i in 0..per_shard {
            let off = i * 40_960;
            s.samples.push((format!("{id:06}-{i:06}"), i, off, 40_960));
            s.parts.push((i, "jpg".into(), off + 512, 30_000));
            s.parts.push((i, "json".into(), off + 31_232, 400));
        }
        make_ms += t.elapsed().as_millis();
        Ok(Some((id, s)))
    });
    let secs = started.elapsed().as_secs_f64() - make_ms as f64 / 1000.0;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    if let Err(e) = res {
        eprintln!("build failed: {e}");
        std::process::exit(1);
    }
    let rows = shards * per_shard * 3;
    println!(
        "energon index.sqlite: {} samples, {rows} rows in {secs:.1} s = {:.0} rows/s ({:.0} samples/s), {:.0} MiB",
        shards * per_shard,
        rows as f64 / secs,
        (shards * per_shard) as f64 / secs,
        size as f64 / 1048576.0
    );
}
