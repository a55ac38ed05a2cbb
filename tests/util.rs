//! Helpers shared by the integration tests: temp dirs ([`tempdir`]), the one
//! command builder of the binary ([`command`]), the one guard of a started
//! process ([`Proc`]), diagnostics on failure, and an independent oracle of
//! the seed's three steps (tar xf, compile.py, extract-captions.py).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use shardprep_fixtures::{GenOptions, Sample, generate, write_shard};

/// A path as `&str` for argument lists (the tests' temp paths are UTF-8).
pub fn path_str<P: AsRef<Path> + ?Sized>(p: &P) -> &str {
    let p = p.as_ref();
    p.to_str()
        .unwrap_or_else(|| panic!("not a UTF-8 path: {}", p.display()))
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardprep"))
}

/// A test's temp dir, removed when dropped unless `KEEP_TEST_DIRS` is set
/// (then its path is printed and it stays for a look).
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("temp dir").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIRS").is_some()
            && let Some(t) = self.0.take()
        {
            eprintln!("kept {}", t.keep().display());
        }
    }
}

/// A fresh temp dir (see [`TestDir`]).
pub fn tempdir() -> TestDir {
    TestDir(Some(
        tempfile::Builder::new()
            .prefix("shardprep-test-")
            .tempdir()
            .expect("create temp dir"),
    ))
}

/// Whether a variable of this process is a setting of the binary, which must
/// not reach the binary under test: each test gives the ones it means.
pub fn is_shardprep_var(name: &OsStr) -> bool {
    name.to_string_lossy().starts_with("SHARDPREP_")
}

/// `shardprep ARGS` with stdin closed and every `SHARDPREP_*` variable of
/// this process removed. Every test that runs the binary starts here.
pub fn command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if is_shardprep_var(&k) {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// Runs the binary with `envs` on top of [`command`]; returns its output (not checked).
pub fn run_raw(args: &[&str], envs: &[(&str, &str)]) -> Output {
    command(args)
        .envs(envs.iter().copied())
        .output()
        .expect("start shardprep")
}

/// Formats a command's result for a failure message.
pub fn explain(args: &[&str], out: &Output) -> String {
    format!(
        "command: shardprep {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the binary and asserts it exits 0.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run_raw(args, &[]);
    assert!(
        out.status.success(),
        "expected success\n{}",
        explain(args, &out)
    );
    out
}

/// `shardprep run --input IN --output OUT --workers 2 EXTRA...`, asserted to succeed.
pub fn run_job(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--input",
        path_str(input),
        "--output",
        path_str(out),
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// Generates `shards` DALLE-3-style shards with `seed` into `dir`.
pub fn make_shards(dir: &Path, shards: usize, samples: usize, seed: u64) -> Vec<PathBuf> {
    generate(
        dir,
        &GenOptions {
            shards,
            samples_per_shard: samples,
            image_bytes: 700,
            seed,
            no_width_every: 7,
            ..GenOptions::default()
        },
    )
    .expect("generate shards")
}

/// One parquet row.
pub type Row = (i64, i64, String, String);

/// What the seed's pipeline produces.
#[derive(Debug, Default)]
pub struct Expected {
    /// Every file of data/ (relative path → bytes), captions included.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// Rows in shard order, then member order.
    pub rows: Vec<Row>,
    /// The seed's `find data -name '*.json' | wc -l` before overwrites: JSON members.
    pub json_members: u64,
}

fn py_int(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::Number(n) => n.as_i64().unwrap_or_else(|| n.as_f64().unwrap() as i64),
        serde_json::Value::String(s) => s.trim().parse().unwrap(),
        other => panic!("oracle: int({other})"),
    }
}

/// The seed's three steps, computed independently with the `tar` crate and
/// `serde_json::Value` (only for well-formed shards): `tar xf` of the
/// shards in order, then `compile.py` and `extract-captions.py` over the
/// JSON files `data/` holds (a later member of the same path replaced an
/// earlier one, in one shard or across shards, so only the last makes a
/// row; rows come in the order the surviving JSONs were written).
pub fn oracle(shards: &[PathBuf], caption_field: &str) -> Expected {
    let mut e = Expected::default();
    // Each JSON member in order: its path and what it makes.
    let mut jsons: Vec<(PathBuf, Option<(Row, PathBuf)>)> = Vec::new();
    let mut sorted = shards.to_vec();
    sorted.sort();
    for shard in &sorted {
        let mut ar = tar::Archive::new(std::fs::File::open(shard).unwrap());
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            if path.to_string_lossy().ends_with(".json") {
                e.json_members += 1;
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
                let made = v.get("width").is_some().then(|| {
                    let name = v["image_name"].as_str().unwrap().to_string();
                    let caption = v[caption_field].as_str().unwrap().to_string();
                    let stem = match name.rfind('.') {
                        Some(i) => name[..i].to_string(),
                        None => name.clone(),
                    };
                    let row = (py_int(&v["width"]), py_int(&v["height"]), caption, name);
                    (row, PathBuf::from(format!("{stem}.txt")))
                });
                jsons.push((path.clone(), made));
            }
            e.files.insert(path, data);
        }
    }
    let last: BTreeMap<&PathBuf, usize> =
        jsons.iter().enumerate().map(|(i, (p, _))| (p, i)).collect();
    let mut captions = Vec::new();
    for (i, (path, made)) in jsons.iter().enumerate() {
        if let (true, Some((row, txt))) = (last[path] == i, made) {
            captions.push((txt.clone(), row.2.clone().into_bytes()));
            e.rows.push(row.clone());
        }
    }
    // extract-captions.py runs after every shard is extracted.
    for (p, c) in captions {
        e.files.insert(p, c);
    }
    e
}

/// Every regular file under `dir` (relative path → bytes).
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    out
}

