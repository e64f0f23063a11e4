//! Durable single-file writes and the crash points of the power-loss test: shared by the
//! store ([`crate::store`]) and the signature writer ([`crate::signature`]).
//!
//! With `BEVRT_FAULT_KILL_AT=N` the process kills itself (SIGKILL) at the N-th
//! [`crash_point`]; `BEVRT_FAULT_COUNT_FILE=F` receives how many points a deploy passed.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

// ------------------------------------------------------------------------- crash points

static CRASH_POINTS: AtomicU64 = AtomicU64::new(0);

/// A place where losing power must be survivable. Counts, and under
/// `BEVRT_FAULT_KILL_AT=N` kills the process at the N-th one.
pub fn crash_point(_what: &str) {
    let n = CRASH_POINTS.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(at) = std::env::var("BEVRT_FAULT_KILL_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        && n == at
    {
        // SAFETY: kill(2) on our own pid; nothing after it runs.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Writes how many crash points passed to `BEVRT_FAULT_COUNT_FILE`, when set.
pub(crate) fn report_crash_points() {
    if let Ok(p) = std::env::var("BEVRT_FAULT_COUNT_FILE") {
        let _ = fs::write(p, CRASH_POINTS.load(Ordering::SeqCst).to_string());
    }
}

// ------------------------------------------------------------------------- durable files

/// fsync a directory, so the names created or renamed in it are on disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes` so a reader (or a reboot) sees the old or the new content,
/// never a part: temporary sibling, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        crash_point("temporary written");
        f.sync_all()?;
    }
    crash_point("temporary synced");
    fs::rename(&tmp, path)?;
    crash_point("renamed");
    sync_dir(dir)
}
