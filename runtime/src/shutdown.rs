//! A stop asked for from outside the process: SIGTERM (systemd stopping the service) or SIGINT
//! (Ctrl-C). The first one ends the run between frames like `--duration` does, so the sinks are
//! flushed and the final report and `metrics.jsonl` are written; a second one ends the process
//! at once (the default action, restored by the first).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked for the stop, 0 while none has.
static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// Catch SIGTERM and SIGINT from now on (`bevrt run` calls this before it starts the pipeline).
pub fn catch_stop_signals() {
    #[cfg(unix)]
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic and resets its own disposition, both
        // async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    REQUESTED.store(sig, Ordering::SeqCst);
    // SAFETY: as above; the next such signal takes the default action (ends the process).
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Why the run should end, once a stop signal has arrived: "signal SIGTERM" or "signal SIGINT".
pub fn requested() -> Option<&'static str> {
    match REQUESTED.load(Ordering::Relaxed) {
        0 => None,
        #[cfg(unix)]
        libc::SIGINT => Some("signal SIGINT"),
        _ => Some("signal SIGTERM"),
    }
}
