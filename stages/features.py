"""Stage `features`: the CLIP patch-token grid of every frame of every stream, once.

Reads    params features; outputs/prepare/episodes.json; the episodes' images
Writes   outputs/features.zarr (resumable: an interrupted run continues where it stopped)
"""


from hsa_pipeline.pipeline.paths import FEATURES, PREPARE
from stages import main

PARAMS = ["features", "numerics"]
OUT = FEATURES


def run(p) -> dict:
    from hsa_pipeline.features.extract import run_features  # here: main() sets numerics first
    return run_features(p.features, PREPARE, OUT)


if __name__ == "__main__":
    main("features")
