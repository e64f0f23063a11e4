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
    def eval_shard(tool, bundle, data, index, count, backend, threads, task_log):
        """One shard through bevrt-tool; returns its counts (JSON text) and how long it took."""
        if task_log:
            # one file per attempt: the tests kill a worker by this pid and count the attempts
            with open(os.path.join(task_log, f"shard-{index}.{os.getpid()}"), "w") as f:
                f.write(str(os.getpid()))
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            part = os.path.join(tmp, f"shard-{index}.json")
            r = subprocess.run(
                [tool, "eval", "--bundle", bundle, "--data", data, "--backend", backend,
                 "--threads", str(threads), "--shard", f"{index}/{count}", "--partial", part],
                capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise RuntimeError(f"shard {index}/{count}: bevrt-tool eval failed: {last}")
            with open(part) as f:
                return f.read(), time.time() - t0
    return eval_shard


def progress(done, total, t0):
    width = 30
    fill = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} shards, "
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


def cmd_eval(a):
    import ray
    tool = os.path.abspath(a.tool)
    bundle = os.path.abspath(a.bundle)
    if not os.access(tool, os.X_OK):
        sys.exit(f"bevrt_fleet: {tool}: not an executable bevrt-tool (cargo build --release)")
    work = tempfile.mkdtemp(prefix="bevrt-fleet-")
    data = recordings_dir(a.recordings, work)
    n_rec = count_recordings(data)
    if n_rec == 0:
        sys.exit(f"bevrt_fleet: {data}: no recording (recording.toml) in it")
    shards = a.shards or min(n_rec, 4 * a.parallel)
    t_start = time.time()
    if a.address == "local":
        ray.init(num_cpus=a.parallel, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
    else:
        ray.init(address=a.address, logging_level="WARNING", log_to_driver=False,
                 runtime_env={"working_dir": a.working_dir} if a.working_dir else None)
    t_ready = time.time()
    overhead = ray_overhead_ms(ray)
    task = make_task(ray, a.max_retries)
    t0 = time.time()
    pending = {task.remote(tool, bundle, data, i, shards, a.backend, a.threads, a.task_log): i
               for i in range(shards)}
    parts_dir = os.path.join(work, "parts")
    os.makedirs(parts_dir)
    parts, failures, task_s = [], [], []
    progress(0, shards, t0)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            text, secs = ray.get(ready[0])
        except Exception as e:  # a shard that failed after its retries: named, the rest merge
            failures.append(f"shard {i}/{shards}: {str(e).strip().splitlines()[-1]}")
        else:
            p = os.path.join(parts_dir, f"shard-{i}.json")
            with open(p, "w") as f:
                f.write(text)
            parts.append(p)
            task_s.append(secs)
        progress(shards - len(pending), shards, t0)
    sys.stderr.write("\n")
    wall = time.time() - t0
    ray.shutdown()
    if failures:
        for f in failures:
            print(f"FAILED {f}")
        sys.exit(f"bevrt_fleet: {len(failures)} of {shards} shards failed; nothing merged")
    merged = subprocess.run([tool, "eval", "merge", "--json", *sorted(parts)],
                            capture_output=True, text=True)
    if merged.returncode != 0:
        sys.exit(f"bevrt_fleet: merge failed: {merged.stderr.strip()}")
    scores = json.loads(merged.stdout)
    table = subprocess.run([tool, "eval", "merge", *sorted(parts)], capture_output=True, text=True)
    print(table.stdout, end="")
    print(f"{shards} shards of {n_rec} recordings on {a.parallel} slots: {wall:.1f} s of tasks "
          f"(each {min(task_s):.1f}-{max(task_s):.1f} s), cluster start {t_ready - t_start:.1f} s, "
          f"Ray per-task overhead {overhead:.1f} ms")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(scores, f, indent=2)
        print(f"merged scores: {a.out}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="bevrt_fleet", description=USAGE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="bevrt-tool eval sharded over Ray, merged exactly")
    e.add_argument("--bundle", required=True)
    e.add_argument("--recordings", required=True,
                   help="a folder of recordings, one recording, or a glob of them")
    e.add_argument("--address", default="local", help="local (start one here), auto, or HOST:PORT")
    e.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                   help="worker slots of a local cluster (default: cores)")
    e.add_argument("--shards", type=int, default=0,
                   help="shards (default: recordings, at most 4 per slot)")
    e.add_argument("--tool", default="target/release/bevrt-tool")
    e.add_argument("--backend", default="cpu-plan")
    e.add_argument("--threads", type=int, default=1, help="CPU threads per shard's bevrt-tool")
    e.add_argument("--max-retries", type=int, default=3,
                   help="times Ray runs a shard again after its worker died")
    e.add_argument("--working-dir", help="runtime_env working_dir shipped to a remote cluster")
    e.add_argument("--task-log", help="a folder where each attempt of a shard leaves shard-I.PID")
    e.add_argument("--out", help="write the merged scores (the JSON of bevrt-tool eval --json)")
    a = p.parse_args(argv)
    if a.cmd == "eval":
        cmd_eval(a)


if __name__ == "__main__":
    main()
