//! Indexes every `*.tar` under a folder with the index pass, for the
//! webshart harness (`tests/webshart/`) and `bench/index.sh` until
//! `shardprep run --mode index` exists.
//!
//! ```text
//! cargo run --release -p shardprep-worker --example index_dir -- INPUT OUT [CAPTION_FIELD]
//! ```
//! Writes `OUT/index/<shard without .tar>.json` for each shard that indexed
//! (nothing for a failed one), the fragments under `OUT/fragments/`, and
//! prints one JSON line per shard and a total line.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use shardprep_core::fields::FieldMap;
use shardprep_worker::index::{index_file, index_rel_path};
use shardprep_worker::shard::LiveProgress;

fn tars(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            tars(&path, root, out)?;
        } else if ty.is_file() && path.extension().is_some_and(|e| e == "tar") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out, rest @ ..] = args.as_slice() else {
        return Err("usage: index_dir INPUT OUT [CAPTION_FIELD]".into());
    };
    let mut fields = FieldMap::dalle3();
    if let Some(c) = rest.first() {
        fields.caption = c.clone();
    }
    let (input, out) = (PathBuf::from(input), PathBuf::from(out));
    let mut names = Vec::new();
    tars(&input, &input, &mut names)?;
    names.sort();
    std::fs::create_dir_all(out.join("fragments"))?;
    let (mut ok, mut failed, mut members, mut read) = (0u64, 0u64, 0u64, 0u64);
    for name in &names {
        let live = LiveProgress::default();
        let frag = out
            .join("fragments")
            .join(format!("{}.parquet", name.replace('/', "_")));
        let cancel = AtomicBool::new(false);
        match index_file(
            &input.join(name),
            name,
            &fields,
            Default::default(),
            &frag,
            &cancel,
            &live,
        ) {
            Ok(done) => {
                let rel = index_rel_path(name).ok_or("shard name leaves the index folder")?;
                let dest = out.join("index").join(rel);
                std::fs::create_dir_all(dest.parent().unwrap_or(&out))?;
                std::fs::write(&dest, &done.index)?;
                ok += 1;
                members += done.counts.members;
                read += done.counts.bytes_read;
                let line = serde_json::json!({"shard": name, "counts": done.counts, "stats": done.stats, "issues": done.issues.len()});
                println!("{line}");
            }
            Err(e) => {
                failed += 1;
                let _ = std::fs::remove_file(&frag);
                println!(
                    "{}",
                    serde_json::json!({"shard": name, "error": e.to_string()})
                );
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"total": {"shards": names.len(), "ok": ok, "failed": failed, "members": members, "bytes_read": read}})
    );
    Ok(())
}
