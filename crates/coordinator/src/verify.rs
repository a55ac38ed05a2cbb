//! `shardprep verify OUT`: checks an output folder without a coordinator,
//! as the seed's manual checks do and more.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use shardprep_core::durability::{listed_path, parse_files_list};
use shardprep_core::layout::{OutputLayout, fnv1a64, stem};

/// What was checked and what is wrong.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    pub checked: Vec<String>,
    pub problems: Vec<String>,
    /// Files in `data/` that no shard wrote (a trainer's caches, e.g.
    /// SimpleTuner's `aspect_ratio_bucket_*.json`), the first few by name.
    /// Not counted and not a problem.
    pub foreign_files: Vec<String>,
    /// How many such files there are in all.
    pub foreign_files_total: u64,
    /// Committed shards whose files in `data/` are missing or changed, or
    /// whose file list cannot be read: redoing them repairs the output.
    pub damaged_shards: BTreeSet<String>,
}

/// Foreign files listed by name.
const FOREIGN_LISTED: usize = 20;

/// What the shards wrote into `data/`, from their committed file lists
/// (`OUT/.shardprep/fragments/<shard>.files`).
struct Written {
    /// Hash of each relative path → the last write of it: (shard index,
    /// record index in that shard's list). Earlier writes were overwritten.
    last_writer: HashMap<u64, (usize, usize)>,
    /// Distinct `*.json` paths written.
    json: u64,
}

/// A committed shard: its name and how many files its counts say it wrote
/// into `data/` (members and captions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWrote {
    pub name: String,
    pub files: u64,
}

/// Reads the file lists of `shards` (in shard order; a later shard's file
/// overwrites an earlier one's of the same name, as on disk).
fn read_written(
    layout: &OutputLayout,
    shards: &[ShardWrote],
    f: &mut Findings,
) -> (Written, Vec<Vec<u8>>) {
    let mut w = Written {
        last_writer: HashMap::new(),
        json: 0,
    };
    let mut lists = Vec::with_capacity(shards.len());
    for (i, shard) in shards.iter().enumerate() {
        let path = layout.files_list_path(&shard.name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // A shard that wrote nothing into data/ needs no list.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && shard.files == 0 => Vec::new(),
            Err(e) => {
                f.damaged_shards.insert(shard.name.clone());
                f.problems.push(format!(
                    "cannot read the file list of shard {} ({}: {e}): what it wrote into data/ cannot be checked; remove OUT/.shardprep/fragments/{} and run the job again to redo the shard",
                    shard.name,
                    path.display(),
                    layout.manifest_path(&shard.name).file_name().unwrap_or_default().to_string_lossy()
                ));
                Vec::new()
            }
        };
        for (j, rec) in parse_files_list(&bytes).into_iter().enumerate() {
            let new = w.last_writer.insert(fnv1a64(rec.rel), (i, j)).is_none();
            if new && rec.rel.ends_with(b".json") {
                w.json += 1;
            }
        }
        lists.push(bytes);
    }
    (w, lists)
}

/// Checks what the job wrote into `data/`: every file each committed shard
/// (`shards`, in shard order) lists is there with the size it was written
/// with, and the JSON members it holds number `expected`. With nothing
/// extracted (`extracted` false) the shards' count of JSON members
/// (`json_members`) is compared instead. `verify` and a re-run's
/// already-done check both judge an output by this.
pub fn check_written(
    layout: &OutputLayout,
    shards: &[ShardWrote],
    expected: Option<u64>,
    json_members: u64,
    extracted: bool,
    deep: bool,
) -> Findings {
    let mut f = Findings::default();
    if !extracted {
        if let Some(e) = expected {
            check_json_members(json_members, e, &mut f);
        }
        return f;
    }
    let (written, lists) = read_written(layout, shards, &mut f);
    let data = layout.data_dir();
    let mut missing = Vec::new();
    let (mut n_missing, mut json_missing) = (0u64, 0u64);
    for (i, list) in lists.iter().enumerate() {
        for (j, rec) in parse_files_list(list).into_iter().enumerate() {
            let Some(rel) = listed_path(rec.rel) else {
                continue;
            };
            if written.last_writer.get(&fnv1a64(rec.rel)) != Some(&(i, j)) {
                continue; // overwritten by a later write
            }
            let path = data.join(rel);
            let Some(why) = damage(&path, &rec, deep) else {
                continue;
            };
            n_missing += 1;
            f.damaged_shards.insert(shards[i].name.clone());
            json_missing += u64::from(rec.rel.ends_with(b".json"));
            if missing.len() < LISTED {
                missing.push(format!(
                    "data/{} ({why}, from shard {})",
                    rel.display(),
                    shards[i].name
                ));
            }
        }
    }
    let present = written.json - json_missing;
    f.checked.push(format!(
        "data/ holds {present} *.json files the shards wrote"
    ));
    if json_missing > 0 {
        f.problems.push(format!(
            "the shards wrote {} JSON members into data/ but only {present} *.json files of them are there",
            written.json
        ));
    }
    if n_missing > 0 {
        f.problems.push(format!(
            "{n_missing} files the shards wrote into data/ are missing or changed since the job: {}; run the job again: it redoes the shards they came from",
            missing.join(", ")
        ));
    } else {
        f.checked
            .push("every file the shards wrote is in data/ with its size".into());
    }
    if let Some(e) = expected {
        match json_count_problem(e, present) {
            Some(p) => f.problems.push(format!(
                "{p}: data/ holds {present} *.json files, expected {e}"
            )),
            None => f
                .checked
                .push(format!("JSON count matches the expected {e}")),
        }
    }
    f
}

