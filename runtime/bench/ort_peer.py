#!/usr/bin/env python3
"""ONNX Runtime peer for `bevrt bench --peer-onnxruntime`: times one model on CPU with a fixed
thread count on a random input of the given shape; prints one JSON line."""
import argparse, json, time
import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--shape", required=True)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--iters", type=int, default=200)
ap.add_argument("--warmup", type=int, default=20)
a = ap.parse_args()

so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
x = np.random.default_rng(0).standard_normal([int(d) for d in a.shape.split(",")]).astype(np.float32)
for _ in range(a.warmup):
    sess.run(None, {name: x})
t = []
for _ in range(a.iters):
    t0 = time.perf_counter()
    sess.run(None, {name: x})
    t.append((time.perf_counter() - t0) * 1e3)
t = np.array(t)
print(json.dumps({"peer": "onnxruntime", "version": ort.__version__, "threads": a.threads,
                  "iters": a.iters, "mean_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
                  "p99_ms": float(np.percentile(t, 99))}))
