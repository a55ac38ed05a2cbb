//! Property tests of the worker's parsers on hostile input (issue "Hostile
//! input"): arbitrary bytes and JSON-ish values through
//! `sample::parse_sample`, and arbitrary tar-like byte streams (random bytes,
//! and valid tars with evil members, random mutations and truncation) through
//! `shard::process_shard`. Nothing may panic, and nothing may be written
//! outside the temporary OUT.
//!
//! The default case count is small enough for `cargo test` in a debug build;
//! run longer with e.g. `PROPTEST_CASES=100000 cargo test --release -p
//! shardprep-worker --test proptest_parser`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use proptest::prelude::*;
use serde_json::{Map, Value};
use shardprep_core::fields::FieldMap;
use shardprep_core::layout::OutputLayout;
use shardprep_core::manifest::ShardIdentity;
use shardprep_worker::sample::{Parsed, parse_sample};
use shardprep_worker::shard::{LiveProgress, ShardError, ShardTask, process_shard};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        // Shrinking a tar case can take long; a failure is reported with its input anyway.
        max_shrink_iters: 200,
        // Failures print their input; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- JSON-ish values

const KEYS: &[&str] = &[
    "width",
    "height",
    "short_caption",
    "image_name",
    "long_caption",
    "meta",
    "",
    "wídth",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2_000_000i64..2_000_000).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        (0u32..3000, 0u32..4)
            .prop_map(|(n, frac)| Value::from(f64::from(n) + f64::from(frac) * 0.25)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9 ./\\\\-]{0,12}",
        Just("..".to_string()),
        Just("../x.png".to_string()),
        Just(" 1024 ".to_string()),
        Just("+7".to_string()),
        Just("-3".to_string()),
        Just("a.png".to_string()),
        Just("   ".to_string()),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// A sample-like object: the seed's keys with arbitrary values, some missing.
fn sample_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..8)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// What a row must satisfy whatever the input.
fn check_parsed(res: Result<Parsed, shardprep_worker::sample::Skip>) -> Result<(), TestCaseError> {
    match res {
        Ok(Parsed::Row(row)) => {
            prop_assert!((1..=1_000_000).contains(&row.width), "width {}", row.width);
            prop_assert!(
                (1..=1_000_000).contains(&row.height),
                "height {}",
                row.height
            );
            prop_assert!(!row.caption.trim().is_empty());
            prop_assert!(!row.filename.is_empty());
            prop_assert!(!row.filename.contains('/') && !row.filename.contains('\0'));
            prop_assert!(!row.filename.contains(".."));
        }
        Ok(Parsed::NoWidth { .. }) => {}
        Err(skip) => prop_assert!(!skip.reason.as_str().is_empty()),
    }
    Ok(())
}