/// Rows of a parquet file with the seed's four columns.
pub fn read_rows(path: &Path) -> Vec<Row> {
    use arrow_array::{Array, Int64Array, StringArray};
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let w = b
            .column_by_name("width")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let h = b
            .column_by_name("height")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let c = b
            .column_by_name("caption")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        let n = b
            .column_by_name("filename")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            assert!(!w.is_null(i) && !n.is_null(i));
            rows.push((
                w.value(i),
                h.value(i),
                c.value(i).to_string(),
                n.value(i).to_string(),
            ));
        }
    }
    rows
}

/// The parsed report.json of an output folder.
pub fn report(out: &Path) -> serde_json::Value {
    let p = out.join("report.json");
    serde_json::from_slice(
        &std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
    )
    .unwrap()
}

/// Asserts that `out` holds exactly what the seed's pipeline gives for `shards`.
pub fn assert_matches_seed(out: &Path, shards: &[PathBuf]) {
    let (e, unlisted) = assert_data_matches_seed(out, shards);
    let r = report(out);
    assert_eq!(r["verdict"], "ok", "report: {r:#}");
    assert_eq!(r["found_json"], e.json_members);
    assert_eq!(r["rows"], e.rows.len() as u64);
    assert_eq!(r["totals"]["captions_for_unlisted_images"], unlisted);
}

/// Asserts that `out`'s `data/` and table are what the seed's pipeline gives
/// for `shards`; returns the oracle and how many caption files the job
/// wrote beyond the seed's.
pub fn assert_data_matches_seed(out: &Path, shards: &[PathBuf]) -> (Expected, u64) {
    let e = oracle(shards, "short_caption");
    let mut got = read_tree(&out.join("data"));
    let unlisted = take_unlisted_captions(&mut got, &e.files);
    let want_names: Vec<_> = e.files.keys().collect();
    let got_names: Vec<_> = got.keys().collect();
    assert_eq!(
        got_names.len(),
        want_names.len(),
        "different number of files in data/"
    );
    assert_eq!(got_names, want_names, "different file names in data/");
    for (k, v) in &e.files {
        assert!(
            got[k] == *v,
            "file data/{} differs from the seed's",
            k.display()
        );
    }
    let rows = read_rows(&out.join("dalle3.parquet"));
    assert_eq!(rows.len(), e.rows.len(), "row count");
    assert_eq!(rows, e.rows, "rows (shard order, then member order)");
    (e, unlisted)
}

