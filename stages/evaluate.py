"""Stage `evaluate`: action error against baselines, open-loop replay, tactile-visual
alignment against chance, and the HTML report.

Reads    params eval; outputs/prepare, outputs/geometry.zarr, outputs/features.zarr, outputs/train
Writes   outputs/eval/ metrics.json, plots/, report.html
"""

from pathlib import Path

from hsa_pipeline.evaluate import run_evaluate
from stages import main

PARAMS = ["eval"]
PREPARE, GEOMETRY, FEATURES = Path("outputs/prepare"), Path("outputs/geometry.zarr"), Path("outputs/features.zarr")
TRAIN = Path("outputs/train")
OUT = Path("outputs/eval")


def run(p) -> dict:
    return run_evaluate(p.eval, PREPARE, GEOMETRY, FEATURES, TRAIN, OUT)


if __name__ == "__main__":
    main("evaluate")
