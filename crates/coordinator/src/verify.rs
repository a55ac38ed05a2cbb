//! `shardprep verify OUT`: checks an output folder without a coordinator,
//! as the seed's manual checks do and more.

use std::path::Path;

use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use shardprep_core::layout::{OutputLayout, stem};

/// What was checked and what is wrong.
#[derive(Debug, Default, Serialize)]
pub struct Findings {
    pub checked: Vec<String>,
    pub problems: Vec<String>,
}

/// Problems listed one by one before they are only counted.
const LISTED: usize = 20;

/// Counts `*.json` files under `dir`, like `find dir -name '*.json' | wc -l`.
pub fn count_json_files(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if e.file_name().as_encoded_bytes().ends_with(b".json") {
                n += 1;
            }
        }
    }
    Ok(n)
}

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
}

/// Checks `out`: the report, the JSON count in `data/`, the parquet's schema
/// and rows, each row's image and caption file, and the SimpleTuner entry.
pub fn verify_output(out: &Path, expect_json: Option<u64>, dataset_id: Option<&str>) -> Findings {
    let mut f = Findings::default();
    let layout = OutputLayout::new(out);
    let report = read_report(&layout, &mut f);
    check_verdict(report.as_ref(), &mut f);
    let view = ReportView::new(report, expect_json, dataset_id);
    if view.extracted {
        check_json_in_data(&layout, &view, &mut f);
    } else if let Some(e) = view.expected {
        check_json_members(&view.json, e, &mut f);
    }
    check_parquet(&layout, &view, &mut f);
    check_backend(&layout, view.textfile, &mut f);
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

/// The seed's check: `find data -name '*.json' | wc -l`.
fn check_json_in_data(layout: &OutputLayout, view: &ReportView, f: &mut Findings) {
    let n = match count_json_files(&layout.data_dir()) {
        Ok(n) => n,
        Err(e) => {
            f.problems
                .push(format!("cannot walk {}: {e}", layout.data_dir().display()));
            return;
        }
    };
    f.checked.push(format!("data/ holds {n} *.json files"));
    if let Some(e) = view.expected {
        if n == e {
            f.checked
                .push(format!("JSON count matches the expected {e}"));
        } else {
            f.problems
                .push(format!("data/ holds {n} *.json files, expected {e}"));
        }
    }
    if let Some(found) = view.json["found_json"].as_u64()
        && found != n
    {
        f.problems.push(format!(
            "the shards held {found} JSON members but data/ has {n} *.json files (duplicate names across shards overwrite each other: {})",
            view.json["duplicate_filenames"]
        ));
    }
}

/// Nothing was extracted (`--no-extract`): the report's count of JSON
/// members is what there is.
fn check_json_members(report: &serde_json::Value, expected: u64, f: &mut Findings) {
    match report["found_json"].as_u64() {
        Some(found) if found == expected => f
            .checked
            .push(format!("the shards held {found} JSON files, as expected")),
        Some(found) => f.problems.push(format!(
            "the shards held {found} JSON files, expected {expected}"
        )),
        None => f.problems.push(format!(
            "cannot check --expect-json {expected}: report.json has no found_json"
        )),
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
        if self.no_image == 0 {
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