/// Removes from `got` the caption files the job writes beyond the seed's
/// (issue 16: a `.txt` beside each image no row captions); returns how many.
pub fn take_unlisted_captions(
    got: &mut BTreeMap<PathBuf, Vec<u8>>,
    seed: &BTreeMap<PathBuf, Vec<u8>>,
) -> u64 {
    let extra: Vec<PathBuf> = got
        .keys()
        .filter(|k| !seed.contains_key(*k) && k.extension().is_some_and(|e| e == "txt"))
        .filter(|k| {
            ["png", "jpg", "jpeg"]
                .iter()
                .any(|e| got.contains_key(&k.with_extension(e)))
        })
        .cloned()
        .collect();
    for k in &extra {
        got.remove(k);
    }
    extra.len() as u64
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------- processes

/// How long a process asked to stop (SIGTERM) gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A started process, stopped when the guard drops (even on a panic):
/// SIGCONT and SIGTERM to it and to every process below it (so that `run`
/// stops its workers, and a worker a test froze with SIGSTOP can exit), then
/// SIGKILL to what is left after [`STOP_GRACE`]. After a panic it prints the
/// tail of its log, if it writes one.
pub struct Proc {
    name: String,
    /// None once handed over by [`Proc::output`].
    child: Option<Child>,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
    /// When SIGTERM was sent, if it was.
    terminated: Option<Instant>,
}

impl Proc {
    /// Starts `cmd`; its stdout and stderr are as `cmd` set them.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            status: None,
            log: None,
            terminated: None,
        }
    }

    /// Starts `cmd` with stdout and stderr going to the file `log`.
    pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("create log file");
        cmd.stdout(file.try_clone().expect("clone log file"))
            .stderr(file);
        let mut p = Proc::spawn(name, cmd);
        p.log = Some(log.to_path_buf());
        p
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("process already handed over")
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("process already handed over")
            .id()
    }

    /// The exit status, if the process has ended (reaps it).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child().try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn running(&mut self) -> bool {
        self.poll().is_none()
    }

    /// Sends a real signal. Only to a child not yet reaped, so the pid is ours.
    pub fn signal(&mut self, sig: i32) {
        assert!(
            self.running(),
            "{} already exited before signal {sig}",
            self.name
        );
        let pid = self.pid() as i32;
        // SAFETY: kill(2) on our own, unreaped child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the process to exit; None after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.poll() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_timeout(timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.name))
    }

    /// Waits up to `limit` for the exit, then returns what it wrote to its
    /// piped stdout and stderr; after `limit` kills it and panics with that output.
    pub fn output(mut self, limit: Duration) -> Output {
        let exited = self.wait_timeout(limit).is_some();
        if !exited {
            self.kill_tree();
        }
        let mut child = self.child.take().expect("process already handed over");
        let status = match self.status {
            Some(st) => st,
            None => child.wait().expect("wait"),
        };
        let mut o = Output {
            status,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_end(&mut o.stdout);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_end(&mut o.stderr);
        }
        assert!(
            exited,
            "{} did not exit within {limit:?}\n{}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// What the process wrote to its log so far (empty without a log).
    pub fn log(&self) -> String {
        let bytes = self
            .log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Asks the process to stop if it still runs: SIGCONT to it and every
    /// process below it, SIGTERM to it.
    pub fn terminate(&mut self) {
        if self.child.is_none() || self.terminated.is_some() || !self.running() {
            return;
        }
        let pid = self.pid();
        for p in descendants(pid).into_iter().chain([pid]) {
            // SAFETY: kill(2) on our own unreaped child or a process below it.
            unsafe { libc::kill(p as i32, libc::SIGCONT) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        self.terminated = Some(Instant::now());
    }

    /// Stops the process: [`Proc::terminate`], then SIGKILL to what is
    /// left [`STOP_GRACE`] after it. Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.terminate();
        if let Some(st) = self.poll() {
            return st;
        }
        let since = self.terminated.map_or(Duration::ZERO, |t| t.elapsed());
        if let Some(st) = self.wait_timeout(STOP_GRACE.saturating_sub(since)) {
            return st;
        }
        self.kill_tree();
        let st = self.child().wait().expect("wait");
        self.status = Some(st);
        st
    }

    /// SIGKILL to the process and every process below it.
    fn kill_tree(&mut self) {
        if self.status.is_some() {
            return;
        }
        let pid = self.pid();
        for p in descendants(pid) {
            // SAFETY: kill(2) on a process below our own unreaped child.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = self.child().kill();
    }

    /// The last lines of the log, for a failed test.
    fn dump(&self) {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(120)..];
        eprintln!(
            "===== {} (pid {:?}, {:?}) =====\n{}",
            self.name,
            self.child.as_ref().map(Child::id),
            self.status,
            tail.join("\n")
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.stop();
        if std::thread::panicking() && self.log.is_some() {
            self.dump();
        }
    }
}

/// The pids of `parent`'s direct children (from /proc/*/stat), zombies left out.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (f.next(), f.next()) else {
            continue;
        };
        if ppid.parse::<u32>().ok() == Some(parent) && state != "Z" {
            v.push(pid);
        }
    }
    v
}

/// Every process below `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for c in children_of(p) {
            all.push(c);
            next.push(c);
        }
    }
    all
}

/// Energon's `index.sqlite` as its sorted rows (the pages of two builds of
/// the same rows differ with the order the shards committed in).
pub fn sqlite_rows(db: &Path) -> Vec<u8> {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return b"unreadable".to_vec();
    };
    let mut rows = Vec::new();
    for table in ["samples", "sample_parts"] {
        let Ok(mut q) = c.prepare(&format!("SELECT * FROM {table}")) else {
            return b"unreadable".to_vec();
        };
        let n = q.column_count();
        let read = q.query_map([], |r| {
            (0..n)
                .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                .collect::<Result<Vec<_>, _>>()
        });
        match read.and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
            Ok(mut t) => {
                t.sort();
                rows.push((table, t));
            }
            Err(_) => return b"unreadable".to_vec(),
        }
    }
    format!("{rows:?}").into_bytes()
}

/// Copies the tar `from` to `to` with every member's bytes changed and its
/// size too: each JSON's `short_caption` gets a prefix, each image 33 bytes
/// of trailing padding (its header, and so its size, still read the same).
pub fn same_names_other_bytes(from: &Path, to: &Path) {
    let mut ar = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(to).unwrap());
    for entry in ar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path.extension().is_some_and(|e| e == "json") {
            let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            let old = v["short_caption"].as_str().unwrap_or("").to_string();
            v["short_caption"] = serde_json::Value::from(format!("the later shard's: {old}"));
            data = serde_json::to_vec(&v).unwrap();
        } else {
            data.extend([0u8; 33]);
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}