/// Why a listed file is not as written: missing, another size, or (with
/// `deep`) other bytes than its recorded checksum.
fn damage(
    path: &Path,
    rec: &shardprep_core::durability::ListedFile<'_>,
    deep: bool,
) -> Option<String> {
    let m = match std::fs::symlink_metadata(path) {
        Err(e) => return Some(format!("{e}")),
        Ok(m) => m,
    };
    if let Some(size) = rec.size
        && m.len() != size
    {
        return Some(format!("{} bytes, written with {size}", m.len()));
    }
    let want = rec.crc.filter(|_| deep)?;
    match shardprep_core::durability::file_crc(path) {
        Ok(got) if got == want => None,
        Ok(got) => Some(format!("checksum {got:08x}, written with {want:08x}")),
        Err(e) => Some(format!("{e}")),
    }
}

/// The problem with the global JSON count, if there is one.
fn json_count_problem(expected: u64, found: u64) -> Option<String> {
    (found != expected).then(|| {
        format!(
            "JSON count mismatch: expected {expected} JSON files, found {found} ({} {})",
            found.abs_diff(expected),
            if found < expected { "missing" } else { "extra" }
        )
    })
}

/// Calls `each` with the path of every file (not directory) under `root`;
/// unreadable directories are passed over.
pub(crate) fn for_each_file(root: PathBuf, mut each: impl FnMut(PathBuf)) {
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                each(e.path());
            }
        }
    }
}

/// Lists the files in `data/` that no shard wrote (by name, capped): a
/// trainer's caches. They are neither counted nor a problem.
fn list_foreign(layout: &OutputLayout, shards: &[ShardWrote], f: &mut Findings) {
    let mut ours = HashSet::new();
    for shard in shards {
        let bytes = std::fs::read(layout.files_list_path(&shard.name)).unwrap_or_default();
        ours.extend(parse_files_list(&bytes).iter().map(|r| fnv1a64(r.rel)));
    }
    let data = layout.data_dir();
    for_each_file(data.clone(), |path| {
        let Ok(rel) = path.strip_prefix(&data) else {
            return;
        };
        if ours.contains(&fnv1a64(rel.as_os_str().as_encoded_bytes())) {
            return;
        }
        f.foreign_files_total += 1;
        if f.foreign_files.len() < FOREIGN_LISTED {
            f.foreign_files.push(rel.display().to_string());
        }
    });
    f.foreign_files.sort();
    if f.foreign_files_total > 0 {
        f.checked.push(format!(
            "{} foreign files in data/ came from no shard (a trainer's caches?), not counted: {}{}",
            f.foreign_files_total,
            f.foreign_files.join(", "),
            if f.foreign_files_total > f.foreign_files.len() as u64 {
                ", …"
            } else {
                ""
            }
        ));
    }
}

/// Problems listed one by one before they are only counted.
const LISTED: usize = 20;

/// What `verify` reads from `report.json` (defaults when it is missing).
struct ReportView {
    /// The report, `Null` when unreadable.
    json: serde_json::Value,
    dataset_id: String,
    textfile: bool,
    expected: Option<u64>,
    /// Members were extracted into `data/` (not `--no-extract`).
    extracted: bool,
}

