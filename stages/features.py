"""Stage `features`: the CLIP patch-token grid of every frame of every stream, once.

Reads    params features; outputs/prepare/episodes.json; the episodes' images
Writes   outputs/features.zarr (resumable: an interrupted run continues where it stopped)
"""

from pathlib import Path

from hsa_pipeline.features.extract import run_features
from stages import main

PARAMS = ["features"]
PREPARE = Path("outputs/prepare")
OUT = Path("outputs/features.zarr")


def run(p) -> dict:
    return run_features(p.features, PREPARE, OUT)


if __name__ == "__main__":
    main("features")
