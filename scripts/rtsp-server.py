#!/usr/bin/python3
"""Local RTSP test server for bevrt's GStreamer source tests.

bevrt's GStreamer source tests read ``rtsp://`` streams -- H.264 and MJPEG --
and check what happens when the server is killed and restarted mid-stream.
This script is that server. It uses GStreamer's own RTSP server library
(GstRtspServer, via PyGObject), binds 127.0.0.1 only, and serves two mounts
from a live ``videotestsrc``:

  /h264   x264enc (zerolatency, ultrafast, a keyframe every second) -> rtph264pay
  /mjpeg  jpegenc -> rtpjpegpay

A client joining or rejoining /h264 gets a keyframe (with SPS/PPS) within
about a second.

Run it with Debian's python3, which has the ``gi`` bindings (python3-gi,
gir1.2-gst-rtsp-server-1.0):

  /usr/bin/python3 scripts/rtsp-server.py --port 18554 \\
      [--width 320 --height 240 --fps 30] [--max-seconds 600]

It prints exactly one line ``READY rtsp://127.0.0.1:PORT`` to stdout once it
is listening, so a test can wait for that line, then read e.g.

  gst-launch-1.0 rtspsrc location=rtsp://127.0.0.1:18554/h264 ! \\
      rtph264depay ! avdec_h264 ! fakesink

It exits 0 on SIGTERM/SIGINT, and by itself after --max-seconds (test
servers must be bounded). If the port cannot be bound it writes one line to
stderr and exits 2; bad arguments or a missing GStreamer setup also exit 2.
"""

import argparse
import signal
import sys

HOST = "127.0.0.1"


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Local RTSP test server (H.264 at /h264, MJPEG at /mjpeg)."
    )
    p.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument(
        "--max-seconds",
        type=int,
        default=600,
        help="exit by itself after this many seconds (default 600)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error("--port must be in 1..65535")
    for name in ("width", "height", "fps", "max_seconds"):
        if getattr(args, name) <= 0:
            p.error("--%s must be positive" % name.replace("_", "-"))
    return args


def source(args):
    # I420 explicitly: left to negotiate, jpegenc gets a 4:4:4 format and
    # emits JPEGs that rtpjpegpay rejects ("Invalid component"), so /mjpeg
    # never answers DESCRIBE. RTP/JPEG (RFC 2435) carries only 4:2:0/4:2:2.
    return (
        "videotestsrc is-live=true pattern=ball ! "
        "video/x-raw,format=I420,width=%d,height=%d,framerate=%d/1"
        % (args.width, args.height, args.fps)
    )


def launch_h264(args):
    return (
        "( %s ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=%d "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )" % (source(args), args.fps)
    )


def launch_mjpeg(args):
    return "( %s ! jpegenc ! rtpjpegpay name=pay0 pt=26 )" % source(args)


def main(argv):
    args = parse_args(argv)

    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        sys.stderr.write(
            "rtsp-server: GStreamer RTSP server bindings unavailable (%s); "
            "run with /usr/bin/python3\n" % e
        )
        return 2

    Gst.init(None)

    server = GstRtspServer.RTSPServer()
    server.set_address(HOST)
    server.set_service(str(args.port))

    mounts = server.get_mount_points()
    for path, launch in (("/h264", launch_h264(args)), ("/mjpeg", launch_mjpeg(args))):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)
        mounts.add_factory(path, factory)

    # attach() creates, binds and listens on the socket; 0 means it failed.
    if server.attach(None) == 0:
        sys.stderr.write(
            "rtsp-server: cannot listen on %s:%d (port in use?)\n" % (HOST, args.port)
        )
        return 2

    loop = GLib.MainLoop()

    def on_signal(*_):
        loop.quit()
        return GLib.SOURCE_REMOVE

    def on_timeout():
        sys.stderr.write(
            "rtsp-server: --max-seconds %d reached, exiting\n" % args.max_seconds
        )
        loop.quit()
        return GLib.SOURCE_REMOVE

    def on_ready():
        sys.stdout.write("READY rtsp://%s:%d\n" % (HOST, args.port))
        sys.stdout.flush()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_signal)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_signal)
    GLib.timeout_add_seconds(args.max_seconds, on_timeout)
    GLib.idle_add(on_ready)

    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
