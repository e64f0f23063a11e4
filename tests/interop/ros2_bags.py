#!/usr/bin/env python3
"""MCAP / ROS 2 interop with the reference Python libraries (`mcap`, `mcap-ros2-support`).

  ros2_bags.py write OUT.mcap   a bag written by mcap_ros2's Writer (zstd chunks): raw Image
                                topics in rgb8, bgr8, mono8, yuv422_yuy2 and nv12, a CompressedImage
                                (PNG) topic, CameraInfo and /tf_static (base_link -> camera).
  ros2_bags.py moving DIR OUT.mcap POSES
                                DIR's JPEG frames (*.jpg, name order) as CompressedImage on
                                /camera/image_raw/compressed (frame camera_optical), /tf_static
                                base_link -> camera_mount, and before every frame a /tf
                                camera_mount -> camera_optical: identity, then from frame
                                `change_at` on the `moved` transform. POSES is JSON:
                                {"mount": {"t": [x,y,z], "q": [x,y,z,w]}, "change_at": N,
                                 "moved": {"t": [...], "q": [...]}}.
  ros2_bags.py check BAG        read every message back with mcap's reader and decode it with
                                mcap_ros2's decoder (ros2msg/cdr) or json (json channels);
                                prints a JSON summary; exit 1 on any decode error.

Frames are a smooth synthetic pattern; the same pixels in every encoding, so bevrt's results
on them can be compared across encodings.
"""
import json
import math
import struct
import sys
import zlib

W, H, N = 96, 64, 6

HEADER = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n"
TIME = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
SEP = "=" * 80 + "\n"
IMAGE = ("std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
         "uint8 is_bigendian\nuint32 step\nuint8[] data\n" + SEP + HEADER + SEP + TIME)
COMPRESSED = "std_msgs/Header header\nstring format\nuint8[] data\n" + SEP + HEADER + SEP + TIME
CAMERA_INFO = ("std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n"
               "float64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\n"
               "uint32 binning_y\nsensor_msgs/RegionOfInterest roi\n" + SEP + HEADER + SEP + TIME
               + SEP + "MSG: sensor_msgs/RegionOfInterest\nuint32 x_offset\nuint32 y_offset\n"
               "uint32 height\nuint32 width\nbool do_rectify\n")
TF = ("geometry_msgs/TransformStamped[] transforms\n" + SEP
      + "MSG: geometry_msgs/TransformStamped\nstd_msgs/Header header\nstring child_frame_id\n"
      "geometry_msgs/Transform transform\n" + SEP + HEADER + SEP + TIME + SEP
      + "MSG: geometry_msgs/Transform\ngeometry_msgs/Vector3 translation\n"
      "geometry_msgs/Quaternion rotation\n" + SEP
      + "MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n" + SEP
      + "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w\n")


def rgb_frame(n):
    out = bytearray()
    for y in range(H):
        for x in range(W):
            out += bytes(((x * 2 + n * 7) % 256, (y * 3) % 256, int(128 + 60 * math.sin((x + y + n) / 9))))
    return bytes(out)


def png(rgb):
    raw = b"".join(b"\x00" + rgb[y * W * 3:(y + 1) * W * 3] for y in range(H))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def encodings(rgb):
    px = [rgb[i:i + 3] for i in range(0, len(rgb), 3)]
    bgr = b"".join(p[::-1] for p in px)
    luma = [int(0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) for p in px]
    mono = bytes(luma)
    yuyv = bytearray()
    for i in range(0, len(px), 2):
        a, b = px[i], px[i + 1]
        def yuv(p):
            r, g, b_ = p
            return (16 + (65.738 * r + 129.057 * g + 25.064 * b_) / 256,
                    128 + (-37.945 * r - 74.494 * g + 112.439 * b_) / 256,
                    128 + (112.439 * r - 94.154 * g - 18.285 * b_) / 256)
        ya, ua, va = yuv(a)
        yb, ub, vb = yuv(b)
        clamp = lambda v: max(0, min(255, int(round(v))))
        yuyv += bytes((clamp(ya), clamp((ua + ub) / 2), clamp(yb), clamp((va + vb) / 2)))
    # NV12: the Y plane, then U and V interleaved at half resolution (2x2 averages).
    def yuv_of(i):
        r, g, b_ = px[i]
        return ((65.738 * r + 129.057 * g + 25.064 * b_) / 256 + 16,
                (-37.945 * r - 74.494 * g + 112.439 * b_) / 256 + 128,
                (112.439 * r - 94.154 * g - 18.285 * b_) / 256 + 128)
    clamp8 = lambda v: max(0, min(255, int(round(v))))
    y_plane = bytes(clamp8(yuv_of(i)[0]) for i in range(len(px)))
    uv = bytearray()
    for y in range(0, H, 2):
        for x in range(0, W, 2):
            q = [yuv_of((y + dy) * W + x + dx) for dy in (0, 1) for dx in (0, 1)]
            uv += bytes((clamp8(sum(v[1] for v in q) / 4), clamp8(sum(v[2] for v in q) / 4)))
    return {"rgb8": (rgb, 3), "bgr8": (bgr, 3), "mono8": (mono, 1),
            "yuv422_yuy2": (bytes(yuyv), 2), "nv12": (y_plane + bytes(uv), 1)}


