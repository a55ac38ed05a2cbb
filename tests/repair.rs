//! Issue 26: one kind of damage to a finished output, then `run` again with
//! the same flags (plain for changes of size or presence, `--deep` for
//! changes that keep the size), then `verify`: the output is byte-identical
//! to the clean run and `verify` passes; before the re-run, `verify` at the
//! same depth saw the damage. No re-run says "verified" while `verify` fails.
//!
//! Each test makes one clean output, keeps its bytes, and damages and
//! repairs it kind after kind (one job per repair, on the same `OUT`, as an
//! operator would).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shardprep_core::layout::OutputLayout;

use crate::util::*;

/// The depth of a damage: what finds it, what repairs it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Depth {
    /// Size or presence: plain `verify` finds it, plain `run` repairs it.
    Plain,
    /// Same size, other bytes: `verify --deep` finds it, `run --deep` repairs it.
    Deep,
}

/// A finished job to damage and repair.
struct Job {
    _dir: TestDir,
    input: PathBuf,
    out: PathBuf,
    flags: Vec<&'static str>,
    clean: BTreeMap<PathBuf, Vec<u8>>,
    clean_report: Value,
}

/// Report fields that differ between runs of the same job (times, ids,
/// which run did what).
const VOLATILE: [&str; 9] = [
    "started_at",
    "finished_at",
    "wall_ms",
    "mb_per_s",
    "resources",
    "fingerprint",
    "shards_recovered",
    "repairs",
    "output",
];
const VOLATILE_SHARD: [&str; 5] = [
    "worker",
    "elapsed_ms",
    "input_mb_per_s",
    "recovered",
    "attempts",
];

fn stable_report(mut r: Value) -> Value {
    let o = r.as_object_mut().unwrap();
    for k in VOLATILE {
        o.remove(k);
    }
    if let Some(p) = o.get_mut("published").and_then(Value::as_object_mut) {
        // Its rows are the same, its pages depend on the order shards commit in.
        p.remove(ENERGON_DB);
    }
    if let Some(s) = o
        .get_mut("index_formats")
        .and_then(|f| f["summary"].as_object_mut())
    {
        s.remove("sqlite_ms");
    }
    for list in ["shards", "failures"] {
        for s in o[list].as_array_mut().unwrap() {
            for k in VOLATILE_SHARD {
                s.as_object_mut().unwrap().remove(k);
            }
        }
    }
    r
}

/// What must be byte-identical to a clean run: everything under `OUT` but
/// the report (compared without its volatile fields), the lock, the
/// manifests (lease and worker ids, times) and the temporary folder.
fn snapshot(out: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    read_tree(out)
        .into_iter()
        .map(|(p, bytes)| match p == Path::new(ENERGON_DB) {
            true => (p, sqlite_rows(&out.join(ENERGON_DB))),
            false => (p, bytes),
        })
        .filter(|(p, _)| {
            let s = p.to_string_lossy();
            // Both carry this run's timings; report.json is compared apart.
            s != "report.json"
                && s != "report.html"
                && s != ".shardprep/lock"
                && !s.starts_with(".shardprep/tmp/")
                && !s.ends_with(".manifest.json")
        })
        .collect()
}

const ENERGON_DB: &str = "energon/.nv-meta/index.sqlite";

