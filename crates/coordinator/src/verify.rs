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

/// Checks `out`: the report, the JSON count in `data/`, the parquet's schema
/// and rows, each row's image and caption file, and the SimpleTuner entry.
pub fn verify_output(out: &Path, expect_json: Option<u64>, dataset_id: Option<&str>) -> Findings {
    let mut f = Findings::default();
    let layout = OutputLayout::new(out);
    let report: Option<serde_json::Value> = match std::fs::read(layout.report_path()) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(v) => Some(v),
            Err(e) => {
                f.problems
                    .push(format!("report.json is not valid JSON: {e}"));
                None
            }
        },
        Err(e) => {
            f.problems.push(format!(
                "cannot read {}: {e}",
                layout.report_path().display()
            ));
            None
        }
    };
    let r = report.clone().unwrap_or(serde_json::Value::Null);
    match r["verdict"].as_str() {
        Some("ok") => f.checked.push("report.json says the job verified".into()),
        Some(v) => f
            .problems
            .push(format!("report.json verdict is {v:?}: {}", r["problems"])),
        None if report.is_some() => f.problems.push("report.json has no verdict".into()),
        None => {}
    }
    let dataset_id = dataset_id
        .map(str::to_string)
        .or_else(|| r["dataset_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| "dalle3".into());
    let textfile = r["captions"]
        .as_str()
        .map(|c| c == "textfile")
        .unwrap_or(true);
    let expected = expect_json.or_else(|| r["expected_json"].as_u64());

    // The seed's check: find data -name '*.json' | wc -l
    let extracted = r["totals"]["files_extracted"]
        .as_u64()
        .map(|n| n > 0)
        .unwrap_or(true);
    if extracted {
        match count_json_files(&layout.data_dir()) {
            Ok(n) => {
                f.checked.push(format!("data/ holds {n} *.json files"));
                if let Some(e) = expected {
                    if n == e {
                        f.checked
                            .push(format!("JSON count matches the expected {e}"));
                    } else {
                        f.problems
                            .push(format!("data/ holds {n} *.json files, expected {e}"));
                    }
                }
                if let Some(found) = r["found_json"].as_u64()
                    && found != n
                {
                    f.problems.push(format!(
                            "the shards held {found} JSON members but data/ has {n} *.json files (duplicate names across shards overwrite each other: {})",
                            r["duplicate_filenames"]
                        ));
                }
            }
            Err(e) => f
                .problems
                .push(format!("cannot walk {}: {e}", layout.data_dir().display())),
        }
    } else if let Some(e) = expected {
        // Nothing was extracted (--no-extract): the report's count of JSON members is what there is.
        match r["found_json"].as_u64() {
            Some(found) if found == e => f
                .checked
                .push(format!("the shards held {found} JSON files, as expected")),
            Some(found) => f
                .problems
                .push(format!("the shards held {found} JSON files, expected {e}")),
            None => f.problems.push(format!(
                "cannot check --expect-json {e}: report.json has no found_json"
            )),
        }
    }

    check_parquet(&layout, &dataset_id, textfile && extracted, &r, &mut f);

    match std::fs::read(layout.backend_path())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        Some(v) => {
            let e = &v[0];
            let want = if textfile { "textfile" } else { "parquet" };
            if e["caption_strategy"] == want
                && e["metadata_backend"] == "parquet"
                && e["parquet"]["filename_column"] == "filename"
            {
                f.checked
                    .push("multidatabackend.json has the SimpleTuner parquet entry".into());
            } else {
                f.problems.push(format!("multidatabackend.json does not match the output (caption_strategy should be {want})"));
            }
        }
        None => f
            .problems
            .push("multidatabackend.json is missing or not JSON".into()),
    }
    f
}

fn check_parquet(
    layout: &OutputLayout,
    dataset_id: &str,
    textfile: bool,
    r: &serde_json::Value,
    f: &mut Findings,
) {
    let path = layout.parquet_path(dataset_id);
    let reader = match std::fs::File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|file| ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(e) => {
            f.problems
                .push(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let schema = reader.schema().clone();
    let want = [
        ("width", DataType::Int64),
        ("height", DataType::Int64),
        ("caption", DataType::Utf8),
        ("filename", DataType::Utf8),
    ];
    let mut schema_ok = true;
    for (name, dt) in &want {
        match schema.field_with_name(name) {
            Ok(field) if field.data_type() == dt => {}
            Ok(field) => {
                schema_ok = false;
                f.problems.push(format!(
                    "parquet column {name} is {} instead of {dt}",
                    field.data_type()
                ));
            }
            Err(_) => {
                schema_ok = false;
                f.problems.push(format!("parquet has no column {name}"));
            }
        }
    }
    if !schema_ok {
        return;
    }
    f.checked
        .push("parquet schema: width int64, height int64, caption string, filename string".into());
    let reader = match reader.with_batch_size(8192).build() {
        Ok(r) => r,
        Err(e) => {
            f.problems
                .push(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let data = layout.data_dir();
    let (mut rows, mut no_image, mut bad_caption) = (0u64, 0u64, 0u64);
    for batch in reader {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                f.problems.push(format!("{}: {e}", path.display()));
                return;
            }
        };
        let (Some(names), Some(caps)) = (
            batch
                .column_by_name("filename")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
            batch
                .column_by_name("caption")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
        ) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            rows += 1;
            if names.is_null(i) {
                continue;
            }
            let name = names.value(i);
            if layout_has_extracted(r) && !data.join(name).is_file() {
                no_image += 1;
                if no_image <= LISTED as u64 {
                    f.problems
                        .push(format!("row {rows}: image data/{name} is missing"));
                }
            }
            if textfile {
                let txt = data.join(format!("{}.txt", stem(name)));
                let ok = std::fs::read(&txt)
                    .map(|b| b == caps.value(i).as_bytes())
                    .unwrap_or(false);
                if !ok {
                    bad_caption += 1;
                    if bad_caption <= LISTED as u64 {
                        f.problems.push(format!(
                            "row {rows}: {} is missing or differs from the caption",
                            txt.display()
                        ));
                    }
                }
            }
        }
    }
    f.checked.push(format!("parquet has {rows} rows"));
    if let Some(n) = r["rows"].as_u64()
        && n != rows
    {
        f.problems.push(format!(
            "the parquet has {rows} rows but report.json says {n}"
        ));
    }
    if no_image > LISTED as u64 {
        f.problems
            .push(format!("{no_image} rows in all have no image in data/"));
    }
    if bad_caption > LISTED as u64 {
        f.problems.push(format!(
            "{bad_caption} rows in all have a missing or different caption file"
        ));
    }
    if no_image == 0 {
        f.checked.push("every row's image is in data/".into());
    }
    if textfile && bad_caption == 0 {
        f.checked
            .push("every row's caption .txt is in data/ and matches".into());
    }
}

fn layout_has_extracted(r: &serde_json::Value) -> bool {
    r["totals"]["files_extracted"]
        .as_u64()
        .map(|n| n > 0)
        .unwrap_or(true)
}
