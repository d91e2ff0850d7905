"""How close `hsa calibrate` gets to the truth, on recordings rendered by the touch world
with the X-Trainer preset's rig (the same recordings the tests use), over several
recording seeds:

    python benchmarks/calib_accuracy.py [--seeds 1 2 3] [--frames 14]

Prints, per seed, the world camera (board on the left flange, eye-to-hand), the right
wrist camera (board on the table, hand-eye) and the wrist camera's intrinsics: position
and rotation error against the preset's values, reprojection error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from hsa_pipeline.config import load_params
from hsa_pipeline.geometry.board import BoardSpec
from hsa_pipeline.geometry.calibrate import run
from hsa_pipeline.geometry.calibration_solvers import pose_error
from hsa_pipeline.world import TouchWorld
from hsa_pipeline.world.calibration import record

PRESET = Path(__file__).resolve().parents[1] / "presets" / "xtrainer.yaml"
BOARD = "5x4,0.04,0.03,DICT_4X4_50"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--frames", type=int, default=14)
    a = ap.parse_args(argv)
    p = load_params(PRESET)
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras)
    spec = BoardSpec.parse(BOARD)
    print("| seed | world camera (mm, deg, rms px) | wrist camera hand-eye (mm, deg, rms px) "
          "| intrinsics fx, fy, cx, cy (truth 600, 600, 320, 240) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for seed in a.seeds:
            top, wrist = Path(d) / f"top{seed}.hdf5", Path(d) / f"wrist{seed}.hdf5"
            record(env, "top", "left", spec, a.frames, seed, top, board_on="flange")
            record(env, "right_wrist", "right", spec, a.frames, seed + 100, wrist, board_on="table")
            w = run(p, "world-camera", "top", [top], BOARD, arm="left")
            h = run(p, "wrist-camera", "right_wrist", [wrist], BOARD)
            k = run(p, "intrinsics", "right_wrist", [wrist], BOARD)
            K = np.array(k.values["K"])
            we = pose_error(w.values["pose"], p.cameras["top"].pose)
            he = pose_error(h.values["pose"], p.cameras["right_wrist"].pose)
            we, he = (1000 * we[0], we[1]), (1000 * he[0], he[1])  # mm, degrees
            print(f"| {seed} | {we[0]:.1f} mm, {we[1]:.2f} deg, {w.rms_px:.2f} px "
                  f"| {he[0]:.1f} mm, {he[1]:.2f} deg, {h.rms_px:.2f} px "
                  f"| {K[0, 0]:.0f}, {K[1, 1]:.0f}, {K[0, 2]:.0f}, {K[1, 2]:.0f} ({k.rms_px:.2f} px) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
