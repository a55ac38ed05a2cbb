//! The live display of `shardprep run` (a terminal only): shards done/total,
//! samples and MB per second, ETA, and one line per worker with its shard.
//! It reads the job through the coordinator's own `Status` RPC.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardprep_core::proto::StatusRequest;

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
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let Ok(mut client) = shardprep_worker::client::client(&url, &token, None) else {
            return;
        };
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
        let mut lines: BTreeMap<String, ProgressBar> = BTreeMap::new();
        let mut last: Option<(f64, u64, u64)> = None;
        let (mut mb_s, mut rows_s) = (0.0, 0.0);
        loop {
            if let Ok(r) = client.status(StatusRequest {}).await {
                let st = r.into_inner();
                let secs = st.elapsed_ms as f64 / 1000.0;
                if let Some((t0, b0, r0)) = last {
                    let dt = secs - t0;
                    if dt > 0.2 {
                        // Smoothed rates.
                        mb_s = 0.7 * mb_s
                            + 0.3 * ((st.bytes_read.saturating_sub(b0)) as f64 / 1e6 / dt);
                        rows_s = 0.7 * rows_s + 0.3 * ((st.rows.saturating_sub(r0)) as f64 / dt);
                        last = Some((secs, st.bytes_read, st.rows));
                    }
                } else {
                    last = Some((secs, st.bytes_read, st.rows));
                }
                let eta = shardprep_core::wire::eta_secs(st.bytes_read, st.bytes_total, mb_s * 1e6)
                    .map_or_else(|| "-".into(), |s| format!("{s:.0}s"));
                main.set_length(u64::from(st.shards_total.max(1)));
                main.set_position(u64::from(st.shards_done + st.shards_failed));
                main.set_message(format!(
                    "{} samples  {:.0} samples/s  {:.1} MB/s  ETA {eta}  [{}]{}",
                    st.rows,
                    rows_s,
                    mb_s,
                    st.phase,
                    if st.shards_failed > 0 {
                        format!("  {} FAILED", st.shards_failed)
                    } else {
                        String::new()
                    }
                ));
                for w in &st.workers {
                    let bar = lines.entry(w.worker_id.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new_spinner());
                        b.set_style(worker_style.clone());
                        b.set_prefix(w.worker_id.clone());
                        b
                    });
                    let current = st
                        .shards
                        .iter()
                        .find(|s| s.name == w.current_shard && s.state == "leased");
                    let msg = match current {
                        Some(s) => {
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
                        None => format!("idle  ({} done)", w.shards_done),
                    };
                    bar.set_message(msg);
                }
            }
            if *stopped.borrow() {
                main.finish();
                for bar in lines.values() {
                    bar.finish();
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stopped.changed() => {}
            }
        }
    });
    Display { stop, task }
}
