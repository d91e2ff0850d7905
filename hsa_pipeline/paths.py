"""Fixed locations of the pipeline's outputs (dvc.yaml names the same paths)."""

from pathlib import Path

OUTPUTS = Path("outputs")
PREPARE = OUTPUTS / "prepare"  # manifest.json, stats.json, contact.json
GEOMETRY = OUTPUTS / "geometry.zarr"
FEATURES = OUTPUTS / "features.zarr"
TRAIN = OUTPUTS / "train"  # checkpoints/, tb/, curves/, policy/, metrics.json
EVAL = OUTPUTS / "eval"  # metrics.json, plots/, report.html
