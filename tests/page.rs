//! `report.html` (issue 29): written at the job's end in both modes and by
//! `shardprep report`, self-contained, its numbers those of `report.json`;
//! and the terminal side: no colour codes off a terminal, `NO_COLOR`, an
//! error before the job starts printed alone. The browser checks (real
//! Chromium, the live page) are in tests/page/.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::{GenOptions, explain, generate, path_str, report, run_job, run_raw, tempdir};

/// Every `data-k` number of `page` as (key, attributes, text).
fn marked_numbers(page: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find("data-k=\"") {
        let tag_start = rest[..at].rfind('<').unwrap_or(0);
        let tag_end = at + rest[at..].find('>').expect("tag end");
        let attrs = rest[tag_start..tag_end].to_string();
        let key_start = at + 8;
        let key = rest[key_start..key_start + rest[key_start..].find('"').unwrap()].to_string();
        let text_end = tag_end + 1 + rest[tag_end + 1..].find('<').unwrap();
        out.push((key, attrs, rest[tag_end + 1..text_end].to_string()));
        rest = &rest[text_end..];
    }
    out
}

fn attr(attrs: &str, name: &str) -> Option<String> {
    let at = attrs.find(&format!("{name}=\""))? + name.len() + 2;
    Some(attrs[at..at + attrs[at..].find('"')?].to_string())
}

/// The value at a dotted `path` of `v` (numeric parts index arrays).
fn at_path<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, part| match part.parse::<usize>() {
            Ok(i) if v.is_array() => &v[i],
            _ => &v[part],
        })
}

/// Asserts that every number the page takes from the report is the report's.
fn assert_page_matches_report(page: &str, report: &Value) {
    let marked = marked_numbers(page);
    assert!(marked.len() > 20, "too few marked numbers: {marked:?}");
    for (key, attrs, text) in marked {
        let v = at_path(report, &key);
        if key == "verdict" {
            assert_eq!(text, v.as_str().unwrap().to_uppercase(), "verdict");
            continue;
        }
        let want = if attr(&attrs, "data-agg").as_deref() == Some("sum") {
            v.as_object()
                .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum())
        } else {
            v.as_f64()
                .unwrap_or_else(|| panic!("{key} is not a number in report.json: {v}"))
        };
        let scale: f64 = attr(&attrs, "data-scale").map_or(1.0, |s| s.parse().unwrap());
        let digits: usize = attr(&attrs, "data-digits").map_or(0, |s| s.parse().unwrap());
        let shown: f64 = text
            .replace(',', "")
            .parse()
            .unwrap_or_else(|_| panic!("{key}: {text:?}"));
        let expected: f64 = format!("{:.*}", digits, want * scale).parse().unwrap();
        assert_eq!(
            shown, expected,
            "{key}: the page shows {text}, report.json has {want}"
        );
    }
}

/// Nothing on the page is fetched: no URL in a `src`/`href`, no script, no `url(` in CSS.
fn assert_self_contained(page: &str) {
    for bad in [
        "src=\"http",
        "href=\"http",
        "<script",
        "<link",
        "url(",
        "@import",
        "<iframe",
    ] {
        assert!(
            !page.contains(bad),
            "the page must load nothing: found {bad:?}"
        );
    }
}

fn shards(dir: &Path, opts: GenOptions) {
    generate(dir, &opts).expect("generate shards");
}

#[test]
fn the_job_writes_report_html_and_shardprep_report_rewrites_it_the_same() {
    let tmp = tempdir();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    shards(
        &input,
        GenOptions {
            shards: 3,
            samples_per_shard: 40,
            no_width_every: 7,
            lying_dims_every: 5,
            truncated_every: 9,
            seed: 29,
            ..GenOptions::default()
        },
    );
    run_job(&input, &out, &["--check-images", "decode"]);
    let page_path = out.join("report.html");
    let page = std::fs::read_to_string(&page_path).expect("report.html beside report.json");
    assert_self_contained(&page);
    let r = report(&out);
    assert_page_matches_report(&page, &r);
    // The pictures are SVG, the problem images thumbnails where they decode.
    assert!(page.matches("<svg").count() >= 5, "charts");
    assert!(
        page.contains("data:image/png;base64,"),
        "a thumbnail of a problem image that decodes"
    );
    assert!(page.contains("dims_mismatch") && page.contains("decode_failed"));
    assert!(page.contains("data-bucket=\"1.0\""), "the 1024x1024 bucket");
    std::fs::remove_file(&page_path).unwrap();
    let args = ["report", path_str(&out)];
    let o = run_raw(&args, &[]);
    assert!(o.status.success(), "{}", explain(&args, &o));
    assert_eq!(
        std::fs::read_to_string(&page_path).unwrap(),
        page,
        "regenerated page differs"
    );
}

