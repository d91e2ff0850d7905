"""Stage `evaluate`: closed-loop success in the touch world, action error against
baselines, open-loop replay, tactile-visual alignment against chance, and the HTML report.

Reads    params eval, world, robot, sensors, cameras (the world the policy acts in);
         outputs/prepare, outputs/geometry.zarr, outputs/features.zarr, outputs/train
Writes   outputs/eval/ metrics.json, plots/, rollouts/ (success.gif, failure.gif), report.html
"""

from pathlib import Path

from hsa_pipeline.evaluation.evaluate import run_evaluate
from stages import main

PARAMS = ["eval", "world", "robot", "sensors", "cameras"]
PREPARE, GEOMETRY, FEATURES = Path("outputs/prepare"), Path("outputs/geometry.zarr"), Path("outputs/features.zarr")
TRAIN = Path("outputs/train")
OUT = Path("outputs/eval")


def run(p) -> dict:
    return run_evaluate(p.eval, p.world, p.robot, p.sensors, p.cameras, PREPARE, GEOMETRY, FEATURES, TRAIN, OUT)


if __name__ == "__main__":
    main("evaluate")
