//! The door both endpoints share: accept, read one bounded request head within a deadline,
//! then hand the connection to the endpoint ([`Door`]). It is what keeps a slow or hostile
//! client from starving the others, or the pipeline:
//!
//! - **a cap on connections** ([`GateLimits::max_connections`]); when it is reached, the
//!   oldest connection whose request head has not arrived yet is closed to make room (a
//!   slowloris client cannot hold the door shut by being slow), and only when every connection
//!   is past its head (e.g. all are live viewers) is the new one refused with 503;
//! - **a head deadline**: the whole request head must arrive within
//!   [`GateLimits::head_timeout`], however slowly it trickles in, else 408 and close;
//! - **bounded reads**: the head is parsed by [`super::http`] (8 KiB, 32 headers) as it arrives,
//!   and garbage is refused at its first byte;
//! - **a write deadline** on every response and viewer stream ([`GateLimits::write_timeout`]): a
//!   client that stops reading is disconnected, never waited for.
//!
//! One small-stack thread per open connection (at most the cap), none on the frame path: the
//! pipeline only ever touches atomics and a bounded queue, so nothing here can slow a frame.

use super::http::{self, RequestHead};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one endpoint's gate allows.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            max_connections: 64,
            head_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What a gate turned away, for the log and the tests.
#[derive(Debug, Default)]
pub struct GateCounters {
    pub accepted: AtomicU64,
    /// Closed to make room while their head was still incomplete.
    pub evicted: AtomicU64,
    /// Refused with 503: every connection was past its head.
    pub refused: AtomicU64,
    pub head_timeouts: AtomicU64,
    /// Refused heads (and, for viewers, refused WebSocket frames).
    pub bad_requests: AtomicU64,
}

/// An endpoint behind a gate.
pub trait Door: Send + Sync + 'static {
    /// Serve one connection whose request head arrived (`raw_head` are its bytes, `rest` what
    /// the client sent after it). The stream has the gate's write timeout set.
    fn serve(&self, head: RequestHead, raw_head: &[u8], rest: &[u8], conn: TcpStream);
}

/// A connection still waiting for its head: the gate may close it to make room.
struct Waiting {
    id: u64,
    stream: TcpStream,
}

struct Shared {
    name: &'static str,
    limits: GateLimits,
    counters: Arc<GateCounters>,
    door: Arc<dyn Door>,
    waiting: Mutex<VecDeque<Waiting>>,
    open: AtomicUsize,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_waiting(&self, id: u64) {
        self.waiting().retain(|w| w.id != id);
    }
}

/// Ends a connection's accounting however its thread leaves.
struct OpenGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.shared.stop_waiting(self.id);
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serve `door` behind a gate on `listener` until the process ends.
pub fn open(
    listener: TcpListener,
    name: &'static str,
    limits: GateLimits,
    door: Arc<dyn Door>,
) -> std::io::Result<Arc<GateCounters>> {
    let counters = Arc::new(GateCounters::default());
    let shared = Arc::new(Shared {
        name,
        limits,
        counters: counters.clone(),
        door,
        waiting: Mutex::new(VecDeque::new()),
        open: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name(format!("bevrt-{name}-gate"))
        .spawn(move || accept_loop(&listener, &shared))?;
    Ok(counters)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("{}: accept failed: {e}", shared.name);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if !make_room(shared, &stream) {
            continue;
        }
        next_id += 1;
        let id = next_id;
        let Ok(watch) = stream.try_clone() else {
            continue;
        };
        shared.open.fetch_add(1, Ordering::AcqRel);
        shared.waiting().push_back(Waiting { id, stream: watch });
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("bevrt-{}-conn", shared.name))
            .stack_size(256 << 10)
            .spawn(move || {
                let _guard = OpenGuard { shared: &s, id };
                connection(&s, id, stream);
            });
        if let Err(e) = spawned {
            log::warn!("{}: cannot start a connection thread: {e}", shared.name);
            shared.stop_waiting(id);
            shared.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Under the cap, or made so by closing the oldest connection still waiting for its head;
/// `false` when the new connection was refused.
fn make_room(shared: &Shared, stream: &TcpStream) -> bool {
    if shared.open.load(Ordering::Acquire) < shared.limits.max_connections {
        return true;
    }
    if let Some(oldest) = shared.waiting().pop_front() {
        let _ = oldest.stream.shutdown(Shutdown::Both);
        shared.counters.evicted.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(50)));
    let _ = (&*stream).write_all(&http::response(
        503,
        "text/plain",
        b"busy: connection limit reached\n",
        "Retry-After: 1\r\n",
    ));
    let _ = stream.shutdown(Shutdown::Both);
    false
}

/// Read the head within the deadline, then hand over to the door.
fn connection(shared: &Shared, id: u64, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(shared.limits.write_timeout));
    let deadline = Instant::now() + shared.limits.head_timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            shared
                .counters
                .head_timeouts
                .fetch_add(1, Ordering::Relaxed);
            reply(&mut stream, 408, "request head not received in time\n");
            return;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return, // the client left, or the gate closed it to make room
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        match http::parse_head(&buf) {
            Ok(None) => {}
            Ok(Some(h)) => break h,
            Err(e) => {
                shared.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                log::debug!("{}: {e}", shared.name);
                reply(&mut stream, e.status(), &format!("{e}\n"));
                return;
            }
        }
    };
    shared.stop_waiting(id);
    let _ = stream.set_read_timeout(None);
    let len = head.len;
    shared.door.serve(head, &buf[..len], &buf[len..], stream);
}

/// A short plain-text response, then close.
pub fn reply(stream: &mut TcpStream, status: u16, text: &str) {
    let _ = stream.write_all(&http::response(
        status,
        "text/plain; charset=utf-8",
        text.as_bytes(),
        "",
    ));
    let _ = stream.shutdown(Shutdown::Write);
}

/// A listener on `addr` for a gate.
pub fn listen(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("--{what} {addr}: cannot listen: {e}"))
}
