"""Command line of bevrt_fleet (see the package docstring)."""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from . import __doc__ as USAGE


def recordings_dir(spec, work):
    """A directory whose subdirectories are the recordings SPEC names (a directory of them, one
    recording, or a glob), as bevrt-tool eval --data takes it: symlinks, names kept, so the
    shards' name order is the same on every node."""
    spec = os.path.abspath(spec)
    if os.path.isdir(spec) and not glob.has_magic(spec):
        return spec
    found = sorted(p for p in glob.glob(spec) if os.path.isfile(os.path.join(p, "recording.toml")))
    if not found:
        sys.exit(f"bevrt_fleet: {spec}: no recording (recording.toml) matches")
    d = os.path.join(work, "recordings")
    os.makedirs(d, exist_ok=True)
    for p in found:
        os.symlink(p, os.path.join(d, os.path.basename(p.rstrip("/"))))
    return d


def count_recordings(data):
    if os.path.isfile(os.path.join(data, "recording.toml")):
        return 1
    return sum(os.path.isfile(os.path.join(data, e, "recording.toml")) for e in os.listdir(data))


def make_task(ray, max_retries):
    @ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)
    def run_part(name, argv, task_log):
        """One part through bevrt's binaries: ARGV (one command, or a list of commands run in
        order) with {part} (the JSON the last one writes; without it, its standard output is
        the part) and {work} (a scratch folder) filled in on the worker; returns the part's
        text and its seconds."""
        if task_log:
            # one file per attempt: the tests kill a worker by this pid and count the attempts
            with open(os.path.join(task_log, f"{name}.{os.getpid()}"), "w") as f:
                f.write(str(os.getpid()))
        t0 = time.time()
        commands = argv if isinstance(argv[0], list) else [argv]
        with tempfile.TemporaryDirectory() as tmp:
            part = os.path.join(tmp, "part.json")
            for cmd in commands:
                args = [a.replace("{part}", part).replace("{work}", tmp) for a in cmd]
                r = subprocess.run(args, capture_output=True, text=True)
                if r.returncode != 0:
                    last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
                    raise RuntimeError(f"{name}: {os.path.basename(args[0])} failed: {last}")
            if "{part}" not in commands[-1]:
                return r.stdout, time.time() - t0
            with open(part) as f:
                return f.read(), time.time() - t0
    return run_part


def start_ray(ray, a):
    if a.address == "local":
        ray.init(num_cpus=a.parallel, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
    else:
        ray.init(address=a.address, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"working_dir": a.working_dir} if a.working_dir else None)


def run_parts(ray, a, jobs, work):
    """Run {name: argv} as Ray tasks with a progress bar; (part files, failures, task seconds,
    wall seconds)."""
    task = make_task(ray, a.max_retries)
    t0 = time.time()
    pending = {task.remote(name, argv, a.task_log): name for name, argv in jobs.items()}
    parts_dir = os.path.join(work, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    parts, failures, task_s = [], [], []
    total = len(pending)
    progress(0, total, t0)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ready[0])
        try:
            text, secs = ray.get(ready[0])
        except Exception as e:  # failed after its retries: named, the rest still merge
            failures.append(f"{name}: {str(e).strip().splitlines()[-1]}")
        else:
            p = os.path.join(parts_dir, f"{name}.json")
            with open(p, "w") as f:
                f.write(text)
            parts.append(p)
            task_s.append(secs)
        progress(total - len(pending), total, t0)
    sys.stderr.write("\n")
    return sorted(parts), failures, task_s, time.time() - t0


def progress(done, total, t0):
    width = 30
    fill = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} tasks, "
                     f"{time.time() - t0:.1f} s")
    sys.stderr.flush()


