"""Stage `train`: ACT + HSA on the caches (torchrun for several GPUs).

Reads    params act, hsa, train; outputs/prepare, outputs/geometry.zarr, outputs/features.zarr
Writes   outputs/train/run/ (kept between runs: checkpoints, TensorBoard, curves; resumes only
         from the same inputs, code and settings), outputs/train/policy/, outputs/train/metrics.json
"""


from hsa_pipeline.pipeline.paths import FEATURES, GEOMETRY, PREPARE, TRAIN
from stages import main

PARAMS = ["act", "hsa", "train", "numerics"]
OUT = TRAIN


def run(p) -> dict:
    from hsa_pipeline.training.loop import run_train  # here: main() sets numerics first
    return run_train(p.act, p.hsa, p.train, PREPARE, GEOMETRY, FEATURES, OUT)


if __name__ == "__main__":
    main("train")
