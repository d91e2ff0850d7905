"""Benchmark: the full per-frame geometry (FK, sensor poses, boxes for every camera) and
the batched FK alone, against roboticstoolbox's `robot.ets().fkine` on the same joints.

    python benchmarks/bench_geometry.py [--frames 20000]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

from hsa_pipeline.config import load_params  # noqa: E402
from hsa_pipeline.geometry.rig import Rig  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    p = load_params(args.params)
    rig = Rig(p.robot, p.sensors, p.cameras, p.geometry.margin_px)
    arm = rig.arms["arm"]
    rng = np.random.default_rng(0)
    qpos = np.zeros((args.frames, rig.qpos_width()))
    qpos[:, :6] = rng.uniform(-np.pi, np.pi, (args.frames, 6))
    q = qpos[:, :6]
    ets = arm.robot.ets()
    t_rtb = best_of(lambda: ets.fkine(q), 1)
    t_fk = best_of(lambda: arm.chain.fkine(q))
    t_geo = best_of(lambda: rig.episode_geometry(qpos))
    n_cam, n_sen = len(rig.cameras), len(rig.sensors)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, numpy {np.__version__}")
    print(f"frames: {args.frames}")
    print(f"roboticstoolbox ets().fkine : {args.frames / t_rtb:12,.0f} frames/s")
    print(f"batched FK                  : {args.frames / t_fk:12,.0f} frames/s  ({t_rtb / t_fk:.1f}x roboticstoolbox)")
    print(f"full geometry ({n_sen} sensor x {n_cam} cameras: FK, poses, boxes): {args.frames / t_geo:12,.0f} frames/s "
          f"({t_rtb / t_geo:.1f}x roboticstoolbox FK alone)")


if __name__ == "__main__":
    main()
