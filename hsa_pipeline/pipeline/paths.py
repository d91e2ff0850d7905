"""Where the stages write, relative to the repository root (the working directory every
stage runs in). dvc.yaml lists the same paths as outs and deps (tests/test_dvc_yaml.py
checks that they agree), and stages/, the `hsa` CLI, the tests and the study use these."""

from pathlib import Path

OUTPUTS = Path("outputs")
CODE = OUTPUTS / "code"  # stage code: the code fingerprint of every other stage
PREPARE = OUTPUTS / "prepare"  # episodes.json, training.json, stats.json, contact.json
GEOMETRY = OUTPUTS / "geometry.zarr"
FEATURES = OUTPUTS / "features.zarr"
TRAIN = OUTPUTS / "train"  # run/ (checkpoints, TensorBoard, curves), policy/, metrics.json
POLICY = TRAIN / "policy"  # the exported policy
EVAL = OUTPUTS / "eval"  # metrics.json, plots/, report.html, rollouts/, tb/
