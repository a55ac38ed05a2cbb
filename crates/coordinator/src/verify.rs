//! `shardprep verify OUT`: checks an output folder without a coordinator,
//! as the seed's manual checks do and more. It reads `report.json` as the
//! typed [`Report`], asks the [`judge`] about every committed shard, then
//! checks what the job published ([`check_published`], which the end of a
//! job runs too), all at one [`CheckDepth`].

use std::path::Path;

use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardprep_core::depth::CheckDepth;
use shardprep_core::index_format::{IndexFormat, IndexFormats};
use shardprep_core::layout::{OutputLayout, stem};
use shardprep_core::mode::{JobOutput, Mode};

pub use crate::findings::Findings;
use crate::findings::LISTED;
use crate::judge;
use crate::report::{Report, ShardPhase, ShardReport, Verdict};
use crate::written::{
    ListsRead, ShardWrote, WrittenPaths, check_json_members, check_written, list_foreign,
};

/// What the checks take from a job's report and the flags.
pub(crate) struct JobView<'a> {
    pub report: &'a Report,
    pub dataset_id: String,
    pub textfile: bool,
    pub expected: Option<u64>,
    /// Members were extracted into `data/` (not `--no-extract`).
    pub extracted: bool,
    /// Files were written into `data/`: members, or (with `--no-extract`
    /// too) caption files. Their shards' file lists are checked.
    pub data_written: bool,
    /// What the job wrote, as its report says.
    pub outputs: JobOutput,
    /// Why the report's index formats cannot be read, if they cannot.
    pub formats_unreadable: Option<String>,
}

impl<'a> JobView<'a> {
    /// The view of `report`; the flags, when given, win over it.
    pub(crate) fn new(
        report: &'a Report,
        expect_json: Option<u64>,
        dataset_id: Option<&str>,
    ) -> Self {
        let textfile = report.captions == "textfile";
        let extract_mode = report.mode == Mode::Extract.as_str();
        let extracted = extract_mode && report.totals.files_extracted > 0;
        let data_written = extracted || (extract_mode && report.totals.captions_written > 0);
        let (outputs, formats_unreadable) = match report.written_formats() {
            None => (
                JobOutput::Extract {
                    members: extracted,
                    captions: textfile,
                },
                None,
            ),
            Some(Ok(formats)) => (JobOutput::index(formats), None),
            Some(Err(e)) => (
                JobOutput::index(IndexFormats::default()),
                Some(format!("report.json names unknown index formats ({e})")),
            ),
        };
        JobView {
            report,
            dataset_id: dataset_id.unwrap_or(report.dataset_id.as_str()).to_string(),
            textfile,
            expected: expect_json.or(report.expected_json),
            extracted,
            data_written,
            outputs,
            formats_unreadable,
        }
    }

    /// The shards the report lists as done, in shard order.
    fn done_shards(&self) -> Vec<ShardWrote> {
        done_shards(&self.report.shards)
    }
}

/// The done shards of `shards`, in shard order, with what they wrote.
pub(crate) fn done_shards(shards: &[ShardReport]) -> Vec<ShardWrote> {
    shards
        .iter()
        .filter(|s| s.state == ShardPhase::Done)
        .map(|s| ShardWrote {
            name: s.name.clone(),
            files: s
                .counts
                .as_ref()
                .map_or(0, |c| c.files_extracted + c.captions_written),
        })
        .collect()
}

/// Checks `out` at `depth`: the report, every done shard's commit (as a
/// re-run at the same depth judges it), the files in `data/` and the JSON
/// count, the parquet's schema and rows, each row's image and caption file,
/// and the SimpleTuner entry (index mode: the indexes and the webshart entry).
pub fn verify_output(
    out: &Path,
    expect_json: Option<u64>,
    dataset_id: Option<&str>,
    depth: CheckDepth,
) -> Findings {
    let mut f = Findings::default();
    let layout = OutputLayout::new(out);
    let Some(report) = read_report(&layout, &mut f) else {
        return f;
    };
    check_verdict(&report, &mut f);
    let view = JobView::new(&report, expect_json, dataset_id);
    f.merge(check_committed(&layout, &view, depth));
    let (data, written) = check_data(&layout, &view, depth, None);
    f.merge(data);
    if view.data_written {
        list_foreign(&layout, &written, &mut f);
    }
    f.merge(check_published(&layout, &view, depth, &written));
    f
}

/// The judge on the commits of the shards the report lists as done.
fn check_committed(layout: &OutputLayout, view: &JobView<'_>, depth: CheckDepth) -> Findings {
    let mut f = Findings::default();
    let mut commits = Vec::new();
    for s in view.done_shards() {
        match crate::commit::read_commit(layout, &s.name) {
            Ok(Some(c)) => commits.push((s.name, c)),
            Ok(None) => {
                f.problems.push(format!(
                    "shard {}: {}; run the job again: it redoes the shard",
                    s.name,
                    judge::no_commit(layout)
                ));
                f.damaged_shards.insert(s.name);
            }
            Err(why) => {
                f.problems.push(format!(
                    "shard {}: {why}; run the job again: it redoes the shard",
                    s.name
                ));
                f.damaged_shards.insert(s.name);
            }
        }
    }
    let shards: Vec<(&str, &crate::commit::Commit)> =
        commits.iter().map(|(n, c)| (n.as_str(), c)).collect();
    f.merge(judge::check_commits(layout, &shards, &view.outputs, depth).findings);
    f
}

