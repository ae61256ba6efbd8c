"""Wall time of one grid with ``--jobs 1`` (sequential, in one process) vs ``--jobs N`` (local launcher).

    python benchmarks/jobs_scaling.py                       # digits-lt, ce,focal,ldam_drw x 3 seeds, 1 vs 2 jobs
    python benchmarks/jobs_scaling.py --jobs 4 --methods ce,ecl --seeds 0,1 --epochs 10

Each configuration is a fresh ``ltbench bench`` process into a fresh output folder (so everything is
trained), timed from the outside (interpreter start to report written) and by the bench's own
``wall time`` line. The load average (``/proc/loadavg``) is printed before and after each: on a shared
machine the figures move with it. With N jobs each run gets ``max(1, cores // N)`` torch threads, so
CPU results may differ in the last bits from the sequential ones (see docs/scaling.md); the script
says whether the test metrics agree.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def bench(args, out: Path, jobs: int, one_thread: bool = False) -> dict:
    command = [str(Path(sys.executable).parent / "ltbench"), "bench", "--benchmark", args.benchmark, "--out", str(out),
               "--quiet", "--methods", args.methods, "--seeds", args.seeds]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    if jobs > 1:
        command += ["--jobs", str(jobs)]
    before = load()
    start = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if one_thread else {})}  # torch's default thread count
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    outside = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"jobs {jobs}: ltbench bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    inside = float(re.search(r"wall time: ([\d.]+) s", proc.stdout).group(1))
    runs = sum(1 for line in proc.stdout.splitlines() if ": trained in " in line)
    metrics = {p.relative_to(out).as_posix(): json.loads(p.read_text())["test"]["acc"]
               for p in sorted(out.glob("runs/*/*.json"))}
    return {"jobs": jobs, "outside_s": outside, "bench_s": inside, "runs": runs, "load_before": before,
            "load_after": load(), "acc": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="benchmarks/digits-lt.yaml")
    parser.add_argument("--methods", default="ce,focal,ldam_drw")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: the benchmark file's")
    parser.add_argument("--jobs", type=int, default=2, help="compared with --jobs 1")
    parser.add_argument("--keep", help="keep the output folders under this folder")
    parser.add_argument("--no-one-thread", action="store_true",
                        help="skip the third configuration: --jobs 1 with OMP_NUM_THREADS=1 (the sequential bench "
                             "with the per-run thread count of 2 jobs on 2 cores: separates thread contention from "
                             "parallelism)")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ltbench-jobs-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"grid: {args.benchmark} methods {args.methods} seeds {args.seeds}"
              f"{f' epochs {args.epochs}' if args.epochs else ''}; {os.cpu_count()} CPU(s)")
        figures = []
        configs = [(1, False), (args.jobs, False)] + ([] if args.no_one_thread else [(1, True)])
        for jobs, one_thread in configs:
            out = root / f"j{jobs}{'-1thread' if one_thread else ''}"
            shutil.rmtree(out, ignore_errors=True)
            figure = bench(args, out, jobs, one_thread)
            figures.append(figure)
            label = f"--jobs {jobs}" + (" (OMP_NUM_THREADS=1)" if one_thread else "")
            print(f"{label}: {figure['outside_s']:.1f} s (bench's own wall time {figure['bench_s']:.1f} s), "
                  f"{figure['runs']} runs trained; load average {figure['load_before']} -> {figure['load_after']}",
                  flush=True)
        one, many = figures[:2]
        print(f"ratio --jobs 1 / --jobs {args.jobs}: {one['outside_s'] / many['outside_s']:.2f} "
              f"(bench's own: {one['bench_s'] / many['bench_s']:.2f})")
        if len(figures) == 3:
            print(f"ratio --jobs 1 with 1 thread / --jobs {args.jobs}: {figures[2]['outside_s'] / many['outside_s']:.2f}")
        same = one["acc"] == many["acc"]
        print("test Acc of every run, --jobs 1 vs --jobs N: " + ("identical" if same else
              "differs in some runs (the per-run thread count changes CPU bits; docs/scaling.md)"))
        if len(figures) == 3:
            print("test Acc, --jobs 1 with 1 thread vs --jobs N: "
                  + ("identical" if figures[2]["acc"] == many["acc"] else "differs"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