fn fields() -> FieldMap {
    let mut f = FieldMap::dalle3();
    f.extra = vec!["long_caption".into(), "meta".into(), "short_caption".into()];
    f
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parse_sample_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_parsed(parse_sample(&bytes, &fields()))?;
    }

    #[test]
    fn parse_sample_survives_json_like_values(v in prop_oneof![sample_object(), json_value()]) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let res = parse_sample(&bytes, &fields());
        // Valid JSON is never "invalid_json", except for captions with lone surrogates (not generated).
        if let Err(skip) = &res {
            prop_assert_ne!(skip.reason.as_str(), "invalid_json", "{}", skip.detail);
        }
        check_parsed(res)?;
    }

    #[test]
    fn parse_sample_survives_mangled_json(v in sample_object(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = serde_json::to_vec(&v).unwrap();
        let i = flip.index(bytes.len());
        bytes[i] = byte;
        let n = cut.index(bytes.len() + 1);
        check_parsed(parse_sample(&bytes[..n], &fields()))?;
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    for depth in [200, 100_000] {
        let deep =
            |open: &str, close: &str| format!("{}{}", open.repeat(depth), close.repeat(depth));
        for body in [
            deep("[", "]"),
            format!(r#"{{"meta":{}}}"#, deep("[", "]")),
            format!(r#"{{"width":{},"height":1}}"#, deep("[", "]")),
            format!(r#"{{"short_caption":{},"width":1}}"#, deep(r#"{"a":"#, "}")),
            format!(
                r#"{{"width":1,"height":1,"short_caption":"c","image_name":"a.png","long_caption":{}}}"#,
                deep("[", "]")
            ),
        ] {
            // Any outcome but a crash; never a row with a nested value as a dimension.
            if let Ok(Parsed::Row(r)) = parse_sample(body.as_bytes(), &fields()) {
                assert_eq!((r.width, r.height), (1, 1));
            }
        }
    }
}

// ---------------------------------------------------------------- tar streams

/// A member of a generated tar.
#[derive(Debug, Clone)]
struct Member {
    name: Vec<u8>,
    kind: u8,
    data: Vec<u8>,
    link: Vec<u8>,
}

fn member_name() -> impl Strategy<Value = Vec<u8>> {
    let plain = prop_oneof![
        Just(b"a.png".to_vec()),
        Just(b"a.json".to_vec()),
        Just(b"a.txt".to_vec()),
        Just(b"b.jpg".to_vec()),
        Just(b"s.tar".to_vec()),
        Just(b"sub/c.json".to_vec()),
        Just(b"sub".to_vec()),
        Just(b"link".to_vec()),
        Just(b"link/x".to_vec()),
    ];
    let evil = prop_oneof![
        Just(b"../escape".to_vec()),
        Just(b"a/../../escape".to_vec()),
        Just(b"/tmp/escape-abs".to_vec()),
        Just(b"./".to_vec()),
        Just(b"".to_vec()),
        Just(b"..".to_vec()),
        Just(b"x/./../../escape".to_vec()),
        Just(b"caf\xe9.png".to_vec()),
        Just(b"a\\..\\b".to_vec()),
    ];
    prop_oneof![
        4 => plain,
        2 => evil,
        1 => prop::collection::vec(any::<u8>(), 0..100),
        1 => "[a-z./]{1,30}".prop_map(String::into_bytes),
    ]
}

fn member_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700),
        Just(br#"{"image_name":"a.png","width":64,"height":64,"short_caption":"c"}"#.to_vec()),
        Just(
            br#"{"image_name":"b.jpg","width":"64","height":64.0,"short_caption":["","x"]}"#
                .to_vec()
        ),
        Just(br#"{"image_name":"../a.png","width":1,"height":1,"short_caption":"c"}"#.to_vec()),
        Just(br#"{"image_name":"link","width":1,"height":1,"short_caption":"c"}"#.to_vec()),
        Just(b"[]".to_vec()),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    (
        member_name(),
        // Regular, links, devices, dirs, FIFOs, long names, PAX, old sparse,
        // V7 regular (NUL), dumpdir, volume label, multivolume, unknown types.
        prop::sample::select(&b"0000000122345567LKxgS\0\0DVMQN8\x01X"[..]),
        member_data(),
        prop_oneof![
            Just(b"/tmp".to_vec()),
            Just(b"..".to_vec()),
            Just(b"a.png".to_vec()),
            Just(Vec::new())
        ],
    )
        .prop_map(|(name, kind, data, link)| Member {
            name,
            kind,
            data,
            link,
        })
}

/// Refusal reasons that come from the tar itself (name, type, sparse map):
/// index mode and extract mode must agree on these.
const TAR_REASONS: [&str; 14] = [
    "empty_name",
    "absolute_path",
    "parent_dir_path",
    "nul_in_name",
    "symlink",
    "hard_link",
    "device",
    "fifo",
    "volume_label",
    "multivolume_continuation",
    "sparse_too_large",
    "invalid_sparse_map",
    "sparse_map_too_large",
    "unsupported_sparse_version",
];

/// Runs the extract pass and the index pass on `bytes`: both fail with the
/// same words, or both see the same members, refusals and warnings.
fn modes_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let shard = tmp.path().join("s.tar");
    std::fs::write(&shard, bytes).unwrap();
    let task = ShardTask {
        identity: ShardIdentity {
            size: bytes.len() as u64,
            ..Default::default()
        },
        outputs: shardprep_core::mode::JobOutput::Extract {
            members: true,
            captions: false,
        },
        ..ShardTask::new(
            shard.clone(),
            "s.tar",
            OutputLayout::new(tmp.path().join("out")),
        )
    };
    let cancel = AtomicBool::new(false);
    let x = process_shard(&task, &cancel, &LiveProgress::default());
    let ix = shardprep_worker::index::index_file(
        &shard,
        "s.tar",
        &FieldMap::dalle3(),
        Default::default(),
        &tmp.path().join("i.parquet"),
        &cancel,
        &LiveProgress::default(),
    );
    match (x, ix) {
        (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
        (Ok(a), Ok(b)) => {
            let (a, b) = (a.manifest.counts, b.counts);
            prop_assert_eq!(a.members, b.members);
            prop_assert_eq!(&a.member_warnings, &b.member_warnings);
            for reason in TAR_REASONS {
                prop_assert_eq!(
                    a.rejected_members.get(reason),
                    b.rejected_members.get(reason),
                    "{}",
                    reason
                );
            }
        }
        (a, b) => prop_assert!(
            false,
            "extract: {:?}, index: {:?}",
            a.map(|o| o.manifest.counts),
            b.map(|o| o.counts)
        ),
    }
    Ok(())
}

/// Builds a tar from raw headers (no name checks), as an attacker would.
fn build_tar(members: &[Member], end_blocks: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_gnu();
        let n = m.name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&m.name[..n]);
        let l = m.link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&m.link[..l]);
        h.set_entry_type(tar::EntryType::new(m.kind));
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        // Long names and PAX/GNU records carry their name in the data.
        h.set_size(m.data.len() as u64);
        h.set_cksum();
        b.append(&h, &m.data[..]).unwrap();
    }
    let mut v = b.into_inner().unwrap();
    if !end_blocks {
        v.truncate(v.len() - 1024);
    }
    v
}

/// A mutation of a tar stream.
#[derive(Debug, Clone)]
enum Mutation {
    /// Sets one byte (at an index, modulo the length).
    Set(prop::sample::Index, u8),
    /// Sets a byte of one header block (name, size, type, checksum...).
    Header(prop::sample::Index, prop::sample::Index, u8),
    /// Cuts the stream.
    Truncate(prop::sample::Index),
    /// Writes an octal size into a header's size field.
    Size(prop::sample::Index, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            any::<u8>()
        )
            .prop_map(|(h, i, b)| Mutation::Header(h, i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (
            any::<prop::sample::Index>(),
            prop_oneof![0u64..5000, Just(u64::MAX >> 4), Just(8u64 << 30)]
        )
            .prop_map(|(h, s)| Mutation::Size(h, s)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let blocks = bytes.len().div_ceil(512);
    match m {
        Mutation::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Header(h, i, b) => {
            let at = h.index(blocks) * 512 + i.index(512);
            if at < bytes.len() {
                bytes[at] = *b;
            }
        }
        Mutation::Truncate(i) => {
            let n = i.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        Mutation::Size(h, s) => {
            let at = h.index(blocks) * 512 + 124;
            if at + 12 <= bytes.len() {
                let field = format!("{s:011o}\0");
                let f = field.as_bytes();
                let n = f.len().min(12);
                bytes[at..at + n].copy_from_slice(&f[f.len() - n..]);
            }
        }
    }
}

/// Runs `process_shard` on `bytes` in a fresh temp dir; checks containment.
/// With `in_data`, the shard lives in `OUT/data/` itself (the Hugging Face layout).
fn run_shard(
    bytes: &[u8],
    extract: bool,
    write_captions: bool,
    in_data: bool,
    write_threads: usize,
) -> Result<Outcome, TestCaseError> {
    let tmp = tempfile::Builder::new()
        .prefix("shardprep-prop-")
        .tempdir()
        .unwrap();
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    let sentinel = tmp.path().join("sentinel");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&sentinel).unwrap();
    std::fs::create_dir_all(out.join("data")).unwrap();
    // A symlink left in data/ pointing outside: never written through.
    std::os::unix::fs::symlink(&sentinel, out.join("data").join("link")).unwrap();
    let shard_path = if in_data {
        out.join("data")
    } else {
        input.clone()
    }
    .join("s.tar");
    std::fs::write(&shard_path, bytes).unwrap();
    let task = ShardTask {
        identity: ShardIdentity {
            size: bytes.len() as u64,
            ..Default::default()
        },
        outputs: shardprep_core::mode::JobOutput::Extract {
            members: extract,
            captions: write_captions,
        },
        shards_in_data_dir: in_data,
        write_threads,
        ..ShardTask::new(shard_path.clone(), "s.tar", OutputLayout::new(out.clone()))
    };
    let cancel = AtomicBool::new(false);
    let live = LiveProgress::default();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process_shard(&task, &cancel, &live)
    }));
    let res = match res {
        Ok(r) => r,
        Err(_) => return Err(TestCaseError::fail("process_shard panicked")),
    };
    match &res {
        Ok(o) => {
            // 0 members is a valid empty tar (or extension headers only, as
            // GNU tar reads them); each member takes a header block.
            prop_assert!(o.manifest.counts.members <= bytes.len() as u64 / 512);
        }
        // Hostile input is a corrupt shard, never a disk problem (those are retried).
        Err(e) => prop_assert!(
            matches!(e, ShardError::Corrupt { .. }),
            "unexpected error: {e}"
        ),
    }
    // Nothing outside OUT: the temp dir holds in/, out/ and an empty sentinel/.
    let mut top: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    prop_assert_eq!(top, vec!["in", "out", "sentinel"]);
    prop_assert!(
        !Path::new("/tmp/escape-abs").exists(),
        "an absolute member name was written"
    );
    prop_assert_eq!(
        std::fs::read_dir(&sentinel).unwrap().count(),
        0,
        "written through data/link"
    );
    prop_assert_eq!(
        std::fs::read(&shard_path).unwrap(),
        bytes,
        "the shard was changed"
    );
    let mut out_top: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    out_top.sort();
    // .shardprep/ is made only once the tar passed the first checks.
    prop_assert!(
        out_top == [".shardprep", "data"] || out_top == ["data"],
        "OUT holds {:?}",
        out_top
    );
    check_data(&out.join("data"), Path::new(""))?;
    // Paths in messages name this run's temp dir: compare them as OUT/...
    let out_str = out.display().to_string();
    let strip = |v: Value| -> Value {
        serde_json::from_str(&v.to_string().replace(&out_str, "OUT")).unwrap()
    };
    let result = match res {
        Ok(o) => Ok((
            serde_json::to_value(&o.manifest.counts).unwrap(),
            strip(serde_json::to_value(&o.manifest.issues).unwrap()),
        )),
        Err(e) => Err(e.to_string().replace(&out_str, "OUT")),
    };
    let mut data = Vec::new();
    list_tree(&out.join("data"), Path::new(""), &mut data);
    data.sort();
    Ok(Outcome { result, data })
}

/// What a shard run produced: counts and issues (or the error), and data/.
#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<(Value, Value), String>,
    /// Every path under data/ with its contents (`None` for directories).
    data: Vec<(PathBuf, Option<Vec<u8>>)>,
}

fn list_tree(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let ft = std::fs::symlink_metadata(e.path()).unwrap().file_type();
        if ft.is_dir() {
            out.push((r.clone(), None));
            list_tree(root, &r, out);
        } else if ft.is_file() {
            out.push((r, Some(std::fs::read(e.path()).unwrap())));
        } else {
            out.push((r, Some(b"<symlink>".to_vec())));
        }
    }
}

