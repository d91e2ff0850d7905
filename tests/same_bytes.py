"""The evidence of `numerics: portable` (tests/test_numerics.py runs it in a fresh process):
the tiny demo through the real stages, synth -> prepare -> geometry -> features and six
training steps, each entered as `python -m stages.<name>` enters it (params' numerics set
before numpy and torch load), then the sha256 of what they computed, as JSON on stdout:

  geometry   every array of geometry.zarr        (numpy: forward kinematics, projections)
  features   every token grid of features.zarr    (torch: the tiny ViT on the demo's frames)
  weights    every tensor of the trained policy   (torch: six ACT + HSA steps)

    python tests/same_bytes.py [--set numerics=native]

The bytes hashed are the arrays' own, so the figure does not depend on how zarr or torch
lay out their files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import yaml  # noqa: E402

from conftest import REPO, TINY, TINY_TRAIN  # noqa: E402  (light: yaml and the config only)
from hsa_pipeline.config import apply_overrides  # noqa: E402

STEPS = ["train.steps=6", "train.val_every=100", "train.ckpt_every=100", "train.log_every=3"]


def hash_arrays(arrays) -> str:
    """sha256 over (name, dtype, shape, bytes) of each (name, array) in order."""
    h = hashlib.sha256()
    for name, a in arrays:
        h.update(f"{name} {a.dtype} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def zarr_arrays(path: Path):
    import numpy as np
    import zarr

    group = zarr.open_group(str(path), mode="r")
    for name, _ in sorted(group.arrays()):
        yield name, np.ascontiguousarray(group[name][:])


def weights_arrays(path: Path):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for name in sorted(state):
        yield name, state[name].contiguous().numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    assert "numpy" not in sys.modules and "torch" not in sys.modules, "the stages must load them, after numerics"
    from stages import run_stage

    raw = apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), TINY + TINY_TRAIN + STEPS)
    with tempfile.TemporaryDirectory(prefix="same-bytes-") as work:
        os.chdir(work)
        Path("params.yaml").write_text(yaml.safe_dump(raw))
        for name in ("synth", "prepare", "geometry", "features", "train"):
            run_stage(name, "params.yaml", args.overrides, own_process=True)
        from hsa_pipeline.pipeline.paths import FEATURES, GEOMETRY, POLICY

        print(json.dumps({"geometry": hash_arrays(zarr_arrays(GEOMETRY)),
                          "features": hash_arrays(zarr_arrays(FEATURES)),
                          "weights": hash_arrays(weights_arrays(POLICY / "weights.pt")),
                          "numerics": os.environ.get("HSA_NUMERICS")}))
        os.chdir(REPO)


if __name__ == "__main__":
    main()
