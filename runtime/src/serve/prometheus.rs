//! `/metrics` in the Prometheus text exposition format (0.0.4) and `/healthz`, behind the
//! endpoints' [`gate`] (connection cap, head deadline, bounded requests), off the frame path. Every scrape reads the run's [`LiveMetrics`]: counters are atomics,
//! histograms are copied under their lock, so a scrape never holds up a frame for longer than
//! one copy.
//!
//! `/healthz` is 200 `ok` while frames are flowing (one processed within the last
//! `stall_after`), else 503 with the reason; before the first frame it is 503 `starting`.

use super::gate::{self, Door, GateLimits};
use super::http::{self, RequestHead};
use crate::live::{Counters, LiveMetrics};
use crate::metrics::{Histogram, STAGES};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bucket bounds of the latency histograms, seconds.
const BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// The plain counters `/metrics` shows: (name, help, counter).
fn counter_table(c: &Counters) -> [(&'static str, &'static str, &AtomicU64); 11] {
    [
        (
            "frames_captured_total",
            "Frames the source delivered.",
            &c.captured,
        ),
        (
            "frames_processed_total",
            "Frames through inference.",
            &c.processed,
        ),
        (
            "frames_dropped_total",
            "Frames a live source lost to a full queue.",
            &c.dropped,
        ),
        (
            "sink_written_total",
            "Results every sink wrote.",
            &c.sink_written,
        ),
        (
            "sink_dropped_total",
            "Results the sinks were too slow to take.",
            &c.sink_dropped,
        ),
        (
            "viewer_dropped_total",
            "Live-view messages a slow viewer lost.",
            &c.viewer_dropped,
        ),
        (
            "camera_lost_total",
            "Times the live source (camera, RTSP stream) was lost.",
            &c.camera_lost,
        ),
        (
            "camera_back_total",
            "Times the live source came back after a loss.",
            &c.camera_back,
        ),
        (
            "calibration_reloads_total",
            "Calibration changes applied.",
            &c.calib_reloads,
        ),
        (
            "model_swaps_total",
            "Bundles swapped in from the store.",
            &c.model_swaps,
        ),
        (
            "model_rollbacks_total",
            "Bundles rolled back after a failed trial.",
            &c.model_rollbacks,
        ),
    ]
}

/// The metrics page for `live`.
pub fn render(live: &LiveMetrics) -> String {
    let c = &live.counters;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut s = String::with_capacity(8192);
    let counters = counter_table(c);
    for (name, help, v) in counters {
        let _ = writeln!(
            s,
            "# HELP bevrt_{name} {help}\n# TYPE bevrt_{name} counter\nbevrt_{name} {}",
            l(v)
        );
    }
    let _ = writeln!(
        s,
        "# HELP bevrt_errors_total Errors by kind; the pipeline went on after each.\n# TYPE bevrt_errors_total counter"
    );
    for (kind, v) in [
        ("source", l(&c.source_errors)),
        ("inference", l(&c.infer_errors)),
        ("sink", l(&c.sink_errors)),
        ("calibration", l(&c.calib_errors)),
        ("model_update", l(&c.model_refused)),
    ] {
        let _ = writeln!(s, "bevrt_errors_total{{kind=\"{kind}\"}} {v}");
    }
    let expiry = live
        .model_expiry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some((label, t)) = expiry {
        let expired = u8::from(bevrt_models::time::now_unix() > t);
        let _ = writeln!(
            s,
            "# HELP bevrt_model_expired 1 when the running bundle is past its manifest's expires (it keeps running).\n# TYPE bevrt_model_expired gauge\nbevrt_model_expired{{bundle=\"{label}\"}} {expired}\n# HELP bevrt_model_expiry_timestamp_seconds The running bundle's expires.\n# TYPE bevrt_model_expiry_timestamp_seconds gauge\nbevrt_model_expiry_timestamp_seconds{{bundle=\"{label}\"}} {t}"
        );
    }
    let _ = writeln!(
        s,
        "# HELP bevrt_stage_latency_seconds Per-frame latency of each pipeline stage.\n# TYPE bevrt_stage_latency_seconds histogram"
    );
    let hist = live.histograms();
    for (stage, name) in STAGES {
        write_histogram(&mut s, name, hist.get(stage));
    }
    s
}

