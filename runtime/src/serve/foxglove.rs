//! `--foxglove HOST:PORT`: the run, live, over the Foxglove WebSocket protocol (the `foxglove`
//! crate's server): open Foxglove, "Open connection", `ws://HOST:PORT`. Channels are the MCAP
//! sink's ([`crate::sink::mcap`]): `/camera/image_raw`, `/bevrt/bev/image`, `/bevrt/bev/grid`,
//! `/bevrt/result`, and `/tf_static` + `/camera/camera_info` repeated every second (a viewer that
//! connects late still gets them).
//!
//! Off the real-time path, in two steps. The [`LiveViewSink`] on the sink thread copies at most
//! 20 results a second into a fixed pool (no allocation) and hands each to the viewer thread
//! through a bounded queue; when the viewer thread is still busy with earlier ones, the result
//! is not shown and counted as `viewer_dropped`. The viewer thread encodes and logs to the
//! server, whose per-client queue (32 messages) drops the oldest when a client's socket is
//! slower still; those drops happen inside the crate and show in its log, not in the count.

use super::gate::{self, Door, GateLimits};
use super::http::RequestHead;
use super::websocket::ClientFrames;
use crate::live::Counters;
use crate::live::LiveMetrics;
use crate::postprocess::FrameResult;
use crate::queue::{BoundedQueue, Pop};
use crate::ros2::{bag, msgs};
use crate::sink::mcap::{encode_bev_image, encode_camera, encode_grid};
use crate::sink::{ResultJson, Sink};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Results in flight between the sink thread and the viewer thread.
const IN_FLIGHT: usize = 2;
/// Fastest rate the viewer is sent frames at.
const MAX_RATE_HZ: f64 = 20.0;
/// Viewers connected at once; more are answered 503.
pub const MAX_VIEWERS: usize = 8;

struct Channels {
    camera: Arc<foxglove::RawChannel>,
    bev_image: Arc<foxglove::RawChannel>,
    bev_grid: Arc<foxglove::RawChannel>,
    result: Arc<foxglove::RawChannel>,
    tf: Arc<foxglove::RawChannel>,
    info: Arc<foxglove::RawChannel>,
}

fn ros2_channel(
    ctx: &Arc<foxglove::Context>,
    topic: &str,
    t: &msgs::MsgType,
) -> anyhow::Result<Arc<foxglove::RawChannel>> {
    foxglove::ChannelBuilder::new(topic)
        .message_encoding("cdr")
        .schema(foxglove::Schema::new(
            t.name,
            "ros2msg",
            (t.definition)().into_bytes(),
        ))
        .context(ctx)
        .build_raw()
        .map_err(|e| anyhow::anyhow!("live view channel {topic}: {e}"))
}

impl Channels {
    fn new(ctx: &Arc<foxglove::Context>) -> anyhow::Result<Channels> {
        Ok(Channels {
            camera: ros2_channel(ctx, "/camera/image_raw", &msgs::IMAGE)?,
            bev_image: ros2_channel(ctx, "/bevrt/bev/image", &msgs::IMAGE)?,
            bev_grid: ros2_channel(ctx, "/bevrt/bev/grid", &msgs::OCCUPANCY_GRID)?,
            tf: ros2_channel(ctx, "/tf_static", &msgs::TF_MESSAGE)?,
            info: ros2_channel(ctx, "/camera/camera_info", &msgs::CAMERA_INFO)?,
            result: foxglove::ChannelBuilder::new("/bevrt/result")
                .message_encoding("json")
                .schema(foxglove::Schema::new(
                    "bevrt.Result",
                    "jsonschema",
                    br#"{"type":"object"}"#.as_slice(),
                ))
                .context(ctx)
                .build_raw()
                .map_err(|e| anyhow::anyhow!("live view channel /bevrt/result: {e}"))?,
        })
    }
}

/// The sink half: rate limit, copy into the pool, hand over.
pub struct LiveViewSink {
    free: Arc<BoundedQueue<Box<FrameResult>, IN_FLIGHT>>,
    ready: Arc<BoundedQueue<Box<FrameResult>, IN_FLIGHT>>,
    live: Arc<LiveMetrics>,
    /// When the next result may be sent: a schedule at 20 Hz, so a 20 fps camera with jitter
    /// shows every frame and a faster one averages 20 Hz.
    next_due: Option<Instant>,
    viewer: Option<std::thread::JoinHandle<()>>,
    server: Option<foxglove::WebSocketServerHandle>,
    pub port: u16,
}

