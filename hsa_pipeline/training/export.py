"""The exported policy: a self-contained directory (stores.POLICY_FILES) that model/policy.py
runs on raw camera images, and evaluate and `hsa serve` load."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ActConfig, HsaConfig, to_dict
from ..data.caches import Caches
from ..data.stores import POLICY_SCHEMA
from ..pipeline.atomic import atomic_dir, write_json
from .module import TrainModule


def export_policy(out: Path, module: TrainModule, act: ActConfig, hsa: HsaConfig, caches: Caches,
                  best: Path) -> None:
    """The policy directory, self-contained (stores.POLICY_FILES): the state of the best
    validation step (or the last one without validation) of the policy and, with HSA on,
    of the HSA heads (evaluate's alignment reads them); policy.json is everything else
    needed to run it on raw camera images."""
    state = torch.load(best, map_location="cpu", weights_only=True)["module"] if best.exists() else module.state_dict()
    part = lambda prefix: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    meta = {"schema_version": POLICY_SCHEMA, "act": to_dict(act), "hsa": to_dict(hsa) if module.hsa else None,
            "shapes": to_dict(module.policy.shapes), "stats": caches.stats,
            "action_shift": caches.manifest.action_shift,
            "column_names": caches.geometry_info.column_names,
            "features": {k: getattr(caches.feature_info, k) for k in ("model", "pretrained", "block", "resize", "mapping",
                                                                     "streams")}}
    with atomic_dir(out) as tmp:
        torch.save(part("policy."), tmp / "weights.pt")
        if module.hsa is not None:
            torch.save(part("hsa."), tmp / "hsa.pt")
        write_json(tmp / "policy.json", meta)
