"""Our tune stage as the DAG runs it: every shard's ``privacy-pipeline tune`` at once, one process each.

    python bench/tune_pods.py --run URI --num-shards N --xcom-dir DIR

The measured tree is this launcher plus the shard processes, so it imports
nothing beyond the standard library: its own few MiB and milliseconds are
all it adds to our side's numbers. Prints one JSON line: the slowest shard's
search seconds, the lbfgs iterations of all shards together and the rows each CV fold fitted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--num-shards", type=int, required=True)
    parser.add_argument("--xcom-dir", required=True, type=Path)
    args = parser.parse_args()
    executable = str(Path(sys.executable).with_name("privacy-pipeline"))
    args.xcom_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for shard in range(args.num_shards):
        env = {**os.environ, "XCOM_RETURN_PATH": str(args.xcom_dir / f"tune-{shard}.json")}
        command = [executable, "tune", "--run", args.run, "--shard", str(shard), "--num-shards", str(args.num_shards)]
        processes.append(subprocess.Popen(command, env=env))
    failed = [shard for shard, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise SystemExit(f"tune shards {failed} of {args.num_shards} failed")
    shards = [json.loads((args.xcom_dir / f"tune-{s}.json").read_text()) for s in range(args.num_shards)]
    summary = {
        "search_seconds": max(s["seconds"] for s in shards),
        "total_lbfgs_iterations": sum(s["total_lbfgs_iterations"] for s in shards),
        "candidates": sum(s["candidates"] for s in shards),
        # Every shard cross-validates on the same folds: shard 0's rows per fold stand for all.
        "fitted_rows_per_fold": shards[0].get("fitted_rows_per_fold", []),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
