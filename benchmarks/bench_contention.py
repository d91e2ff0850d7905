"""Demo training speed on a CPU alone and beside one other CPU-bound process, in one run:
the figure behind `train.threads: auto` (README, "CPU under contention").

For each setting, a worker process trains the demo model on the demo caches (the real
train step: hsa_pipeline.train.train_step on FrameBatches) for a fixed time and reports
steps/s; first alone, then while a competitor runs: a second trainer with the same
setting (two users' runs on one machine), or a one-thread busy loop.

    python benchmarks/bench_contention.py [--seconds 20] [--settings 1 2 2p]

Settings: a thread count, with 'p' for OMP_WAIT_POLICY=PASSIVE (threads sleep instead of
spinning at OpenMP barriers), or auto (runtime.ThreadTuner: `train.threads: auto`).
Run `dvc repro features` first (it reads outputs/).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PREPARE, GEOMETRY, FEATURES = Path("outputs/prepare"), Path("outputs/geometry.zarr"), Path("outputs/features.zarr")


def worker(threads: str, seconds: float) -> None:
    """Train for `seconds` after a warm-up; print steps/s."""
    import torch

    from hsa_pipeline.config import load_params
    from hsa_pipeline.data.caches import Caches
    from hsa_pipeline.pipeline.runtime import ThreadTuner
    from hsa_pipeline.training.loop import Dist, DivergenceWatch, TrainingData, build, train_step

    tuner = ThreadTuner("auto" if threads == "auto" else int(threads))
    p = load_params("params.yaml")
    caches = Caches(PREPARE, GEOMETRY, FEATURES, p.train.memory_budget_gb)
    dist = Dist(0, 1, torch.device("cpu"))
    data = TrainingData(caches, p.act, p.train, dist)
    module = build(p.act, p.hsa, p.train.steps, caches, dist.device)
    params = [q for q in module.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    off = torch.autocast("cpu", enabled=False)
    watch = DivergenceWatch(dist.device)
    step = 0
    for _ in range(3):  # warm-up
        train_step(module, opt, sched, params, data.next_batch(), step, 10.0, off, watch)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tuner.update()
        train_step(module, opt, sched, params, data.next_batch(), step, 10.0, off, watch)
        step += 1
    print(f"{step / (time.perf_counter() - t0):.4f}", flush=True)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def spawn(args: list[str], passive: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"} if passive else {
        k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE, text=True)


def measure(setting: str, seconds: float, competitor: str | None) -> float:
    threads, passive = setting.rstrip("p"), setting.endswith("p")
    rival = None
    if competitor == "trainer":
        rival = spawn(["--worker", str(threads), "--seconds", str(seconds + 60)], passive)
        time.sleep(8)  # let it load and start training
    elif competitor == "busy":
        rival = spawn(["--busy", "--seconds", str(seconds + 60)], False)
    me = spawn(["--worker", str(threads), "--seconds", str(seconds)], passive)
    out, _ = me.communicate()
    if rival is not None:
        rival.kill()
        rival.wait()
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settings", nargs="+", default=["1", "2", "auto"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.seconds)
    if args.busy:
        return busy(args.seconds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; demo model, {args.seconds:.0f} s per figure")
    print(f"{'setting':<22}{'alone':>10}{'+ trainer':>12}{'ratio':>8}{'+ busy loop':>13}{'ratio':>8}")
    for s in args.settings:
        alone = measure(s, args.seconds, None)
        vs_trainer = measure(s, args.seconds, "trainer")
        vs_busy = measure(s, args.seconds, "busy")
        name = ("threads: auto" if s == "auto" else f"{s.rstrip('p')} thread(s)") + (", passive" if s.endswith("p") else "")
        print(f"{name:<22}{alone:>10.2f}{vs_trainer:>12.2f}{vs_trainer / alone:>8.0%}{vs_busy:>13.2f}{vs_busy / alone:>8.0%}",
              flush=True)


if __name__ == "__main__":
    main()
