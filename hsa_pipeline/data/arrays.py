"""Checks every episode reader (HDF5, LeRobot) applies to the arrays it returns."""

from __future__ import annotations

import numpy as np

from ..errors import EpisodeError


def checked_matrix(a: np.ndarray, where: str) -> np.ndarray:
    """A (T, D) array of finite numbers, or one EpisodeError naming the first bad frame."""
    if a.ndim != 2:
        raise EpisodeError(f"{where} has shape {a.shape}, expected (T, D)")
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        t, d = bad[0]
        raise EpisodeError(f"{where} frame {t} column {d} is {a[t, d]} (NaN/Inf not allowed)")
    return a