/// What the viewer thread needs besides the queues.
struct Viewer {
    /// The channels' context: channels close when it is dropped.
    _context: Arc<foxglove::Context>,
    channels: Channels,
    json: ResultJson,
    grid: Option<bag::GridPlacement>,
    calibration: Option<bevrt_calib::Calibration>,
    buf: Vec<u8>,
    cells: Vec<u8>,
    text: Vec<u8>,
    last_static: Option<Instant>,
}

impl LiveViewSink {
    /// Start the server on `addr` and the viewer thread; `template` sizes the pooled results.
    pub fn start(
        addr: std::net::SocketAddr,
        manifest: &bevrt_models::Manifest,
        calibration: Option<bevrt_calib::Calibration>,
        template: &FrameResult,
        camera_bytes: usize,
        live: Arc<LiveMetrics>,
    ) -> anyhow::Result<LiveViewSink> {
        let ctx = foxglove::Context::new();
        let viewer = Viewer {
            channels: Channels::new(&ctx)?,
            _context: ctx.clone(),
            json: ResultJson::new(manifest.outputs[0].labels.clone(), manifest.classes.clone()),
            grid: manifest.grid.as_ref().map(bag::grid_placement),
            calibration,
            buf: Vec::new(),
            cells: Vec::new(),
            text: Vec::new(),
            last_static: None,
        };
        let listener = gate::listen("foxglove", addr)?;
        let port = listener.local_addr()?.port();
        let server = foxglove::WebSocketServer::new()
            .name("bevrt")
            .bind("127.0.0.1", 0)
            .message_backlog_size(32)
            .context(&ctx)
            .start_blocking()
            .map_err(|e| anyhow::anyhow!("--foxglove {addr}: cannot start: {e}"))?;
        let door = ViewerDoor {
            upstream: std::net::SocketAddr::from(([127, 0, 0, 1], server.port())),
            viewers: AtomicUsize::new(0),
        };
        gate::open(listener, "viewer", GateLimits::default(), Arc::new(door))?;
        let free = Arc::new(BoundedQueue::new());
        for _ in 0..IN_FLIGHT {
            let mut r = Box::new(template.clone());
            r.camera.reserve(camera_bytes);
            let _ = free.try_push(r);
        }
        let ready = Arc::new(BoundedQueue::new());
        let (f, q) = (free.clone(), ready.clone());
        let handle = std::thread::Builder::new()
            .name("bevrt-viewer".into())
            .spawn(move || viewer.run(&q, &f))?;
        log::info!(
            "live view: ws://{}:{port} (Foxglove: Open connection → Foxglove WebSocket)",
            addr.ip()
        );
        Ok(LiveViewSink {
            free,
            ready,
            live,
            next_due: None,
            viewer: Some(handle),
            server: Some(server),
            port,
        })
    }
}

/// The gate's door for viewers: a checked WebSocket upgrade, then a checked relay to the
/// Foxglove server on loopback.
struct ViewerDoor {
    upstream: std::net::SocketAddr,
    viewers: AtomicUsize,
}

/// Releases a viewer slot.
struct ViewerSlot<'a>(&'a AtomicUsize);