fn fragment_manifests(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join(".shardprep/fragments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".manifest.json"))
        .collect();
    names.sort();
    names
}

impl Job {
    fn new(shards: usize, flags: &[&'static str], seed: u64) -> Job {
        Job::with_input(flags, |input| {
            make_shards(input, shards, 14, seed);
        })
    }

    /// A clean run of the shards `make` writes into the input folder.
    fn with_input(flags: &[&'static str], make: impl FnOnce(&Path)) -> Job {
        let dir = tempdir();
        let input = dir.path().join("in");
        make(&input);
        let out = dir.path().join("out");
        let flags = flags.to_vec();
        run_job(&input, &out, &flags);
        let job = Job {
            clean: snapshot(&out),
            clean_report: stable_report(report(&out)),
            _dir: dir,
            input,
            out,
            flags,
        };
        job.verify_ok(Depth::Deep, "the clean run");
        job
    }

    fn layout(&self) -> OutputLayout {
        OutputLayout::new(&self.out)
    }

    fn verify(&self, depth: Depth) -> std::process::Output {
        let mut args = vec!["verify", path_str(&self.out)];
        if depth == Depth::Deep {
            args.push("--deep");
        }
        run_raw(&args, &[])
    }

    fn verify_ok(&self, depth: Depth, after: &str) {
        let v = self.verify(depth);
        assert!(
            v.status.success(),
            "verify ({depth:?}) fails after {after}:\n{}",
            explain(&["verify"], &v)
        );
    }

    /// Damages the output, checks `verify` at `depth` sees it, runs the job
    /// again at `depth` and checks the output is the clean one again.
    fn damage_and_repair(&self, what: &str, depth: Depth, damage: impl FnOnce(&Job)) -> String {
        damage(self);
        let before = self.verify(depth);
        assert!(
            !before.status.success(),
            "verify ({depth:?}) does not see: {what}\n{}",
            explain(&["verify"], &before)
        );
        let mut args = vec![
            "run",
            "--input",
            path_str(&self.input),
            "--output",
            path_str(&self.out),
            "--workers",
            "2",
        ];
        args.extend(self.flags.iter().copied());
        if depth == Depth::Deep {
            args.push("--deep");
        }
        let o = run_raw(&args, &[]);
        assert!(
            o.status.success(),
            "the re-run over {what} fails:\n{}",
            explain(&args, &o)
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !said.contains("already complete"),
            "the re-run over {what} found nothing to repair:\n{said}"
        );
        self.verify_ok(Depth::Deep, &format!("the re-run over {what}"));
        self.verify_ok(Depth::Plain, &format!("the re-run over {what}"));
        self.assert_clean(what);
        let r = report(&self.out);
        assert!(
            !r["repairs"].as_array().is_none_or(|a| a.is_empty()),
            "report.json lists no repair after {what}: {r:#}"
        );
        said
    }

    fn assert_clean(&self, what: &str) {
        let now = snapshot(&self.out);
        let names = |t: &BTreeMap<PathBuf, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&now),
            names(&self.clean),
            "files after repairing {what}"
        );
        for (p, bytes) in &self.clean {
            assert!(
                now[p] == *bytes,
                "{} differs after repairing {what}",
                p.display()
            );
        }
        assert_eq!(
            fragment_manifests(&self.out).len(),
            self.clean_report["shards_total"].as_u64().unwrap() as usize,
            "a manifest per shard after repairing {what}"
        );
        assert_eq!(
            stable_report(report(&self.out)),
            self.clean_report,
            "report.json after repairing {what}"
        );
    }

    /// The `n`th file of `data/` (in name order) ending in `ext`.
    fn data_file(&self, ext: &str, n: usize) -> PathBuf {
        let mut files: Vec<PathBuf> = read_tree(&self.out.join("data"))
            .into_keys()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        self.out.join("data").join(&files[n])
    }
}

fn truncate_half(p: &Path) {
    let len = std::fs::metadata(p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_len(len / 2).unwrap();
}

/// Flips one byte in the middle of `p` (same size).
fn flip_byte(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x20;
    std::fs::write(p, b).unwrap();
}

fn remove(p: &Path) {
    std::fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
}

const SHARD: &str = "data-000001.tar";

/// One kind of damage done to a job's output.
type Damage<T = Job> = Box<dyn Fn(&T)>;

#[test]
fn every_kind_of_damage_to_an_extract_output_is_repaired_by_a_rerun() {
    let job = Job::new(3, &[], 2601);
    let l = job.layout();
    let table = l.parquet_path("dalle3");

    // The four kinds of issue 26's table.
    let said = job.damage_and_repair("the table truncated to half", Depth::Plain, |_| {
        truncate_half(&table)
    });
    assert!(said.contains("merging the table again"), "{said}");
    job.damage_and_repair(
        "a fragment truncated and the table deleted",
        Depth::Plain,
        |_| {
            truncate_half(&l.fragment_path(SHARD));
            remove(&table);
        },
    );
    let said = job.damage_and_repair("a fragment truncated", Depth::Plain, |_| {
        truncate_half(&l.fragment_path(SHARD))
    });
    assert!(said.contains("redoing the shard"), "{said}");
    let caption = job.data_file("txt", 5);
    job.damage_and_repair("a caption edited, same size", Depth::Deep, |_| {
        flip_byte(&caption)
    });

    // The ten kinds that were repaired before, and the derived files.
    let plain: [(&str, Damage); 10] = [
        (
            "an image deleted",
            Box::new(|j| remove(&j.data_file("png", 3))),
        ),
        (
            "a JSON deleted",
            Box::new(|j| remove(&j.data_file("json", 7))),
        ),
        (
            "a caption deleted",
            Box::new(|j| remove(&j.data_file("txt", 2))),
        ),
        (
            "an image truncated",
            Box::new(|j| truncate_half(&j.data_file("png", 9))),
        ),
        (
            "a .files list deleted",
            Box::new(|j| remove(&j.layout().files_list_path(SHARD))),
        ),
        (
            "a manifest deleted",
            Box::new(|j| remove(&j.layout().manifest_path(SHARD))),
        ),
        (
            "a manifest changed",
            Box::new(|j| std::fs::write(j.layout().manifest_path(SHARD), b"{").unwrap()),
        ),
        (
            "report.json deleted",
            Box::new(|j| remove(&j.layout().report_path())),
        ),
        (
            "multidatabackend.json deleted",
            Box::new(|j| remove(&j.layout().backend_path())),
        ),
        (
            "the state folder deleted",
            Box::new(|j| std::fs::remove_dir_all(j.layout().state_dir()).unwrap()),
        ),
    ];
    for (what, damage) in plain {
        job.damage_and_repair(what, Depth::Plain, damage);
    }
    // Derived files of the state, sealed at their commit.
    job.damage_and_repair("a .files list truncated", Depth::Plain, |j| {
        truncate_half(&j.layout().files_list_path(SHARD))
    });
    job.damage_and_repair("a .files list with a flipped byte", Depth::Deep, |j| {
        flip_byte(&j.layout().files_list_path(SHARD))
    });
    job.damage_and_repair("a fragment with a flipped byte", Depth::Deep, |j| {
        flip_byte(&j.layout().fragment_path(SHARD))
    });
    job.damage_and_repair("the table with a flipped byte", Depth::Deep, |j| {
        flip_byte(&j.layout().parquet_path("dalle3"))
    });
    job.damage_and_repair("an image with a flipped byte", Depth::Deep, |j| {
        flip_byte(&j.data_file("png", 4))
    });
    job.damage_and_repair("a JSON with a flipped byte", Depth::Deep, |j| {
        flip_byte(&j.data_file("json", 1))
    });
    // The entry is sealed with the table: an edit is seen, the re-run writes it again.
    job.damage_and_repair("multidatabackend.json grown", Depth::Plain, |j| {
        append(&j.layout().backend_path(), b"\n")
    });
    job.damage_and_repair(
        "multidatabackend.json with a flipped byte",
        Depth::Deep,
        |j| flip_byte(&j.layout().backend_path()),
    );
    // A directory where the output has a file of its own: removed, not a
    // commit that fails on `EISDIR` at every re-run.
    for (what, path) in [
        (
            "a directory in the way of a fragment",
            l.fragment_path(SHARD),
        ),
        (
            "a directory in the way of a manifest",
            l.manifest_path(SHARD),
        ),
        ("a directory in the way of the table", table.clone()),
        ("a directory in the way of report.json", l.report_path()),
    ] {
        job.damage_and_repair(what, Depth::Plain, |_| directory_in_the_way(&path));
    }
}

#[test]
fn same_size_damage_is_left_to_the_deep_depth_by_verify_and_run_alike() {
    // A plain re-run does not read bytes; plain `verify` does not either, so
    // neither says the other is wrong, and both say which depth finds it.
    let job = Job::new(2, &[], 2602);
    let caption = job.data_file("txt", 1);
    flip_byte(&caption);
    job.verify_ok(Depth::Plain, "a caption edit (plain verify reads no bytes)");
    let o = run_job(&job.input, &job.out, &[]);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("already complete and verified"), "{said}");
    job.verify_ok(Depth::Plain, "a plain re-run");
    let v = job.verify(Depth::Deep);
    assert!(
        !v.status.success(),
        "{}",
        explain(&["verify", "--deep"], &v)
    );
    let deep_said = String::from_utf8_lossy(&v.stdout);
    assert!(deep_said.contains("checksum"), "{deep_said}");
    let plain_said = String::from_utf8_lossy(&job.verify(Depth::Plain).stdout).into_owned();
    assert!(plain_said.contains("compared with --deep"), "{plain_said}");
    run_job(&job.input, &job.out, &["--deep"]);
    job.verify_ok(Depth::Deep, "run --deep");
    job.assert_clean("a caption edit");
}

#[test]
fn every_kind_of_damage_to_an_index_output_is_repaired_by_a_rerun() {
    let job = Job::new(3, &["--mode", "index"], 2603);
    let l = job.layout();
    let index = l.index_path(SHARD).unwrap();
    let said = job.damage_and_repair("an index file truncated to half", Depth::Plain, |_| {
        truncate_half(&index)
    });
    assert!(said.contains("index file is"), "{said}");
    job.damage_and_repair("an index file deleted", Depth::Plain, |_| remove(&index));
    job.damage_and_repair("an index file with a flipped byte", Depth::Deep, |_| {
        let mut b = std::fs::read(&index).unwrap();
        // A digit of an offset, the size kept: the index then points elsewhere.
        let i = b.iter().position(|c| c.is_ascii_digit()).unwrap();
        b[i] = if b[i] == b'1' { b'2' } else { b'1' };
        std::fs::write(&index, b).unwrap();
    });
    job.damage_and_repair("the table truncated to half", Depth::Plain, |_| {
        truncate_half(&l.parquet_path("dalle3"))
    });
    job.damage_and_repair("a fragment truncated", Depth::Plain, |_| {
        truncate_half(&l.fragment_path(SHARD))
    });
    job.damage_and_repair("a manifest deleted", Depth::Plain, |_| {
        remove(&l.manifest_path(SHARD))
    });
    job.damage_and_repair("a stray index file", Depth::Plain, |_| {
        std::fs::write(l.index_dir().join("data-000099.json"), b"{}").unwrap()
    });
    job.damage_and_repair("report.json deleted", Depth::Plain, |_| {
        remove(&l.report_path())
    });
    job.damage_and_repair(
        "a directory in the way of an index file",
        Depth::Plain,
        |_| directory_in_the_way(&index),
    );
    job.damage_and_repair(
        "the webshart entry's source edited, same size",
        Depth::Deep,
        |_| {
            let path = l.backend_path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("/in\""), "{text}");
            std::fs::write(&path, text.replacen("/in\"", "/IN\"", 1)).unwrap();
        },
    );
}

