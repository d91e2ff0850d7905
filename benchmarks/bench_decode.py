"""Decoded frames/s for one 640x480 stream, in one run on one machine:

1. LeRobot video (mp4, H.264 and AV1 as LeRobot records by default), read through
   hsa_pipeline.lerobot (PyAV/FFmpeg), frame by frame in order, as the features stage does;
2. the same frames as X-Trainer JPEG rows (quality 50, the X-Trainer default) in an HDF5
   episode, read through hsa_pipeline.episodes.

    python benchmarks/bench_decode.py [--frames 300]

The frames are the touch world's top camera, scaled to 640x480.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the LeRobot writer of the tests

from hsa_pipeline.config import load_params  # noqa: E402
from hsa_pipeline.data.episodes import Episode, open_episode, write_episode  # noqa: E402


def world_frames(n: int) -> list[np.ndarray]:
    from hsa_pipeline.world import TouchWorld
    from hsa_pipeline.world.synth import record_episode, scene_seed

    p = load_params("params.yaml")
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=10**6)
    frames, i = [], 0
    while len(frames) < n:
        ep = record_episode(env, scene_seed("train", 99, i))
        frames += [np.asarray(Image.fromarray(f).resize((640, 480), Image.Resampling.BICUBIC)) for f in ep["images"]["top"]]
        i += 1
    return frames[:n]


def rate(read, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        read(i)
    return n / (time.perf_counter() - t)


def main() -> None:
    import av
    from lerobot_data import write_lerobot

    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    frames = world_frames(args.frames)
    n = len(frames)
    zeros = np.zeros((n, 7))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_episode(tmp / "episode_0.hdf5", zeros, zeros, {"top": np.stack(frames)}, {}, layout="xtrainer", jpeg_quality=50)
        with Episode(tmp / "episode_0.hdf5") as ep:
            results["X-Trainer JPEG rows (quality 50), PIL"] = rate(lambda i: ep.frame("top", i), n)
        size_jpeg = os.path.getsize(tmp / "episode_0.hdf5")
        for codec, options in (("libx264", {"crf": "23", "g": "30"}), ("libsvtav1", {"crf": "30", "g": "30", "preset": "10"})):
            root = write_lerobot(tmp / codec, [{"qpos": zeros, "action": zeros, "images": {"top": np.stack(frames)}}],
                                 fps=30, codec=codec, options=options)
            mp4 = next(root.glob("videos/**/*.mp4"))
            with open_episode(root / "episode_000000", "lerobot", {"images": {"top": "observation.images.top"}}) as ep:
                results[f"LeRobot mp4 ({codec}, GOP 30), PyAV, in order"] = rate(lambda i: ep.frame("top", i), n)
            results[f"  file size {codec}"] = os.path.getsize(mp4) / 2**20
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; PyAV {av.__version__}; {n} frames of 640x480")
    print(f"  file size JPEG HDF5: {size_jpeg / 2**20:.1f} MiB")
    for k, v in results.items():
        print(f"{k}: {v:.1f} MiB" if "size" in k else f"{k}: {v:7.0f} frames/s")


if __name__ == "__main__":
    main()