impl ReportView {
    fn new(
        report: Option<serde_json::Value>,
        expect_json: Option<u64>,
        dataset_id: Option<&str>,
    ) -> Self {
        let json = report.unwrap_or(serde_json::Value::Null);
        ReportView {
            dataset_id: dataset_id
                .map(str::to_string)
                .or_else(|| json["dataset_id"].as_str().map(str::to_string))
                .unwrap_or_else(|| "dalle3".into()),
            textfile: json["captions"]
                .as_str()
                .map(|c| c == "textfile")
                .unwrap_or(true),
            expected: expect_json.or_else(|| json["expected_json"].as_u64()),
            extracted: json["totals"]["files_extracted"]
                .as_u64()
                .map(|n| n > 0)
                .unwrap_or(true),
            json,
        }
    }

    /// The shards the report lists as done, in shard order.
    fn done_shards(&self) -> Vec<ShardWrote> {
        let count = |s: &serde_json::Value, k: &str| s["counts"][k].as_u64().unwrap_or(0);
        self.json["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["state"] == "done")
            .filter_map(|s| {
                Some(ShardWrote {
                    name: s["name"].as_str()?.to_string(),
                    files: count(s, "files_extracted") + count(s, "captions_written"),
                })
            })
            .collect()
    }
}

/// Checks `out`: the report, the JSON count in `data/`, the parquet's schema
/// and rows, each row's image and caption file, and the SimpleTuner entry.
pub fn verify_output(out: &Path, expect_json: Option<u64>, dataset_id: Option<&str>) -> Findings {
    verify_output_deep(out, expect_json, dataset_id, false)
}

/// [`verify_output`], with `deep`: every written file's checksum too.
pub fn verify_output_deep(
    out: &Path,
    expect_json: Option<u64>,
    dataset_id: Option<&str>,
    deep: bool,
) -> Findings {
    let mut f = Findings::default();
    let layout = OutputLayout::new(out);
    let report = read_report(&layout, &mut f);
    check_verdict(report.as_ref(), &mut f);
    let view = ReportView::new(report, expect_json, dataset_id);
    let shards = view.done_shards();
    match (view.json["found_json"].as_u64(), view.expected) {
        (None, Some(e)) if !view.extracted => f.problems.push(format!(
            "cannot check --expect-json {e}: report.json has no found_json"
        )),
        (found, expected) => f.merge(check_written(
            &layout,
            &shards,
            expected,
            found.unwrap_or(0),
            view.extracted,
            deep,
        )),
    }
    if view.extracted {
        list_foreign(&layout, &shards, &mut f);
    }
    check_parquet(&layout, &view, &mut f);
    if view.json["mode"] == "index" {
        crate::verify_index::check_index_output(&layout, &view.json, &mut f);
        crate::verify_index::check_webshart_backend(&layout, &mut f);
    } else {
        check_backend(&layout, view.textfile, &mut f);
    }
    f
}

/// The report as JSON; its absence or damage is a problem.
fn read_report(layout: &OutputLayout, f: &mut Findings) -> Option<serde_json::Value> {
    let path = layout.report_path();
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => Some(v),
            Err(e) => {
                f.problems
                    .push(format!("report.json is not valid JSON: {e}"));
                None
            }
        },
        Err(e) => {
            f.problems
                .push(format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn check_verdict(report: Option<&serde_json::Value>, f: &mut Findings) {
    let Some(r) = report else { return };
    match r["verdict"].as_str() {
        Some("ok") => f.checked.push("report.json says the job verified".into()),
        Some(v) => f
            .problems
            .push(format!("report.json verdict is {v:?}: {}", r["problems"])),
        None => f.problems.push("report.json has no verdict".into()),
    }
}

/// Nothing was extracted (`--no-extract`): the shards' count of JSON
/// members is what there is.
fn check_json_members(found: u64, expected: u64, f: &mut Findings) {
    match json_count_problem(expected, found) {
        None => f
            .checked
            .push(format!("the shards held {found} JSON files, as expected")),
        Some(p) => f.problems.push(format!(
            "{p}: the shards held {found} JSON files, expected {expected}"
        )),
    }
}

impl Findings {
    /// Adds `other`'s findings to these.
    fn merge(&mut self, other: Findings) {
        self.checked.extend(other.checked);
        self.problems.extend(other.problems);
        self.foreign_files.extend(other.foreign_files);
        self.foreign_files_total += other.foreign_files_total;
    }
}

fn check_backend(layout: &OutputLayout, textfile: bool, f: &mut Findings) {
    let entry = std::fs::read(layout.backend_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let Some(v) = entry else {
        f.problems
            .push("multidatabackend.json is missing or not JSON".into());
        return;
    };
    let e = &v[0];
    let want = if textfile { "textfile" } else { "parquet" };
    if e["caption_strategy"] == want
        && e["metadata_backend"] == "parquet"
        && e["parquet"]["filename_column"] == "filename"
    {
        f.checked
            .push("multidatabackend.json has the SimpleTuner parquet entry".into());
    } else {
        f.problems.push(format!(
            "multidatabackend.json does not match the output (caption_strategy should be {want})"
        ));
    }
}

/// The seed's parquet columns and their types.
fn check_schema(schema: &arrow_schema::Schema, f: &mut Findings) -> bool {
    let want = [
        ("width", DataType::Int64),
        ("height", DataType::Int64),
        ("caption", DataType::Utf8),
        ("filename", DataType::Utf8),
    ];
    let mut ok = true;
    for (name, dt) in &want {
        match schema.field_with_name(name) {
            Ok(field) if field.data_type() == dt => {}
            Ok(field) => {
                ok = false;
                f.problems.push(format!(
                    "parquet column {name} is {} instead of {dt}",
                    field.data_type()
                ));
            }
            Err(_) => {
                ok = false;
                f.problems.push(format!("parquet has no column {name}"));
            }
        }
    }
    if ok {
        f.checked.push(
            "parquet schema: width int64, height int64, caption string, filename string".into(),
        );
    }
    ok
}

/// The per-row checks: each row's image and caption file in `data/`.
struct RowCheck<'a> {
    data: std::path::PathBuf,
    images: bool,
    textfile: bool,
    rows: u64,
    no_image: u64,
    bad_caption: u64,
    f: &'a mut Findings,
}

impl RowCheck<'_> {
    fn row(&mut self, name: Option<&str>, caption: Option<&str>) {
        self.rows += 1;
        let Some(name) = name else { return };
        if self.images && !self.data.join(name).is_file() {
            self.no_image += 1;
            if self.no_image <= LISTED as u64 {
                let msg = format!("row {}: image data/{name} is missing", self.rows);
                self.f.problems.push(msg);
            }
        }
        if self.textfile {
            let txt = self.data.join(format!("{}.txt", stem(name)));
            let ok = std::fs::read(&txt)
                .map(|b| Some(b.as_slice()) == caption.map(str::as_bytes))
                .unwrap_or(false);
            if !ok {
                self.bad_caption += 1;
                if self.bad_caption <= LISTED as u64 {
                    let msg = format!(
                        "row {}: {} is missing or differs from the caption",
                        self.rows,
                        txt.display()
                    );
                    self.f.problems.push(msg);
                }
            }
        }
    }

    fn finish(self, report_rows: Option<u64>) {
        let (rows, f) = (self.rows, self.f);
        f.checked.push(format!("parquet has {rows} rows"));
        if let Some(n) = report_rows
            && n != rows
        {
            f.problems.push(format!(
                "the parquet has {rows} rows but report.json says {n}"
            ));
        }
        if self.no_image > LISTED as u64 {
            f.problems.push(format!(
                "{} rows in all have no image in data/",
                self.no_image
            ));
        }
        if self.bad_caption > LISTED as u64 {
            f.problems.push(format!(
                "{} rows in all have a missing or different caption file",
                self.bad_caption
            ));
        }
        if self.images && self.no_image == 0 {
            f.checked.push("every row's image is in data/".into());
        }
        if self.textfile && self.bad_caption == 0 {
            f.checked
                .push("every row's caption .txt is in data/ and matches".into());
        }
    }
}

fn check_parquet(layout: &OutputLayout, view: &ReportView, f: &mut Findings) {
    let path = layout.parquet_path(&view.dataset_id);
    let builder = std::fs::File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|file| ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string()));
    let builder = match builder {
        Ok(b) => b,
        Err(e) => {
            f.problems
                .push(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    if !check_schema(builder.schema(), f) {
        return;
    }
    let reader = match builder.with_batch_size(8192).build() {
        Ok(r) => r,
        Err(e) => {
            f.problems
                .push(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let report_rows = view.json["rows"].as_u64();
    let mut check = RowCheck {
        data: layout.data_dir(),
        images: view.extracted,
        textfile: view.textfile && view.extracted,
        rows: 0,
        no_image: 0,
        bad_caption: 0,
        f,
    };
    for batch in reader {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                check.f.problems.push(format!("{}: {e}", path.display()));
                return;
            }
        };
        let column = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let (Some(names), Some(caps)) = (column("filename"), column("caption")) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            let name = (!names.is_null(i)).then(|| names.value(i));
            check.row(name, Some(caps.value(i)));
        }
    }
    check.finish(report_rows);
}
