#!/usr/bin/env python3
"""Real clients against a running `bevrt run --prometheus ... --foxglove ...`.

  live_clients.py HTTP_HOSTPORT WS_HOSTPORT SECONDS [--stall]

- `/metrics` is parsed with prometheus_client's own parser (text format 0.0.4); the families
  bevrt must expose are checked, and the processed-frame counter must grow between scrapes.
- `/healthz` must answer 200 once frames flow.
- A Foxglove WebSocket client (subprotocol foxglove.sdk.v1, `websockets` package)
  subscribes to every advertised channel and counts binary messageData frames per channel
  for SECONDS. With --stall it subscribes and then stops reading (a slow viewer).
Prints one JSON object; exit 1 when a check fails.
"""
import asyncio
import json
import struct
import sys
import time
import urllib.request


def scrape(http):
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    return fams


def counter(fams, name):
    f = fams.get(name)
    return sum(s.value for s in f.samples if s.name.endswith("_total")) if f else None


async def viewer(ws_addr, seconds, stall):
    import websockets
    counts, advertised = {}, {}
    async with websockets.connect(f"ws://{ws_addr}", subprotocols=["foxglove.sdk.v1"], close_timeout=0.5,
                                  max_size=None) as ws:
        t_end = time.time() + seconds
        subscribed = False
        while time.time() < t_end:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.05, t_end - time.time()))
            except asyncio.TimeoutError:
                break
            if isinstance(msg, str):
                m = json.loads(msg)
                if m.get("op") == "advertise":
                    for ch in m["channels"]:
                        advertised[ch["id"]] = ch["topic"]
                    subs = [{"id": i, "channelId": cid} for i, cid in enumerate(advertised)]
                    await ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
                    subscribed = True
                    if stall:
                        await asyncio.sleep(seconds)  # never read again: a stalled viewer
                        break
                continue
            if msg[0] == 1 and subscribed:  # messageData: op, u32 subscription, u64 time, payload
                sub, = struct.unpack_from("<I", msg, 1)
                topic = advertised.get(list(advertised)[sub], "?") if sub < len(advertised) else "?"
                counts[topic] = counts.get(topic, 0) + 1
    return counts, sorted(advertised.values())


def main():
    http, ws_addr, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    stall = "--stall" in sys.argv
    failures = []
    # wait for the endpoints to come up
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{http}/healthz", timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    f1 = scrape(http)
    for name in ["bevrt_frames_processed", "bevrt_frames_dropped", "bevrt_errors",
                 "bevrt_stage_latency_seconds", "bevrt_viewer_dropped"]:
        if name not in f1:
            failures.append(f"/metrics lacks {name}")
    t0 = time.time()
    counts, topics = asyncio.run(viewer(ws_addr, seconds, stall))
    elapsed = time.time() - t0
    f2 = scrape(http)
    n1, n2 = counter(f1, "bevrt_frames_processed"), counter(f2, "bevrt_frames_processed")
    if not (n1 is not None and n2 is not None and n2 > n1):
        failures.append(f"frames_processed did not grow between scrapes: {n1} -> {n2}")
    hist = f2.get("bevrt_stage_latency_seconds")
    stages = sorted({s.labels.get("stage") for s in hist.samples}) if hist else []
    try:
        health = urllib.request.urlopen(f"http://{http}/healthz", timeout=5).status
    except urllib.error.HTTPError as e:
        health = e.code
    if health != 200:
        failures.append(f"/healthz answered {health}")
    if not stall and counts.get("/bevrt/bev/grid", 0) < 5:
        failures.append(f"too few /bevrt/bev/grid messages: {counts}")
    print(json.dumps({"topics": topics, "messages": counts, "seconds": round(elapsed, 2),
                      "grid_rate_hz": round(counts.get("/bevrt/bev/grid", 0) / max(elapsed, 1e-9), 1),
                      "frames_processed": [n1, n2], "latency_stages": stages,
                      "healthz": health, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