/// data/ holds only files and directories, and the one symlink put there.
fn check_data(root: &Path, rel: &Path) -> Result<(), TestCaseError> {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let r: PathBuf = rel.join(e.file_name());
        let ft = std::fs::symlink_metadata(e.path()).unwrap().file_type();
        if ft.is_symlink() {
            prop_assert_eq!(r, PathBuf::from("link"), "a symlink was created");
        } else if ft.is_dir() {
            check_data(root, &r)?;
        } else {
            prop_assert!(ft.is_file(), "{} is {:?}", r.display(), ft);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn process_shard_survives_random_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            // A gzip or ustar-looking start, then noise.
            prop::collection::vec(any::<u8>(), 0..1024).prop_map(|mut v| { v.splice(0..0, [0x1f, 0x8b]); v }),
            prop::collection::vec(any::<u8>(), 0..1024).prop_map(|mut v| { v.resize(1024, 0); v[257..263].copy_from_slice(b"ustar\0"); v }),
        ],
        extract in any::<bool>(),
    ) {
        run_shard(&bytes, extract, true, false, 0)?;
    }

    #[test]
    fn process_shard_survives_evil_and_mutated_tars(
        members in prop::collection::vec(member(), 1..10),
        mutations in prop::collection::vec(mutation(), 0..4),
        end_blocks in any::<bool>(),
        extract in any::<bool>(),
        write_captions in any::<bool>(),
        in_data in any::<bool>(),
    ) {
        let mut bytes = build_tar(&members, end_blocks);
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        run_shard(&bytes, extract, write_captions, in_data, 2)?;
    }

    /// Index mode walks every tar as extract mode does (issue 18).
    #[test]
    fn index_mode_agrees_with_extract_mode(
        members in prop::collection::vec(member(), 1..10),
        mutations in prop::collection::vec(mutation(), 0..4),
        end_blocks in any::<bool>(),
    ) {
        let mut bytes = build_tar(&members, end_blocks);
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        modes_agree(&bytes)?;
    }

    /// Writer threads change nothing: same counts, same issues in the same
    /// order, same error, same data/ tree as writing inline.
    #[test]
    fn writer_threads_change_nothing(
        members in prop::collection::vec(member(), 1..14),
        mutations in prop::collection::vec(mutation(), 0..3),
        end_blocks in any::<bool>(),
        write_captions in any::<bool>(),
        threads in 1usize..4,
    ) {
        let mut bytes = build_tar(&members, end_blocks);
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        let inline = run_shard(&bytes, true, write_captions, false, 0)?;
        let pooled = run_shard(&bytes, true, write_captions, false, threads)?;
        prop_assert_eq!(pooled, inline);
    }
}