def ray_overhead_ms(ray, n=20):
    """Round trip of an empty task on this cluster, ms (median of n)."""
    @ray.remote(num_cpus=1)
    def noop():
        return 0
    ray.get(noop.remote())  # a warm worker
    times = []
    for _ in range(n):
        t = time.perf_counter()
        ray.get(noop.remote())
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[n // 2]


def tool_path(a):
    tool = os.path.abspath(a.tool)
    if not os.access(tool, os.X_OK):
        sys.exit(f"bevrt_fleet: {tool}: not an executable bevrt-tool (cargo build --release)")
    return tool


def cmd_eval(a):
    import ray
    tool, bundle = tool_path(a), os.path.abspath(a.bundle)
    work = tempfile.mkdtemp(prefix="bevrt-fleet-")
    data = recordings_dir(a.recordings, work)
    n_rec = count_recordings(data)
    if n_rec == 0:
        sys.exit(f"bevrt_fleet: {data}: no recording (recording.toml) in it")
    shards = a.shards or min(n_rec, 4 * a.parallel)
    t_start = time.time()
    start_ray(ray, a)
    t_ready = time.time()
    overhead = ray_overhead_ms(ray)
    jobs = {f"shard-{i}": [tool, "eval", "--bundle", bundle, "--data", data, "--backend", a.backend,
                           "--threads", str(a.threads), "--shard", f"{i}/{shards}", "--partial", "{part}"]
            for i in range(shards)}
    parts, failures, task_s, wall = run_parts(ray, a, jobs, work)
    ray.shutdown()
    if failures:
        for f in failures:
            print(f"FAILED {f}")
        sys.exit(f"bevrt_fleet: {len(failures)} of {shards} shards failed; nothing merged")
    merged = subprocess.run([tool, "eval", "merge", "--json", *parts], capture_output=True, text=True)
    if merged.returncode != 0:
        sys.exit(f"bevrt_fleet: merge failed: {merged.stderr.strip()}")
    scores = json.loads(merged.stdout)
    table = subprocess.run([tool, "eval", "merge", *parts], capture_output=True, text=True)
    print(table.stdout, end="")
    print(f"{shards} shards of {n_rec} recordings on {a.parallel} slots: {wall:.1f} s of tasks "
          f"(each {min(task_s):.1f}-{max(task_s):.1f} s), cluster start {t_ready - t_start:.1f} s, "
          f"Ray per-task overhead {overhead:.1f} ms")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(scores, f, indent=2)
        print(f"merged scores: {a.out}")


def cmd_hil(a):
    """The HIL fault matrix, one Ray task per scenario, merged into one table and JUnit."""
    import ray
    tool, bundle = tool_path(a), os.path.abspath(a.bundle)
    listed = subprocess.run([tool, "hil", "--bundle", bundle, "--list"], capture_output=True, text=True)
    if listed.returncode != 0:
        sys.exit(f"bevrt_fleet: {listed.stderr.strip()}")
    names = listed.stdout.split()
    work = tempfile.mkdtemp(prefix="bevrt-fleet-hil-")
    start_ray(ray, a)
    jobs = {name: [tool, "hil", "--bundle", bundle, "--seed", str(a.seed), "--frames", str(a.frames),
                   "--out", "{work}", "--scenarios", name, "--partial", "{part}"]
            for name in names}
    parts, failures, task_s, wall = run_parts(ray, a, jobs, work)
    ray.shutdown()
    for f in failures:
        print(f"FAILED {f}")
    r = subprocess.run([tool, "hil", "merge", "--junit", os.path.abspath(a.junit), *parts],
                       capture_output=True, text=True)
    print(r.stdout, end="")
    print(f"{len(names)} scenarios on {a.parallel} slots: {wall:.1f} s "
          f"(each {min(task_s, default=0):.1f}-{max(task_s, default=0):.1f} s)")
    if r.returncode != 0 or failures:
        sys.exit(f"bevrt_fleet: HIL failed: {r.stderr.strip() or f'{len(failures)} tasks failed'}")


def read_parts(parts):
    """{name: JSON} of the part files (named NAME.json)."""
    out = {}
    for p in parts:
        with open(p) as f:
            out[os.path.basename(p)[:-len(".json")]] = json.load(f)
    return out


def run_inputs(spec):
    """What `run` plays: recordings (folders with recording.toml) and ROS 2 bags (*.mcap), from
    a folder of them, one of them, or a glob; {name: source spec}."""
    spec = os.path.abspath(spec)
    if glob.has_magic(spec):
        paths = sorted(glob.glob(spec))
    elif os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "recording.toml")):
        paths = sorted(os.path.join(spec, e) for e in os.listdir(spec))
    else:
        paths = [spec]
    inputs = {}
    for p in paths:
        name = os.path.basename(p.rstrip("/"))
        if os.path.isfile(os.path.join(p, "recording.toml")):
            inputs[name] = f"replay:{p}"
        elif p.endswith(".mcap") and os.path.isfile(p):
            inputs[name[:-len(".mcap")]] = f"mcap:{p}"
    return inputs


