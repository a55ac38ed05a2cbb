//! The live display of `shardprep run` (a terminal only): shards done/total,
//! samples and MB per second, ETA, and one line per worker with its shard.
//! It reads the job through the coordinator's own `Status` RPC.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardprep_core::proto::{StatusRequest, StatusResponse, WorkerStatus};

use crate::cli::ProgressMode;

/// Whether the live display is on for this mode.
pub fn active(mode: ProgressMode) -> bool {
    match mode {
        ProgressMode::Always => true,
        ProgressMode::Never => false,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    }
}

/// A running display; [`Display::finish`] draws the last state and leaves it on screen.
pub struct Display {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Display {
    /// Stops the display after one last update, so that what is printed next
    /// (the summary) does not mix with the bars.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Starts the display task.
pub fn spawn(url: String, token: String) -> Display {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(show(url, token, stopped));
    Display { stop, task }
}

/// How often the display asks the coordinator for the job's status.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// Polls the coordinator's status and redraws, until told to stop.
async fn show(url: String, token: String, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut client) = shardprep_worker::client::client(&url, &token, None) else {
        return;
    };
    let mut bars = Bars::new();
    let mut rates = Rates::default();
    loop {
        if let Ok(r) = client.status(StatusRequest {}).await {
            let st = r.into_inner();
            rates.update(&st);
            bars.draw(&st, &rates);
        }
        if *stopped.borrow() {
            bars.finish();
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// Smoothed MB/s and rows/s between status polls.
#[derive(Debug, Default)]
struct Rates {
    /// (elapsed seconds, bytes read, rows) at the last update.
    last: Option<(f64, u64, u64)>,
    mb_s: f64,
    rows_s: f64,
}

impl Rates {
    /// Folds in a new status; polls closer than 0.2 s to the last are ignored.
    fn update(&mut self, st: &StatusResponse) {
        let secs = st.elapsed_ms as f64 / 1000.0;
        if let Some((t0, b0, r0)) = self.last {
            let dt = secs - t0;
            if dt <= 0.2 {
                return;
            }
            let mb_s = st.bytes_read.saturating_sub(b0) as f64 / 1e6 / dt;
            let rows_s = st.rows.saturating_sub(r0) as f64 / dt;
            self.mb_s = 0.7 * self.mb_s + 0.3 * mb_s;
            self.rows_s = 0.7 * self.rows_s + 0.3 * rows_s;
        }
        self.last = Some((secs, st.bytes_read, st.rows));
    }

    /// The time left at the current rate, `-` when unknown.
    fn eta(&self, st: &StatusResponse) -> String {
        shardprep_core::wire::eta_secs(st.bytes_read, st.bytes_total, self.mb_s * 1e6)
            .map_or_else(|| "-".into(), |s| format!("{s:.0}s"))
    }
}

/// The bars on screen: one for the job, one line per worker.
struct Bars {
    multi: MultiProgress,
    main: ProgressBar,
    worker_style: ProgressStyle,
    workers: BTreeMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let main = multi.add(ProgressBar::new(1));
        main.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:32.cyan/blue}] {pos}/{len} shards  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        main.set_prefix("shardprep");
        let worker_style = ProgressStyle::with_template("  {prefix:<24} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        Bars {
            multi,
            main,
            worker_style,
            workers: BTreeMap::new(),
        }
    }

    fn draw(&mut self, st: &StatusResponse, rates: &Rates) {
        self.main.set_length(u64::from(st.shards_total.max(1)));
        self.main
            .set_position(u64::from(st.shards_done + st.shards_failed));
        self.main.set_message(job_line(st, rates));
        for w in &st.workers {
            let bar = self.worker_bar(&w.worker_id);
            bar.set_message(worker_line(st, w));
        }
    }

    /// The line of worker `id`, added below the others on first sight.
    fn worker_bar(&mut self, id: &str) -> &ProgressBar {
        self.workers.entry(id.to_string()).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new_spinner());
            b.set_style(self.worker_style.clone());
            b.set_prefix(id.to_string());
            b
        })
    }

    /// Leaves the last state on screen.
    fn finish(&self) {
        self.main.finish();
        for bar in self.workers.values() {
            bar.finish();
        }
    }
}

/// The job's line after the bar: samples, rates, ETA, phase, failures.
fn job_line(st: &StatusResponse, rates: &Rates) -> String {
    let failed = if st.shards_failed > 0 {
        format!("  {} FAILED", st.shards_failed)
    } else {
        String::new()
    };
    format!(
        "{} samples  {:.0} samples/s  {:.1} MB/s  ETA {}  [{}]{failed}",
        st.rows,
        rates.rows_s,
        rates.mb_s,
        rates.eta(st),
        st.phase,
    )
}

/// A worker's line: its leased shard with the share read and rows so far, or idle.
fn worker_line(st: &StatusResponse, w: &WorkerStatus) -> String {
    let current = st
        .shards
        .iter()
        .find(|s| s.name == w.current_shard && s.state == "leased");
    let Some(s) = current else {
        return format!("idle  ({} done)", w.shards_done);
    };
    let p = s.progress.unwrap_or_default();
    let pct = if s.size > 0 {
        100.0 * p.bytes_read as f64 / s.size as f64
    } else {
        0.0
    };
    format!(
        "{}  {:>3.0}%  {} rows  ({} done)",
        s.name,
        pct.min(100.0),
        p.rows,
        w.shards_done
    )
}

#[cfg(test)]
mod tests {
    use shardprep_core::proto::{Progress, ShardStatus};

    use super::*;

    fn status(elapsed_ms: u64, bytes_read: u64, rows: u64) -> StatusResponse {
        StatusResponse {
            elapsed_ms,
            bytes_read,
            bytes_total: 10_000_000,
            rows,
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_smoothed_and_ignore_polls_too_close_together() {
        let mut r = Rates::default();
        r.update(&status(1000, 0, 0));
        assert_eq!((r.mb_s, r.rows_s), (0.0, 0.0));
        // 0.1 s later: ignored.
        r.update(&status(1100, 5_000_000, 500));
        assert_eq!((r.mb_s, r.rows_s), (0.0, 0.0));
        // 1 s after the first: 2 MB/s and 100 rows/s, 30 % of which is taken.
        r.update(&status(2000, 2_000_000, 100));
        assert!((r.mb_s - 0.6).abs() < 1e-9, "{r:?}");
        assert!((r.rows_s - 30.0).abs() < 1e-9, "{r:?}");
        // 8 MB left at 0.6 MB/s.
        assert_eq!(r.eta(&status(2000, 2_000_000, 100)), "13s");
        assert_eq!(Rates::default().eta(&status(0, 0, 0)), "-");
    }

    #[test]
    fn a_worker_line_shows_its_leased_shard_or_idle() {
        let mut st = status(0, 0, 0);
        st.shards.push(ShardStatus {
            name: "data-000001.tar".into(),
            state: "leased".into(),
            size: 400,
            progress: Some(Progress {
                bytes_read: 100,
                rows: 7,
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut w = WorkerStatus {
            worker_id: "w0".into(),
            current_shard: "data-000001.tar".into(),
            shards_done: 2,
            ..Default::default()
        };
        assert_eq!(
            worker_line(&st, &w),
            "data-000001.tar   25%  7 rows  (2 done)"
        );
        w.current_shard = String::new();
        assert_eq!(worker_line(&st, &w), "idle  (2 done)");
        st.shards_failed = 1;
        st.phase = "running".into();
        assert!(
            job_line(&st, &Rates::default()).ends_with("[running]  1 FAILED"),
            "{}",
            job_line(&st, &Rates::default())
        );
    }
}