fn write_histogram(s: &mut String, stage: &str, h: &Histogram) {
    for b in BUCKETS_S {
        let n = h.count_at_most((b * 1e9) as u64);
        let _ = writeln!(
            s,
            "bevrt_stage_latency_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        s,
        "bevrt_stage_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}\nbevrt_stage_latency_seconds_sum{{stage=\"{stage}\"}} {}\nbevrt_stage_latency_seconds_count{{stage=\"{stage}\"}} {}",
        h.count(),
        h.sum() as f64 / 1e9,
        h.count()
    );
}

/// Health from how recently the processed count moved.
struct Health {
    last_count: u64,
    last_change: Instant,
    stall_after: Duration,
}

impl Health {
    fn check(&mut self, live: &LiveMetrics) -> (u16, String) {
        let n = live.counters.processed.load(Ordering::Relaxed);
        if n != self.last_count {
            self.last_count = n;
            self.last_change = Instant::now();
        }
        if n == 0 {
            return (503, "starting: no frame processed yet\n".into());
        }
        let idle = self.last_change.elapsed();
        if idle > self.stall_after {
            return (
                503,
                format!(
                    "stalled: no frame processed for {:.1} s\n",
                    idle.as_secs_f64()
                ),
            );
        }
        (200, format!("ok: {n} frames processed\n"))
    }
}

/// `/metrics` and `/healthz` behind a gate.
struct MetricsDoor {
    live: Arc<LiveMetrics>,
    health: Mutex<Health>,
}

impl Door for MetricsDoor {
    fn serve(&self, head: RequestHead, _raw: &[u8], _rest: &[u8], mut conn: TcpStream) {
        if head.method != "GET" && head.method != "HEAD" {
            gate::reply(&mut conn, 405, "only GET\n");
            return;
        }
        let (code, body, ctype) = match head.path() {
            "/metrics" => (
                200,
                render(&self.live),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/healthz" => {
                let (c, b) = self
                    .health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check(&self.live);
                (c, b, "text/plain; charset=utf-8")
            }
            _ => (
                404,
                "not found: /metrics or /healthz\n".into(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut resp = http::response(code, ctype, body.as_bytes(), "");
        if head.method == "HEAD" {
            resp.truncate(resp.len() - body.len());
        }
        if let Err(e) = conn.write_all(&resp) {
            log::debug!("metrics client went away: {e}");
        }
        let _ = conn.shutdown(std::net::Shutdown::Write);
    }
}

/// Serve `/metrics` and `/healthz` on `addr` until the process ends; returns the bound address.
pub fn spawn(
    addr: std::net::SocketAddr,
    live: Arc<LiveMetrics>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = gate::listen("prometheus", addr)?;
    let bound = listener.local_addr()?;
    let door = MetricsDoor {
        live,
        health: Mutex::new(Health {
            last_count: 0,
            last_change: Instant::now(),
            stall_after: Duration::from_secs(5),
        }),
    };
    gate::open(listener, "metrics", GateLimits::default(), Arc::new(door))?;
    log::info!("metrics: http://{bound}/metrics and /healthz");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_running_bundle_shows_on_the_metrics_page() {
        let live = LiveMetrics::default();
        assert!(!render(&live).contains("bevrt_model_expired"));
        *live.model_expiry.lock().unwrap() = Some(("tiny 1.0.0".into(), 1_600_000_000));
        let page = render(&live);
        assert!(
            page.contains("bevrt_model_expired{bundle=\"tiny 1.0.0\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("bevrt_model_expiry_timestamp_seconds{bundle=\"tiny 1.0.0\"} 1600000000")
        );
        *live.model_expiry.lock().unwrap() = Some(("tiny 1.0.0".into(), i64::MAX / 2));
        assert!(render(&live).contains("bevrt_model_expired{bundle=\"tiny 1.0.0\"} 0"));
    }
}
