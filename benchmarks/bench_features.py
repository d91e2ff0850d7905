"""Benchmark the feature stage against its own encoder, in one run on one machine:

1. bare encoder: images/s of `Encoder.encode` on preloaded, preprocessed uint8 tensors
   at the stage's batch size (the ceiling);
2. whole stage: images/s of `run_features` (decode + resize in DataLoader workers +
   encode + Zarr write) on the prepared dataset.

    python benchmarks/bench_features.py [--set features.batch_size=64 ...]
Run `dvc repro prepare` first (it reads outputs/prepare).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hsa_pipeline.config import load_params
from hsa_pipeline.data.manifest import Manifest
from hsa_pipeline.features.encoder import Encoder
from hsa_pipeline.features.extract import run_features

PREPARE = Path("outputs/prepare")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", help="also write the figures to this JSON file (scripts/gpu_check.sh's summary)")
    args = ap.parse_args()
    cfg = load_params("params.yaml", args.set).features
    manifest = Manifest.load(PREPARE)
    n_images = manifest.n_frames * len(manifest.streams)
    enc = Encoder(cfg, quiet=True)
    batch = torch.randint(0, 255, (cfg.batch_size, enc.size, enc.size, 3), dtype=torch.uint8)
    enc.encode(batch)  # warm-up
    reps = max(3, n_images // cfg.batch_size // 2)
    t = time.perf_counter()
    for _ in range(reps):
        enc.encode(batch)
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    bare = reps * cfg.batch_size / (time.perf_counter() - t)
    out = Path(tempfile.mkdtemp()) / "features.zarr"
    t = time.perf_counter()
    run_features(cfg, PREPARE, out)
    stage = n_images / (time.perf_counter() - t)
    shutil.rmtree(out.parent)
    dev = (torch.cuda.get_device_name() if enc.device.type == "cuda"
           else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"device: {dev}; model {cfg.model}, batch {cfg.batch_size}, workers {cfg.workers}; {n_images} images")
    print(f"bare encoder : {bare:8.0f} images/s")
    print(f"whole stage  : {stage:8.0f} images/s  ({100 * stage / bare:.0f}% of the bare encoder)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "model": cfg.model, "images": n_images,
                                               "bare_images_per_s": bare, "stage_images_per_s": stage}, indent=1))


if __name__ == "__main__":
    main()
