//! One job per output folder: the coordinator holds an exclusive `flock` on
//! `OUT/.shardprep/lock` for the job's life. The kernel drops the lock when
//! its holder dies, so a stale lock from a killed job is taken over at once;
//! the file's content (host, pid, start time) names the holder to a second
//! job that is refused.

use rustix::fs::FlockOperation;
use rustix::io::Errno;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::CoordinatorError;

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
}

impl OutputLock {
    /// Takes the lock on the output whose state folder is `state_dir`, or
    /// fails at once naming the job that holds it.
    pub fn acquire(state_dir: &Path) -> Result<OutputLock, CoordinatorError> {
        let path = state_dir.join("lock");
        let io_err = |what: &str, source| CoordinatorError::Output {
            path: path.display().to_string(),
            what: what.into(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err("open", e))?;
        if let Err(errno) = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if errno != Errno::WOULDBLOCK {
                return Err(io_err("lock", errno.into()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(CoordinatorError::OutputBusy {
                path: path.display().to_string(),
                holder: holder.trim().to_string(),
            });
        }
        let holder = serde_json::json!({
            "host": hostname(),
            "pid": std::process::id(),
            "started": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        });
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{holder}\n").as_bytes()))
            .map_err(|e| io_err("write", e))?;
        Ok(OutputLock { _file: file })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutputLock::acquire(dir.path()).unwrap();
        let err = OutputLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("\"pid\":{}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("another job"), "{err}");
        drop(first);
        OutputLock::acquire(dir.path()).unwrap();
    }
}
