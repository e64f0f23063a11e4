"""bevrt_fleet: bevrt's evaluation of many recordings, sharded over a Ray cluster.

Run from the repository root (or with scripts/fleet on PYTHONPATH):

  PYTHONPATH=scripts/fleet python3 -m bevrt_fleet eval --bundle B --recordings DIR_OR_GLOB \\
      [--address local|auto|HOST:PORT] [--parallel N] [--shards S] [--tool target/release/bevrt-tool] \\
      [--backend cpu-plan] [--threads 1] [--out merged.json] [--max-retries 3]

  PYTHONPATH=scripts/fleet python3 -m bevrt_fleet hil --bundle B [--parallel N] [--junit hil.xml]
      [--seed S] [--frames N]

  PYTHONPATH=scripts/fleet python3 -m bevrt_fleet run --bundle B --recordings DIR_OR_GLOB --out DIR
      [--sinks png,jsonl]                          # bevrt run per recording, DIR/RECORDING each
  PYTHONPATH=scripts/fleet python3 -m bevrt_fleet quantize --bundle B --calib-data REC --eval-data REC
      --out DIR [--methods minmax,percentile,entropy]   # INT8 per method, each scored by eval

Each Ray task runs the bevrt-tool binary on one shard (`bevrt-tool eval --shard I/S --partial`),
so the numbers come from the same code as a single `bevrt-tool eval`; the driver merges the
shards' integer counts with `bevrt-tool eval merge`, which prints exactly what one eval over all
recordings prints. `hil` runs one task per scenario of the fault matrix (`bevrt-tool hil
--scenarios NAME --partial`) and merges them with `bevrt-tool hil merge` into one table and one
JUnit report. A task whose worker dies is run again by Ray (`max_retries`); a recording
that cannot be read is named in the summary and the others still count.

`--address local` starts a Ray cluster on this machine with `--parallel` worker slots; `auto`
joins the cluster `ray start` made. On a cluster of several machines the tool, the bundle and
the recordings must be at the same paths on every node (a shared file system), or shipped with
Ray's runtime environment (`--working-dir`).
"""