/// The files in `data/` against the done shards' lists (at `depth`) and
/// the JSON count; without extracted files, the shards' JSON count. Also
/// what the shards wrote and which of it was found damaged, for
/// [`check_published`]'s rows.
pub(crate) fn check_data(
    layout: &OutputLayout,
    view: &JobView<'_>,
    depth: CheckDepth,
    lists: Option<ListsRead>,
) -> (Findings, WrittenPaths) {
    let mut f = Findings::default();
    let shards = view.done_shards();
    let mut written = WrittenPaths::default();
    if view.data_written {
        // Without members in data/, its JSON count is not the job's.
        let expected = view.expected.filter(|_| view.extracted);
        let c = check_written(layout, (&shards, lists), expected, depth);
        f.merge(c.findings);
        written = c.paths;
    }
    if !view.extracted
        && let Some(e) = view.expected
    {
        check_json_members(view.report.found_json, e, &mut f);
    }
    (f, written)
}

/// The checks of what a job published, by its report: the table (it reads
/// back with the fragments' rows; each row's image and caption file) and
/// the dataloader entry; in index mode the indexes. The end of a job runs
/// them on its new report, `verify` on the one it finds.
pub(crate) fn check_published(
    layout: &OutputLayout,
    view: &JobView<'_>,
    depth: CheckDepth,
    written: &WrittenPaths,
) -> Findings {
    // The table and the indexes are read on two threads (neither depends on
    // the other); their findings are merged in this order.
    let (mut f, indexes) = std::thread::scope(|scope| {
        let table = scope.spawn(|| {
            let mut f = Findings::default();
            check_parquet(layout, view, (depth, written), &mut f);
            f
        });
        let indexes = check_indexes(layout, view, depth);
        let table = table.join().unwrap_or_else(|_| {
            let mut f = Findings::default();
            f.problems
                .push("the check of the table panicked (a bug: please report it)".into());
            f
        });
        (table, indexes)
    });
    f.merge(indexes);
    f.problems
        .extend(judge::published_problems(layout, view.report, depth));
    f
}

/// Index mode: every index format written (webshart's and its entry, the
/// dataset-wide files of the others); extract mode: the dataloader entry.
fn check_indexes(layout: &OutputLayout, view: &JobView<'_>, depth: CheckDepth) -> Findings {
    let mut f = Findings::default();
    if let Some(formats) = view.outputs.index_formats() {
        if formats.contains(IndexFormat::Webshart) {
            crate::verify_index::check_index_output(layout, view.report, &mut f);
            crate::verify_index::check_webshart_backend(layout, &mut f);
        }
        let done: Vec<String> = view.done_shards().into_iter().map(|s| s.name).collect();
        f.problems.extend(judge::dataset_index_problems(
            layout,
            &done,
            &view.outputs,
            depth,
        ));
        f.problems.extend(view.formats_unreadable.clone());
    } else {
        check_backend(layout, view.textfile, &mut f);
    }
    f
}

/// The report; its absence or damage is a problem.
fn read_report(layout: &OutputLayout, f: &mut Findings) -> Option<Report> {
    let path = layout.report_path();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            f.problems.push(format!(
                "cannot read {}: {e}; run the job again to write it",
                path.display()
            ));
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            f.problems.push(format!(
                "report.json is not a shardprep report ({e}); run the job again to rewrite it"
            ));
            None
        }
    }
}