/// The page of an index job over two small generated shards (`opts` and
/// `flags` beside `--mode index`), checked self-contained and against its report.
fn index_job_page(opts: GenOptions, flags: &[&str]) -> String {
    let tmp = tempdir();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    shards(&input, opts);
    let mut args = vec!["--mode", "index"];
    args.extend_from_slice(flags);
    run_job(&input, &out, &args);
    let page = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert_self_contained(&page);
    assert_page_matches_report(&page, &report(&out));
    page
}

#[test]
fn an_index_job_writes_its_page_from_the_indexes() {
    let opts = GenOptions {
        shards: 2,
        samples_per_shard: 30,
        lying_dims_every: 4,
        seed: 5,
        ..GenOptions::default()
    };
    let page = index_job_page(opts, &[]);
    assert!(page.contains("index.entries") && page.contains("webshart indexes"));
}

#[test]
fn an_index_job_without_webshart_points_each_trainer_at_its_index() {
    let opts = GenOptions {
        shards: 2,
        samples_per_shard: 30,
        seed: 6,
        ..GenOptions::default()
    };
    let page = index_job_page(opts, &["--index-format", "energon,dali"]);
    // The samples come from the table (there is no webshart index to read them from).
    assert!(!page.contains("could not be read"), "{page}");
    assert!(page.contains("index_formats.summary.kept"));
    assert!(page.contains("No SimpleTuner entry") && page.contains("/energon"));
    assert!(page.contains("dali/dali.json") && !page.contains("wids/wids.json"));
    assert!(!page.contains("index.entries"));
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let tmp = tempdir();
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    shards(
        &input,
        GenOptions {
            shards: 2,
            samples_per_shard: 5,
            ..GenOptions::default()
        },
    );
    let o = run_job(&input, &out, &["--progress", "never"]);
    let all = [o.stdout, o.stderr].concat();
    assert!(
        String::from_utf8_lossy(&all).contains("INFO"),
        "log lines expected"
    );
    assert!(
        !all.contains(&0x1b),
        "escape codes in piped output:\n{}",
        String::from_utf8_lossy(&all)
    );
}

/// `shardprep ARGS` on a pseudo-terminal (util-linux `script`), its output.
fn on_a_terminal(args: &[&str], no_color: Option<&str>) -> Vec<u8> {
    let line = std::iter::once(path_str(&crate::util::bin()).to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let o = cmd
        .output()
        .expect("util-linux `script` (a pseudo-terminal for this test) must be installed");
    o.stdout
}

#[test]
fn colours_only_on_a_terminal_and_never_with_no_color() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    shards(
        &input,
        GenOptions {
            shards: 1,
            samples_per_shard: 3,
            ..GenOptions::default()
        },
    );
    let out = |name: &str| tmp.path().join(name);
    let run = |o: &Path| {
        vec![
            "run".to_string(),
            "--input".into(),
            path_str(&input).into(),
            "--output".into(),
            path_str(o).into(),
            "--workers".into(),
            "1".into(),
            "--progress".into(),
            "never".into(),
        ]
    };
    let args = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    let (a, b) = (run(&out("a")), run(&out("b")));
    let coloured = on_a_terminal(&a.iter().map(String::as_str).collect::<Vec<_>>(), None);
    let text = String::from_utf8_lossy(&coloured);
    assert!(text.contains("INFO"), "shardprep {}:\n{text}", args(&a));
    assert!(coloured.contains(&0x1b), "a terminal gets colours:\n{text}");
    let plain = on_a_terminal(&b.iter().map(String::as_str).collect::<Vec<_>>(), Some("1"));
    let text = String::from_utf8_lossy(&plain);
    assert!(text.contains("INFO"), "shardprep {}:\n{text}", args(&b));
    assert!(
        !plain.contains(&0x1b),
        "NO_COLOR=1 must turn colours off:\n{text}"
    );
}

#[test]
fn an_error_before_the_job_starts_is_printed_alone() {
    let tmp = tempdir();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = tmp.path().join("out");
    let args = [
        "run",
        "--input",
        path_str(&empty),
        "--output",
        path_str(&out),
        "--workers",
        "3",
        "--progress",
        "never",
    ];
    let o = run_raw(&args, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&args, &o));
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: no *.tar shards in"),
        "{}",
        explain(&args, &o)
    );
    for noise in ["SIGTERM", "unreachable", "worker", "WARN", "ERROR"] {
        assert!(
            !err.contains(noise),
            "{noise:?} printed before the error:\n{}",
            explain(&args, &o)
        );
    }
}
