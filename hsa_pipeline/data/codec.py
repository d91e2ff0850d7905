"""The numbers the model reads and writes: joint state z-scored with the prepare stage's
statistics, action chunks normalised and back (`ActionCodec`). Training (the caches) and
inference (the exported policy) both use this module, so the two cannot normalise
differently."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


def normalise_qpos(qpos: np.ndarray, stats: dict) -> np.ndarray:
    """(..., Dq) raw joint state -> z-scored with prepare's stats, float32 (what the model reads)."""
    return ((np.asarray(qpos) - np.asarray(stats["qpos"]["mean"])) / np.asarray(stats["qpos"]["std"])).astype(np.float32)


@dataclass
class ActionCodec:
    """How action chunks are normalised for the model, and back: per-dimension z-score of
    the action, either absolute (ACT) or relative to the current qpos."""

    mean: np.ndarray  # (Da,)
    std: np.ndarray  # (Da,)
    relative: bool

    @classmethod
    def from_stats(cls, stats: dict, relative: bool, qpos_dim: int | None = None) -> "ActionCodec":
        mean, std = np.asarray(stats["action"]["mean"]), np.asarray(stats["action"]["std"])
        if relative and qpos_dim is not None and qpos_dim != len(mean):
            raise ConfigError(f"act.relative_actions needs actions in qpos space, but qpos has {qpos_dim} "
                             f"dimensions and actions {len(mean)}")
        return cls(mean, std, relative)

    def encode(self, actions: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """(..., k, Da) raw actions, (..., Dq) raw qpos -> normalised."""
        ref = qpos[..., None, :] if self.relative else self.mean
        return ((actions - ref) / self.std).astype(np.float32)

    def decode(self, pred: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """(..., k, Da) model output, (..., Dq) raw qpos -> raw actions."""
        ref = qpos[..., None, :] if self.relative else self.mean
        return pred * self.std + ref
