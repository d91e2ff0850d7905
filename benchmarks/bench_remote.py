"""How a feature store travels through a DVC remote: one chunk file per frame against the
features stage's layout (Zarr v3 shards of ~64 MiB), for a store sized like X-Trainer
recordings (3 cameras + 2 tactile at 30 fps, ViT-B-16 grids 14 x 14 x 768, float16):
file count, `dvc add`, `dvc push` to a local-directory remote, `dvc pull` into a fresh
clone, and how fast the trainer reads each layout back, as FeatureStore does (zarr for one
file per frame, ShardFiles for the shards): whole arrays (its default, caches in memory)
and random single frames (streaming, caches over train.memory_budget_gb).

    python benchmarks/bench_remote.py [--seconds 20] [--dir /tmp]

Needs about 10 x the store's size free for 20 s of recording (0.9 GB a layout: workspace,
cache, remote and the pulled clone). Figures for one hour scale with the frame count
(file count exactly; times about linearly, the per-file cost dominating the unsharded one).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from hsa_pipeline.data.shards import ShardFiles
from hsa_pipeline.features.extract import SHARD_BYTES

STREAMS = ["top", "left_wrist", "right_wrist", "tactile_left", "tactile_right"]
GRID, WIDTH, FPS = 14, 768, 30
DVC = str(Path(sys.executable).with_name("dvc"))


def write_store(path: Path, frames: int, sharded: bool) -> None:
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(path), mode="w")
    frame_bytes = GRID * GRID * WIDTH * 2
    shard = max(1, min(frames, SHARD_BYTES // frame_bytes))
    for s in STREAMS:
        arr = root.create_array(s, shape=(frames, GRID, GRID, WIDTH), dtype="float16", chunks=(1, GRID, GRID, WIDTH),
                                shards=(shard, GRID, GRID, WIDTH) if sharded else None, compressors=None)
        for a in range(0, frames, shard):
            b = min(frames, a + shard)
            arr[a:b] = rng.standard_normal((b - a, GRID, GRID, WIDTH), dtype=np.float32).astype(np.float16)


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def reads_per_s(path: Path, frames: int, n: int = 300) -> float:
    """Random frames, every stream, as FeatureStore.grid reads them."""
    read = readers(path)
    rows = np.random.default_rng(1).integers(0, frames, n)
    t = time.perf_counter()
    for r in rows:
        for s in STREAMS:
            read[s][0](int(r))
    return n / (time.perf_counter() - t)


def readers(path: Path) -> dict:
    """Per stream what FeatureStore reads with: ShardFiles for the features stage's shards,
    else the zarr array (kept open)."""
    root = zarr.open_group(str(path), mode="r")
    out = {}
    for s in STREAMS:
        files = ShardFiles.open(path / s)
        out[s] = (files.frame, files.all) if files is not None else (root[s].__getitem__, lambda a=root[s]: a[...])
    return out


def load_mb_per_s(path: Path) -> float:
    """The trainer's default path (caches that fit train.memory_budget_gb): whole arrays."""
    read = readers(path)
    t = time.perf_counter()
    n = sum(read[s][1]().nbytes for s in STREAMS)
    return n / 2**20 / (time.perf_counter() - t)


def one_layout(base: Path, frames: int, sharded: bool) -> dict:
    name = "sharded" if sharded else "chunk-per-frame"
    a, remote = base / name / "a", base / name / "remote"
    a.mkdir(parents=True)
    remote.mkdir()
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run(["git", "init", "-q"], cwd=a, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=a, check=True)
    subprocess.run([DVC, "remote", "add", "-d", "storage", str(remote)], cwd=a, check=True)
    write_store(a / "features.zarr", frames, sharded)
    files = sum(1 for p in (a / "features.zarr").rglob("*") if p.is_file())
    out = {"layout": name, "files": files, "add_s": timed([DVC, "add", "features.zarr"], a)}
    subprocess.run([*git, "add", "-A"], cwd=a, check=True)
    subprocess.run([*git, "commit", "-qm", "store"], cwd=a, check=True)
    out["push_s"] = timed([DVC, "push"], a)
    b = base / name / "b"
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
    out["pull_s"] = timed([DVC, "pull"], b)
    out["reads_per_s"] = reads_per_s(b / "features.zarr", frames)
    out["load_mb_s"] = load_mb_per_s(b / "features.zarr")
    shutil.rmtree(base / name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    frames = int(args.seconds * FPS)
    size = frames * len(STREAMS) * GRID * GRID * WIDTH * 2
    print(f"store: {args.seconds:g} s of X-Trainer recording = {frames} frames x {len(STREAMS)} streams, "
          f"{size / 1e9:.2f} GB (one hour: {3600 * FPS} frames, {size * 3600 / args.seconds / 1e9:.0f} GB)")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for sharded in (False, True):
            r = one_layout(Path(tmp), frames, sharded)
            per_hour = r["files"] * 3600 / args.seconds
            print(f"{r['layout']:16s} {r['files']:7d} files (an hour: {per_hour:9,.0f})   dvc add {r['add_s']:6.1f} s   "
                  f"push {r['push_s']:6.1f} s   pull {r['pull_s']:6.1f} s   trainer: whole store {r['load_mb_s']:5.0f} MiB/s, "
                  f"random frames {r['reads_per_s']:4.0f} /s")


if __name__ == "__main__":
    main()