def cmd_run(a):
    """`bevrt run` on every recording or bag, one task each, one output folder per input."""
    import ray
    tool = tool_path(a)
    bevrt = os.path.join(os.path.dirname(tool), "bevrt")
    bundle, out = os.path.abspath(a.bundle), os.path.abspath(a.out)
    work = tempfile.mkdtemp(prefix="bevrt-fleet-run-")
    inputs = run_inputs(a.recordings)
    if not inputs:
        sys.exit(f"bevrt_fleet: {a.recordings}: no recording (recording.toml) or bag (.mcap)")
    os.makedirs(out, exist_ok=True)
    start_ray(ray, a)
    jobs = {name: [bevrt, "run", "--bundle", bundle, "--source", src,
                    "--out", os.path.join(out, name), "--sinks", a.sinks,
                    "--backend", a.backend, "--threads", str(a.threads), "--json"]
            for name, src in inputs.items()}
    parts, failures, task_s, wall = run_parts(ray, a, jobs, work)
    ray.shutdown()
    reports = read_parts(parts)
    print(f"{'recording':<24} {'frames':>7} {'errors':>7} {'fps':>7}  ended by")
    for name, r in sorted(reports.items()):
        errors = r["source_errors"] + r["inference_errors"] + r["sink_errors"]
        print(f"{name:<24} {r['frames_processed']:>7} {errors:>7} {r['fps']:>7.1f}  {r['ended_by']}")
    for f in failures:
        print(f"FAILED {f}")
    total = sum(r["frames_processed"] for r in reports.values())
    print(f"{len(reports)} of {len(inputs)} recordings, {total} frames on {a.parallel} slots in "
          f"{wall:.1f} s; outputs in {out}/RECORDING")
    with open(os.path.join(out, "fleet-run.json"), "w") as f:
        json.dump({"reports": reports, "failed": failures}, f, indent=2)
    if failures:
        sys.exit(f"bevrt_fleet: {len(failures)} recordings failed")