fn check_verdict(r: &Report, f: &mut Findings) {
    match r.verdict {
        Verdict::Ok => f.checked.push("report.json says the job verified".into()),
        Verdict::Failed => f.problems.push(format!(
            "report.json verdict is \"failed\": {:?}",
            r.problems
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

/// The per-row checks: each row's image and caption file in `data/` (at
/// [`CheckDepth::Checksums`], the caption's text against the row's). A
/// file no shard wrote (its JSON named an image the shard did not hold, or
/// the write was refused: the report counts and names these) is counted,
/// not a problem.
struct RowCheck<'a> {
    data: std::path::PathBuf,
    /// What the shards wrote into `data/`, and which of it [`check_data`]
    /// found missing or changed (its one `stat` per file is the rows' too).
    written: &'a WrittenPaths,
    unwritten_images: u64,
    unwritten_captions: u64,
    /// At the depth that reads captions: the last row naming each caption
    /// file that several rows name (row number, whether it matched).
    last_of_contested: std::collections::BTreeMap<String, (u64, bool)>,
    images: bool,
    textfile: bool,
    depth: CheckDepth,
    rows: u64,
    no_image: u64,
    bad_caption: u64,
    f: &'a mut Findings,
}

impl RowCheck<'_> {
    fn row(&mut self, name: Option<&str>, caption: Option<&str>) {
        self.rows += 1;
        let Some(name) = name else { return };
        let txt_rel = format!("{}.txt", stem(name));
        let (image_ours, txt_ours) = (self.written.wrote(name), self.written.wrote(&txt_rel));
        self.unwritten_images += u64::from(self.images && !image_ours);
        self.unwritten_captions += u64::from(self.textfile && !txt_ours);
        if self.images && image_ours && self.written.damaged(name) {
            self.no_image += 1;
            if self.no_image <= LISTED as u64 {
                let msg = format!("row {}: image data/{name} is missing", self.rows);
                self.f.problems.push(msg);
            }
        }
        if self.textfile && txt_ours {
            let txt = self.data.join(&txt_rel);
            let ok = match self.depth {
                CheckDepth::Sizes => !self.written.damaged(&txt_rel),
                CheckDepth::Checksums => std::fs::read(&txt)
                    .map(|b| Some(b.as_slice()) == caption.map(str::as_bytes))
                    .unwrap_or(false),
            };
            if self.depth.reads_bytes() && self.written.contested(txt_rel.as_bytes()) {
                // Several rows name this file: it holds the last one's caption.
                self.last_of_contested.insert(txt_rel, (self.rows, ok));
                return;
            }
            self.caption_judged(ok, &txt, self.rows);
        }
    }

    /// Counts (and names, up to [`LISTED`]) row number `row`, whose caption
    /// file `txt` is not `ok`.
    fn caption_judged(&mut self, ok: bool, txt: &Path, row: u64) {
        if ok {
            return;
        }
        self.bad_caption += 1;
        if self.bad_caption <= LISTED as u64 {
            let deep = self.depth.reads_bytes();
            self.f.problems.push(format!(
                "row {row}: {} is missing{}; run the job again{}: it redoes the shard",
                txt.display(),
                if deep {
                    " or differs from the caption"
                } else {
                    ""
                },
                if deep { " with --deep" } else { "" },
            ));
        }
    }

    fn finish(mut self, report_rows: Option<u64>) {
        for (txt_rel, (row, ok)) in std::mem::take(&mut self.last_of_contested) {
            let txt = self.data.join(&txt_rel);
            self.caption_judged(ok, &txt, row);
        }
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
            f.checked.push(if self.unwritten_images == 0 {
                "every row's image is in data/".into()
            } else {
                "every row's image a shard wrote is in data/".into()
            });
        }
        if self.unwritten_images + self.unwritten_captions > 0 {
            f.checked.push(format!(
                "{} rows name an image and {} a caption file no shard wrote into data/ (not in the shard, or refused: report.json counts and names them)",
                self.unwritten_images, self.unwritten_captions
            ));
        }
        if self.textfile && self.bad_caption == 0 {
            f.checked.push(match self.depth {
                CheckDepth::Sizes => {
                    "every row's caption .txt is in data/ (its text is compared with --deep)".into()
                }
                CheckDepth::Checksums => "every row's caption .txt is in data/ and matches".into(),
            });
        }
    }
}

/// The done shards' fragment rows whose JSON a later shard's file replaced
/// (the merge leaves them out); only those shards' fragments are read.
fn shadowed_rows(
    layout: &OutputLayout,
    view: &JobView<'_>,
    written: &WrittenPaths,
) -> Result<u64, String> {
    if written.shadowed.by_shard.is_empty() {
        return Ok(0);
    }
    let fragments: Vec<_> = view
        .done_shards()
        .into_iter()
        .map(|s| {
            let path = layout.fragment_path(&s.name);
            (s.name, path)
        })
        .collect();
    crate::merge::shadowed_rows(&fragments, &written.shadowed).map_err(|e| {
        format!("cannot read a fragment's JSON keys: {e}; run the job again: it redoes the shard")
    })
}

fn check_parquet(
    layout: &OutputLayout,
    view: &JobView<'_>,
    (depth, written): (CheckDepth, &WrittenPaths),
    f: &mut Findings,
) {
    let fragment_rows = view.report.fragment_rows;
    let shadowed = match shadowed_rows(layout, view, written) {
        Ok(n) => n,
        Err(why) => {
            f.problems.push(why);
            return;
        }
    };
    let expected = fragment_rows.saturating_sub(shadowed);
    if let Some(why) = judge::table_problem(layout, &view.dataset_id, expected, depth) {
        f.problems.push(format!(
            "{why}; run the job again: it merges the table again"
        ));
        return;
    }
    f.checked.push(match shadowed {
        0 => format!("the table reads back with the fragments' {fragment_rows} rows"),
        n => format!(
            "the table reads back with the fragments' {fragment_rows} rows but the {n} whose JSON a later shard's file replaced"
        ),
    });
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
    let mut check = RowCheck {
        data: layout.data_dir(),
        written,
        unwritten_images: 0,
        unwritten_captions: 0,
        last_of_contested: Default::default(),
        images: view.extracted,
        textfile: view.textfile && view.data_written,
        depth,
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
    check.finish(Some(view.report.rows));
}
