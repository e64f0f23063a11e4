//! What a run shows while it goes on, off the real-time path:
//!
//! - [`prometheus`]: `--prometheus ADDR` serves `/metrics` (Prometheus text format: frames,
//!   drops, errors per kind, per-stage latency histograms) and `/healthz`;
//! - [`foxglove`]: `--foxglove ADDR` serves the camera, the BEV map and grid and the results
//!   live over the Foxglove WebSocket protocol, at most 20 Hz; a slow viewer loses viewer
//!   messages (counted as `viewer_dropped`), never pipeline frames.
//!
//! - [`systemd`]: `READY=1` at the first inferred frame, `WATCHDOG=1` only while frames flow,
//!   `STATUS=` (for `Type=notify` services), when started by systemd.
//!
//! Both endpoints sit behind [`gate`] (a connection cap that evicts the slowest first, a deadline for the
//! request head, bounded request sizes, a write deadline), read requests only through
//! [`http`] and, for viewers, frames only through [`websocket`]. A bare `PORT` binds to
//! 127.0.0.1; any other address is the user's explicit choice (and logged as such).

pub mod foxglove;
pub mod gate;
pub mod http;
pub mod prometheus;
pub mod systemd;
pub mod websocket;

/// Parse `PORT` (on 127.0.0.1) or `HOST:PORT`, warning when it is not a loopback address.
pub fn parse_bind(what: &str, addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let a = addr
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--{what} {addr}: not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--{what} {addr}: resolves to no address"))?;
    if !a.ip().is_loopback() {
        log::warn!("--{what} {a}: listening beyond this machine (not loopback), as asked");
    }
    Ok(a)
}