def cmd_quantize(a):
    """INT8 calibration methods side by side: one task per method quantizes the bundle and
    scores the result with eval; a table of the methods' mIoU against the FP32 bundle."""
    import ray
    tool = tool_path(a)
    bundle, out = os.path.abspath(a.bundle), os.path.abspath(a.out)
    calib, data = os.path.abspath(a.calib_data), os.path.abspath(a.eval_data)
    methods = a.methods.split(",")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bevrt-fleet-quantize-")
    start_ray(ray, a)
    evaluate = ["--data", data, "--backend", a.backend, "--threads", str(a.threads), "--json"]
    jobs = {"fp32": [tool, "eval", "--bundle", bundle, *evaluate]}
    for m in methods:
        q = os.path.join(out, m)
        jobs[m] = [[tool, "quantize", "--bundle", bundle, "--calib-data", calib, "--method", m,
                    "--frames", str(a.frames), "--out", q],
                   [tool, "eval", "--bundle", q, *evaluate]]
    parts, failures, task_s, wall = run_parts(ray, a, jobs, work)
    ray.shutdown()
    scores = read_parts(parts)
    base = scores.get("fp32", {}).get("miou")
    print(f"{'bundle':<12} {'mIoU %':>8} {'vs FP32':>8} {'frames':>7}")
    for name in ["fp32", *methods]:
        if name in scores:
            s = scores[name]
            d = f"{s['miou'] - base:+.2f}" if base is not None else "-"
            print(f"{name:<12} {s['miou']:>8.2f} {d:>8} {s['frames']:>7}")
    for f in failures:
        print(f"FAILED {f}")
    print(f"{len(jobs)} tasks on {a.parallel} slots in {wall:.1f} s; INT8 bundles in {out}/METHOD")
    with open(os.path.join(out, "fleet-quantize.json"), "w") as f:
        json.dump({"scores": scores, "failed": failures}, f, indent=2)
    if failures:
        sys.exit(f"bevrt_fleet: {len(failures)} tasks failed")


def add_common(p):
    p.add_argument("--bundle", required=True)
    p.add_argument("--address", default="local", help="local (start one here), auto, or HOST:PORT")
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                   help="worker slots of a local cluster (default: cores)")
    p.add_argument("--tool", default="target/release/bevrt-tool")
    p.add_argument("--max-retries", type=int, default=3,
                   help="times Ray runs a task again after its worker died")
    p.add_argument("--working-dir", help="runtime_env working_dir shipped to a remote cluster")
    p.add_argument("--task-log", help="a folder where each attempt of a task leaves NAME.PID")


def main(argv=None):
    p = argparse.ArgumentParser(prog="bevrt_fleet", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="bevrt-tool eval sharded over Ray, merged exactly")
    add_common(e)
    e.add_argument("--recordings", required=True,
                   help="a folder of recordings, one recording, or a glob of them")
    e.add_argument("--shards", type=int, default=0,
                   help="shards (default: recordings, at most 4 per slot)")
    e.add_argument("--backend", default="cpu-plan")
    e.add_argument("--threads", type=int, default=1, help="CPU threads per shard's bevrt-tool")
    e.add_argument("--out", help="write the merged scores (the JSON of bevrt-tool eval --json)")
    h = sub.add_parser("hil", help="bevrt-tool hil, one task per scenario, one JUnit report")
    add_common(h)
    h.add_argument("--seed", type=int, default=1)
    h.add_argument("--frames", type=int, default=60)
    h.add_argument("--junit", default="hil-junit.xml")
    r = sub.add_parser("run", help="bevrt run on every recording, one output folder each")
    add_common(r)
    r.add_argument("--recordings", required=True,
                   help="recordings and ROS 2 bags (*.mcap): a folder of them, one, or a glob")
    r.add_argument("--out", required=True, help="outputs go to OUT/RECORDING")
    r.add_argument("--sinks", default="png,jsonl")
    r.add_argument("--backend", default="cpu-plan")
    r.add_argument("--threads", type=int, default=1)
    q = sub.add_parser("quantize", help="INT8 calibration methods in parallel, each scored by eval")
    add_common(q)
    q.add_argument("--calib-data", required=True, help="calibration recordings (quantize --calib-data)")
    q.add_argument("--eval-data", required=True, help="held-out recordings with BEV ground truth")
    q.add_argument("--methods", default="minmax,percentile,entropy")
    q.add_argument("--frames", type=int, default=200, help="calibration frames")
    q.add_argument("--out", required=True, help="INT8 bundles go to OUT/METHOD")
    q.add_argument("--backend", default="cpu-plan")
    q.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    {"eval": cmd_eval, "hil": cmd_hil, "run": cmd_run, "quantize": cmd_quantize}[a.cmd](a)


if __name__ == "__main__":
    main()