#[test]
fn a_rerun_with_other_entry_settings_writes_and_seals_the_entry_anew() {
    let job = Job::new(2, &[], 2605);
    let args = [
        "run",
        "--input",
        path_str(&job.input),
        "--output",
        path_str(&job.out),
        "--resolution",
        "2.0",
    ];
    let o = run_raw(&args, &[]);
    assert!(o.status.success(), "{}", explain(&args, &o));
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.layout().backend_path()).unwrap()).unwrap();
    assert_eq!(entry[0]["resolution"], 2.0);
    job.verify_ok(Depth::Deep, "a re-run with --resolution 2.0");
}

#[test]
fn every_kind_of_damage_to_the_other_index_formats_is_repaired_by_a_rerun() {
    let flags = [
        "--mode",
        "index",
        "--index-format",
        "webshart,energon,dali,wids",
    ];
    let job = Job::new(3, &flags, 2604);
    let meta = job.out.join("energon/.nv-meta");
    let dali_idx = job.out.join("dali/data-000001.idx");
    let tar_idx = job.out.join("energon/data-000001.tar.idx");
    let plain: [(&str, PathBuf, Damage<Path>); 10] = [
        (
            "index.sqlite truncated",
            meta.join("index.sqlite"),
            Box::new(truncate_half),
        ),
        (
            "index.sqlite deleted",
            meta.join("index.sqlite"),
            Box::new(remove),
        ),
        (
            "split.yaml grown",
            meta.join("split.yaml"),
            Box::new(|p| append(p, b"\n")),
        ),
        (
            "dataset.yaml deleted",
            meta.join("dataset.yaml"),
            Box::new(remove),
        ),
        (
            "sample_loader.py deleted",
            meta.join("sample_loader.py"),
            Box::new(remove),
        ),
        (
            "a .tar.idx truncated",
            tar_idx.clone(),
            Box::new(truncate_half),
        ),
        (
            "a DALI .idx truncated",
            dali_idx.clone(),
            Box::new(truncate_half),
        ),
        (
            "a directory in the way of dataset.yaml",
            meta.join("dataset.yaml"),
            Box::new(directory_in_the_way),
        ),
        (
            "a directory in the way of index.sqlite",
            meta.join("index.sqlite"),
            Box::new(directory_in_the_way),
        ),
        (
            "a directory in the way of a DALI .idx",
            dali_idx.clone(),
            Box::new(directory_in_the_way),
        ),
    ];
    for (what, path, damage) in plain {
        job.damage_and_repair(what, Depth::Plain, |_| damage(&path));
    }
    // A link to another file of the same size (a set's shards often are).
    job.damage_and_repair(
        "an energon tar link to another file of the same size",
        Depth::Plain,
        |j| {
            let link = j.out.join("energon/data-000001.tar");
            let copy = j._dir.path().join("same-size-copy.tar");
            std::fs::copy(std::fs::read_link(&link).unwrap(), &copy).unwrap();
            flip_byte(&copy);
            remove(&link);
            std::os::unix::fs::symlink(&copy, &link).unwrap();
        },
    );
    // Same size, one row fewer: only SQLite's own reading of the file sees it.
    job.damage_and_repair(
        "index.sqlite without one of its samples (same size)",
        Depth::Plain,
        |_| {
            let db = rusqlite::Connection::open(meta.join("index.sqlite")).unwrap();
            db.execute(
                "DELETE FROM samples WHERE rowid = (SELECT MAX(rowid) FROM samples)",
                [],
            )
            .unwrap();
        },
    );
    let deep: [(&str, PathBuf); 6] = [
        (
            "index.sqlite with a flipped byte",
            meta.join("index.sqlite"),
        ),
        (".info.json with a flipped byte", meta.join(".info.json")),
        ("index.uuid with a flipped byte", meta.join("index.uuid")),
        ("a .tar.idx with a flipped byte", tar_idx),
        ("a DALI .idx with a flipped byte", dali_idx),
        (
            "wids.json with a flipped byte",
            job.out.join("wids/wids.json"),
        ),
    ];
    for (what, path) in deep {
        job.damage_and_repair(what, Depth::Deep, |_| flip_byte(&path));
    }
    // The same shards give the same index.uuid (it is derived from the index).
    let again = job._dir.path().join("again");
    run_job(&job.input, &again, &flags);
    let uuid = |out: &Path| std::fs::read(out.join("energon/.nv-meta/index.uuid")).unwrap();
    assert_eq!(uuid(&again), uuid(&job.out), "index.uuid of two clean runs");
}