impl Drop for ViewerSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Door for ViewerDoor {
    fn serve(&self, head: RequestHead, raw: &[u8], rest: &[u8], mut conn: TcpStream) {
        let upgrade = head.method == "GET"
            && head.header_has_token("upgrade", "websocket")
            && head.header_has_token("connection", "upgrade")
            && head.header("sec-websocket-key").is_some();
        if !upgrade {
            gate::reply(
                &mut conn,
                400,
                "a Foxglove WebSocket endpoint: connect with Foxglove (Open connection)\n",
            );
            return;
        }
        if self.viewers.fetch_add(1, Ordering::AcqRel) >= MAX_VIEWERS {
            self.viewers.fetch_sub(1, Ordering::AcqRel);
            gate::reply(&mut conn, 503, "busy: viewer limit reached\n");
            return;
        }
        let _slot = ViewerSlot(&self.viewers);
        let upstream = match TcpStream::connect_timeout(&self.upstream, Duration::from_secs(1)) {
            Ok(u) => u,
            Err(e) => {
                log::warn!("live view: cannot reach the viewer server: {e}");
                gate::reply(&mut conn, 503, "live view server unavailable\n");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        if let Err(e) = relay(conn, upstream, raw, rest) {
            log::info!("live view: viewer disconnected: {e}");
        }
    }
}

/// Relay a viewer's connection: its frames checked on the way in, the server's bytes copied
/// out (with the gate's write timeout on the viewer). Ends both when either side ends.
fn relay(conn: TcpStream, mut upstream: TcpStream, raw: &[u8], rest: &[u8]) -> anyhow::Result<()> {
    upstream.write_all(raw)?;
    let mut frames = ClientFrames::default();
    frames.feed(rest).map_err(|e| anyhow::anyhow!("{e}"))?;
    upstream.write_all(rest)?;
    let (mut down_from, mut down_to) = (upstream.try_clone()?, conn.try_clone()?);
    let closer = (conn.try_clone()?, upstream.try_clone()?);
    let downstream = std::thread::Builder::new()
        .name("bevrt-viewer-out".into())
        .stack_size(256 << 10)
        .spawn(move || {
            let _ = std::io::copy(&mut down_from, &mut down_to);
            let _ = down_to.shutdown(Shutdown::Both);
            let _ = down_from.shutdown(Shutdown::Both);
        })?;
    let mut up_from = conn;
    let mut buf = [0u8; 4096];
    let r = loop {
        let n = match up_from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e.into()),
        };
        if let Err(e) = frames.feed(&buf[..n]) {
            break Err(anyhow::anyhow!("refused a frame: {e}"));
        }
        if let Err(e) = upstream.write_all(&buf[..n]) {
            break Err(e.into());
        }
    };
    let _ = closer.0.shutdown(Shutdown::Both);
    let _ = closer.1.shutdown(Shutdown::Both);
    let _ = downstream.join();
    r
}

impl Viewer {
    fn run(
        mut self,
        ready: &BoundedQueue<Box<FrameResult>, IN_FLIGHT>,
        free: &BoundedQueue<Box<FrameResult>, IN_FLIGHT>,
    ) {
        loop {
            let r = match ready.pop_timeout(Duration::from_millis(200)) {
                Pop::Item(r) => r,
                Pop::Timeout => continue,
                Pop::Closed => break,
            };
            self.send(&r);
            let _ = free.try_push(r);
        }
    }

    fn send(&mut self, r: &FrameResult) {
        let meta = foxglove::PartialMetadata::with_log_time(r.timestamp_ns);
        let ch = &self.channels;
        if self
            .last_static
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_static = Some(Instant::now());
            if let Some(c) = &self.calibration {
                bag::encode_camera_tf(c, r.timestamp_ns, &mut self.buf);
                ch.tf.log_with_meta(&self.buf, meta);
                bag::camera_info(&c.camera, r.timestamp_ns).encode(&mut self.buf);
                ch.info.log_with_meta(&self.buf, meta);
            }
        }
        if encode_camera(r, &mut self.buf) {
            ch.camera.log_with_meta(&self.buf, meta);
        }
        if r.map_width > 0 {
            encode_bev_image(r, &mut self.buf);
            ch.bev_image.log_with_meta(&self.buf, meta);
            if let Some(p) = &self.grid {
                encode_grid(r, p, &mut self.cells, &mut self.buf);
                ch.bev_grid.log_with_meta(&self.buf, meta);
            }
        }
        self.text.clear();
        if self.json.write(&mut self.text, r).is_ok() {
            ch.result.log_with_meta(&self.text, meta);
        }
    }
}

impl Sink for LiveViewSink {
    fn name(&self) -> &'static str {
        "foxglove"
    }

    fn write(&mut self, r: &FrameResult) -> anyhow::Result<()> {
        let period = Duration::from_secs_f64(1.0 / MAX_RATE_HZ);
        let now = Instant::now();
        if self.next_due.is_some_and(|due| now + period / 5 < due) {
            return Ok(());
        }
        self.next_due = Some(self.next_due.map_or(now, |d| d.max(now - period)) + period);
        match self.free.try_pop() {
            Some(mut slot) => {
                slot.copy_from(r);
                if let Err(back) = self.ready.try_push(slot) {
                    let _ = self.free.try_push(back);
                    Counters::bump(&self.live.counters.viewer_dropped);
                }
            }
            None => {
                Counters::bump(&self.live.counters.viewer_dropped);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.ready.close();
        if let Some(h) = self.viewer.take() {
            let _ = h.join();
        }
        if let Some(s) = self.server.take() {
            // Clients get a clean close instead of a reset.
            s.stop().wait_blocking();
        }
        Ok(())
    }
}