def header(n, frame="camera_optical"):
    t = 1_700_000_000_000_000_000 + n * 100_000_000
    return {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}, "frame_id": frame}, t


def write(path):
    from mcap_ros2.writer import Writer
    with open(path, "wb") as f:
        w = Writer(f)
        s_img = w.register_msgdef("sensor_msgs/msg/Image", IMAGE)
        s_cmp = w.register_msgdef("sensor_msgs/msg/CompressedImage", COMPRESSED)
        s_info = w.register_msgdef("sensor_msgs/msg/CameraInfo", CAMERA_INFO)
        s_tf = w.register_msgdef("tf2_msgs/msg/TFMessage", TF)
        h0, t0 = header(0, "base_link")
        # camera 1.5 m up, 1 m forward, looking forward (optical: z fwd, x right, y down)
        w.write_message("/tf_static", s_tf, {"transforms": [{
            "header": h0, "child_frame_id": "camera_optical",
            "transform": {"translation": {"x": 1.0, "y": 0.0, "z": 1.5},
                          "rotation": {"x": -0.5, "y": 0.5, "z": -0.5, "w": 0.5}}}]}, t0, t0)
        for n in range(N):
            rgb = rgb_frame(n)
            for enc, (data, bpp) in encodings(rgb).items():
                h, t = header(n)
                w.write_message(f"/cam_{enc}/image_raw", s_img, {
                    "header": h, "height": H, "width": W, "encoding": enc, "is_bigendian": 0,
                    "step": W * bpp, "data": data}, t, t)
            h, t = header(n)
            w.write_message("/cam_png/image_raw/compressed", s_cmp,
                            {"header": h, "format": "png", "data": png(rgb)}, t, t)
            w.write_message("/cam_rgb8/camera_info", s_info, {
                "header": h, "height": H, "width": W, "distortion_model": "plumb_bob",
                "d": [0.0, 0.0, 0.0, 0.0, 0.0], "k": [80.0, 0, 48.0, 0, 80.0, 32.0, 0, 0, 1],
                "r": [1.0, 0, 0, 0, 1, 0, 0, 0, 1], "p": [80.0, 0, 48.0, 0, 0, 80.0, 32.0, 0, 0, 0, 1, 0],
                "binning_x": 0, "binning_y": 0,
                "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False}},
                t, t)
        w.finish()


def moving(frames_dir, path, poses):
    import os
    from mcap_ros2.writer import Writer
    p = json.loads(poses)
    def tf(parent, child, pose, h):
        (x, y, z), (qx, qy, qz, qw) = pose["t"], pose["q"]
        return {"transforms": [{
            "header": {**h, "frame_id": parent}, "child_frame_id": child,
            "transform": {"translation": {"x": x, "y": y, "z": z},
                          "rotation": {"x": qx, "y": qy, "z": qz, "w": qw}}}]}
    identity = {"t": [0.0, 0.0, 0.0], "q": [0.0, 0.0, 0.0, 1.0]}
    names = sorted(n for n in os.listdir(frames_dir) if n.endswith(".jpg"))
    with open(path, "wb") as f:
        w = Writer(f)
        s_cmp = w.register_msgdef("sensor_msgs/msg/CompressedImage", COMPRESSED)
        s_tf = w.register_msgdef("tf2_msgs/msg/TFMessage", TF)
        h0, t0 = header(0, "base_link")
        w.write_message("/tf_static", s_tf, tf("base_link", "camera_mount", p["mount"], h0), t0, t0)
        for n, name in enumerate(names):
            h, t = header(n)
            pose = p["moved"] if n >= p["change_at"] else identity
            w.write_message("/tf", s_tf, tf("camera_mount", "camera_optical", pose, h), t - 1000, t - 1000)
            with open(os.path.join(frames_dir, name), "rb") as jpg:
                w.write_message("/camera/image_raw/compressed", s_cmp,
                                {"header": h, "format": "jpeg", "data": jpg.read()}, t, t)
        w.finish()


def check(path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    counts, errors, types = {}, [], {}
    factory = DecoderFactory()
    decoders = {}
    with open(path, "rb") as f:
        reader = make_reader(f)
        for schema, channel, message in reader.iter_messages():
            try:
                if channel.message_encoding == "json":
                    json.loads(message.data)
                else:
                    key = schema.id
                    if key not in decoders:
                        decoders[key] = factory.decoder_for(channel.message_encoding, schema)
                    msg = decoders[key](message.data)
                    if schema.name.endswith("Image") and hasattr(msg, "data") and hasattr(msg, "step"):
                        # NV12 carries its half-height UV plane after the Y rows.
                        rows = msg.height * 3 // 2 if msg.encoding == "nv12" else msg.height
                        if len(msg.data) != msg.step * rows:
                            raise ValueError(f"{len(msg.data)} bytes, step*rows {msg.step * rows}")
                counts[channel.topic] = counts.get(channel.topic, 0) + 1
                types[channel.topic] = schema.name if schema else ""
            except Exception as e:  # every failure is reported, none stops the count
                errors.append(f"{channel.topic}: {e!r}")
    print(json.dumps({"messages": counts, "types": types, "decode_errors": len(errors),
                      "first_errors": errors[:5]}))
    return 1 if errors else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["moving"] and len(sys.argv) == 5:
        moving(*sys.argv[2:])
        sys.exit(0)
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        sys.exit(check(sys.argv[2]))
