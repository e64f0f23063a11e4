//! systemd's notify protocol for `Type=notify` services with `WatchdogSec=` (the `sd-notify`
//! crate), driven by the run's live counters like the other observers, off the frame path:
//!
//! - `READY=1` once the first frame has been inferred (not when the process starts: a service
//!   that loaded but sees no camera is not ready);
//! - `WATCHDOG=1` every half watchdog period, **only while frames flow** (the processed count
//!   moved since the last tick): a stalled camera or a hung inference stops the petting and
//!   systemd restarts the service;
//! - `STATUS=` with frames, rate and errors every tick, or what is wrong.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) nothing is started.

use crate::live::LiveMetrics;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Start the notifier when systemd asked for notifications; returns whether it did.
pub fn spawn(live: Arc<LiveMetrics>) -> std::io::Result<bool> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(false);
    }
    let mut usec = 0u64;
    let watchdog =
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
    let tick = watchdog.map_or(Duration::from_secs(1), |w| {
        (w / 2).min(Duration::from_secs(1))
    });
    std::thread::Builder::new()
        .name("bevrt-systemd".into())
        .spawn(move || notifier(&live, watchdog, tick))?;
    log::info!(
        "systemd: notify socket set{}",
        watchdog
            .map(|w| format!(
                ", watchdog {:.1} s (petted only while frames flow)",
                w.as_secs_f64()
            ))
            .unwrap_or_default()
    );
    Ok(true)
}

fn notifier(live: &LiveMetrics, watchdog: Option<Duration>, tick: Duration) {
    let c = &live.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (mut ready, mut last, mut last_at, mut last_change) =
        (false, 0u64, Instant::now(), Instant::now());
    loop {
        std::thread::sleep(tick);
        let n = load(&c.processed);
        let now = Instant::now();
        let flowing = n != last;
        let fps = (n - last) as f64 / now.duration_since(last_at).as_secs_f64();
        let errors = load(&c.source_errors) + load(&c.infer_errors) + load(&c.sink_errors);
        let mut states = Vec::with_capacity(3);
        if n > 0 && !ready {
            ready = true;
            states.push(NotifyState::Ready);
        }
        if flowing {
            last_change = now;
            if watchdog.is_some() {
                states.push(NotifyState::Watchdog);
            }
        }
        let status = if n == 0 {
            "starting: no frame inferred yet".to_string()
        } else if !flowing {
            format!(
                "stalled: no frame for {:.1} s ({n} frames, {errors} errors)",
                now.duration_since(last_change).as_secs_f64()
            )
        } else {
            format!(
                "{n} frames, {fps:.1} fps, {} dropped, {errors} errors",
                load(&c.dropped)
            )
        };
        states.push(NotifyState::Status(&status));
        if let Err(e) = sd_notify::notify(false, &states) {
            log::warn!("systemd: cannot notify: {e}");
        }
        (last, last_at) = (n, now);
    }
}
