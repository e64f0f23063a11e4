"""Peers for the CUDA backend's convolutions, on the GPU machine when PyTorch is there:
cuBLASLt INT8 GEMM (torch._int_mm) and FP16 GEMM (torch.matmul) on the GEMM shapes of every
convolution device_check.json timed, and device memory bandwidth (a large copy).
usage: python3 peer_torch.py device_check.json > peer_torch.json"""
import json, sys, time
import torch

def timed(f, iters=50):
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters

report = json.load(open(sys.argv[1]))
out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "gemms": []}
# each model plan is one check of its "plan MODEL" group (bevrt-device-check)
for plan in [c for c in report.get("checks", []) if "model" in c]:
    for variant in ("Imma", "Dp4a"):
        for c in plan.get(variant, {}).get("convolutions", []):
            if c["groups"] != 1:
                continue
            m, n, k = c["m"], c["n"], c["k"]
            # _int_mm needs m > 16 and k, n multiples of 8
            mp, kp, np_ = max(32, -(-m // 8) * 8), -(-k // 8) * 8, -(-n // 8) * 8
            a = torch.randint(-127, 127, (mp, kp), dtype=torch.int8, device="cuda")
            b = torch.randint(-127, 127, (kp, np_), dtype=torch.int8, device="cuda")
            ti = timed(lambda: torch._int_mm(a, b))
            ah, bh = a.half(), b.half()
            th = timed(lambda: ah @ bh)
            ops = 2.0 * m * n * k
            out["gemms"].append({"model": plan["model"], "kernel": variant, "step": c["step"],
                                 "m": m, "n": n, "k": k, "ours_us": c["us"],
                                 "int_mm_us": ti * 1e6, "fp16_mm_us": th * 1e6,
                                 "ours_share_of_int_mm": (ti / (c["us"] * 1e-6)),
                                 "ours_tops": c["tops"], "int_mm_tops": ops / ti / 1e12})
x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
y = torch.empty_like(x)
t = timed(lambda: y.copy_(x), 20)
out["copy_bandwidth_gbs"] = 2 * x.numel() / t / 1e9
json.dump(out, sys.stdout, indent=1)
