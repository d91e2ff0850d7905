"""Peak memory of a stage, whatever processes it starts: the sum of the proportional set
size (PSS: shared pages split between the processes that share them) over the stage's
process and its children, sampled every 50 ms. `/usr/bin/time -v` reports the largest
single process instead, and a forked DataLoader worker counts its parent's pages again.

    python benchmarks/bench_memory.py [--set train.memory_budget_gb=0.05 ...] -- train
    python benchmarks/bench_memory.py -- evaluate

Runs `hsa <stage>` in the current pipeline folder (after `make demo`), with the given
overrides; prints the peak summed PSS, the peak of the `hsa` process alone (it runs the stage
as `python -m stages.<name>` in a child, as dvc does) and the wall time.
A caveat for training: run it in a scratch copy or reset outputs/train first, since a
finished run is skipped (its resume key matches) and measures nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import psutil


def pss_mb(proc: psutil.Process) -> tuple[float, float]:
    """(summed PSS of proc and its descendants, proc's own PSS), MiB; 0 for a gone process."""
    total = own = 0.0
    for i, p in enumerate([proc, *proc.children(recursive=True)]):
        try:
            pss = p.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
        own = pss if i == 0 else own
    return total, own


def measure(cmd: list[str], every_s: float = 0.05) -> dict:
    t0 = time.perf_counter()
    # the stage's output goes to a file: a pipe read only at the end fills up with progress
    # bars and blocks the stage
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc = psutil.Process(child.pid)
        peak_total = peak_own = 0.0
        while child.poll() is None:
            total, own = pss_mb(proc)
            peak_total, peak_own = max(peak_total, total), max(peak_own, own)
            time.sleep(every_s)
        log.seek(0)
        last = log.read().replace("\r", "\n").strip().splitlines()[-1:]
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({child.returncode}): {last}")
    return {"peak_pss_mb": peak_total, "peak_main_pss_mb": peak_own, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="a params override, as `hsa <stage> --set`")
    ap.add_argument("stage", help="the stage to run: prepare, train, evaluate, ...")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "hsa_pipeline.cli", args.stage]
    for override in args.set:
        cmd += ["--set", override]
    r = measure(cmd)
    print(f"hsa {args.stage} {' '.join(args.set)}: peak PSS {r['peak_pss_mb']:.0f} MiB over its processes "
          f"(the hsa process itself {r['peak_main_pss_mb']:.0f} MiB), {r['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