/// The file at `p` replaced by a directory holding a file.
fn directory_in_the_way(p: &Path) {
    remove(p);
    std::fs::create_dir_all(p.join("junk")).unwrap();
}

fn append(p: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn damage_under_no_extract_is_seen_and_repaired() {
    // The caption files are the only files in data/: their lists are checked.
    let job = Job::new(3, &["--no-extract"], 2606);
    job.damage_and_repair("a caption deleted", Depth::Plain, |j| {
        remove(&j.data_file("txt", 2))
    });
    job.damage_and_repair("a caption edited, same size", Depth::Deep, |j| {
        flip_byte(&j.data_file("txt", 4))
    });
}

#[test]
fn redoing_an_earlier_shard_puts_back_the_later_shards_files_of_shared_names() {
    // data-000002.tar holds data-000000.tar's names with other bytes: data/
    // holds data-000002's. A re-run that redoes data-000000 (its fragment
    // damaged) writes those names again; its end sees that and redoes
    // data-000002 after it, so data/ is the clean run's again.
    let job = Job::with_input(&[], |input| {
        let shards = make_shards(input, 2, 14, 2607);
        same_names_other_bytes(&shards[0], &input.join("data-000002.tar"));
    });
    let said = job.damage_and_repair(
        "the earlier shard's fragment truncated",
        Depth::Plain,
        |j| truncate_half(&j.layout().fragment_path("data-000000.tar")),
    );
    assert!(
        said.contains("redoing those shards one at a time"),
        "{said}"
    );
}
