//! The worker processes of `shardprep run`: how one is started
//! ([`Launcher`]), and the set of them while the job runs ([`Workers`]):
//! restarted when one dies, signalled on Ctrl-C, stopped at the end.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use shardprep_core::auth;
use tokio::process::{Child, Command};

use crate::cli::LogFormat;

/// Restarts allowed per worker slot when a worker process dies.
const RESTARTS_PER_SLOT: u32 = 3;

/// How long the workers get after the job ends before they are asked to stop.
const SETTLE: Duration = Duration::from_millis(300);

/// The longest wait for a worker that was asked to stop, before it is killed.
const MAX_GRACE: Duration = Duration::from_secs(3);

/// How `run` starts worker number `i` (the first start and any restart).
pub struct Launcher {
    pub exe: PathBuf,
    pub url: String,
    pub token: String,
    pub log: LogFormat,
    /// Test hook for worker 0 only.
    pub fault_worker0: Option<String>,
    /// `--write-threads` of each worker.
    pub write_threads: usize,
    /// The workers' log level when `RUST_LOG` does not say (quieter under
    /// the live display).
    pub default_log_level: &'static str,
}

impl Launcher {
    fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let fault = if i == 0 {
            self.fault_worker0.as_deref()
        } else {
            None
        };
        let mut cmd = self.command(i, fault);
        cmd.spawn()
            .with_context(|| format!("cannot start worker process {}", self.exe.display()))
    }

    /// The command line of local worker `i` (its environment is set explicitly,
    /// so a variable of the user's shell cannot change what `run` asked for).
    fn command(&self, i: usize, fault: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--log-format")
            .arg(match self.log {
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            })
            .arg("worker")
            .arg("--coordinator")
            .arg(&self.url)
            .env("SHARDPREP_TOKEN", &self.token)
            .env_remove("SHARDPREP_TOKEN_FILE")
            .env(
                "SHARDPREP_WORKER_ID",
                format!("local-{i}-{:04x}", auth::random_u64() & 0xffff),
            )
            // The coordinator is local: if it is gone for this long, it is not coming back.
            .env("SHARDPREP_CONNECT_TIMEOUT", "20s")
            .env("SHARDPREP_WRITE_THREADS", self.write_threads.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", self.default_log_level);
        }
        match fault {
            Some(f) => cmd.env("SHARDPREP_FAULT", f),
            None => cmd.env_remove("SHARDPREP_FAULT"),
        };
        cmd
    }
}

/// One worker place: the process in it (none once it ended) and its restarts.
struct Slot {
    child: Option<Child>,
    restarts: u32,
}

/// The worker processes of one `run`. Dropping it kills those still running.
pub struct Workers {
    launcher: Launcher,
    slots: Vec<Slot>,
}

impl Workers {
    /// Starts `n` workers.
    pub fn start(launcher: Launcher, n: usize) -> anyhow::Result<Workers> {
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            slots.push(Slot {
                child: Some(launcher.spawn(i)?),
                restarts: 0,
            });
        }
        Ok(Workers { launcher, slots })
    }

    /// Restarts the workers that died while the job runs; fails once every
    /// slot has used up its restarts.
    pub fn supervise(&mut self) -> anyhow::Result<()> {
        let mut alive = 0;
        for i in 0..self.slots.len() {
            if self.check(i)? {
                alive += 1;
            }
        }
        if alive == 0
            && self.slots.iter().all(|s| s.child.is_none())
            && self.slots.iter().any(|s| s.restarts >= RESTARTS_PER_SLOT)
        {
            anyhow::bail!("every worker process died; see the errors above");
        }
        Ok(())
    }

    /// Looks at slot `i`, restarting its worker if it died; true if a worker runs there.
    fn check(&mut self, i: usize) -> anyhow::Result<bool> {
        let s = &mut self.slots[i];
        let Some(c) = &mut s.child else {
            return Ok(false);
        };
        match c.try_wait() {
            Ok(None) => return Ok(true),
            Ok(Some(st)) if st.success() => s.child = None,
            Ok(Some(st)) if s.restarts < RESTARTS_PER_SLOT => {
                s.restarts += 1;
                tracing::warn!(worker = i, status = %st, restart = s.restarts, "a worker process died; starting a new one");
                s.child = Some(self.launcher.spawn(i)?);
                return Ok(true);
            }
            Ok(Some(st)) => {
                tracing::error!(worker = i, status = %st, "a worker process died too often; not restarting it");
                s.child = None;
            }
            Err(e) => tracing::warn!(error = %e, "cannot check a worker process"),
        }
        Ok(false)
    }

    /// Asks every running worker to stop (SIGTERM): it gives its shard back.
    pub fn terminate(&self) {
        for c in self.slots.iter().filter_map(|s| s.child.as_ref()) {
            terminate(c);
        }
    }

    /// Ends the workers after the job: the coordinator has told every worker
    /// it heard from; those still running never reached it (e.g. a job that
    /// had nothing left to do). They get a short while to exit, then SIGTERM,
    /// then are killed after `grace` (at most [`MAX_GRACE`]).
    pub async fn stop(&mut self, grace: Duration) {
        let settle = Instant::now() + SETTLE;
        for c in self.slots.iter_mut().filter_map(|s| s.child.as_mut()) {
            let left = settle.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, c.wait()).await;
            if let Ok(None) = c.try_wait() {
                terminate(c);
            }
        }
        let deadline = Instant::now() + grace.min(MAX_GRACE);
        for c in self.slots.iter_mut().filter_map(|s| s.child.as_mut()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                tracing::warn!(pid = c.id(), "worker did not exit in time; killing it");
                let _ = c.kill().await;
            }
        }
    }
}

/// SIGTERM to a worker not yet reaped.
fn terminate(c: &Child) {
    // `id()` is None once the child is reaped, so the pid is still ours.
    if let Some(pid) = c
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}
