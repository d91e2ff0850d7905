"""When a tactile sensor is in contact, from its images alone: each frame's difference
from the stream's no-contact look (prepare's contact scores; calibrate --check uses them
to find contact onsets)."""

from __future__ import annotations

import numpy as np

THUMB = (32, 32)  # contact scores compare small thumbnails: cheap and robust to noise


def thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(THUMB, Image.Resampling.BILINEAR), dtype=np.float32)


def contact_scores(thumbs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Episode -> (T,) scores: mean absolute difference (0..1) from the stream's no-contact
    reference, the per-pixel median over all frames (contact is the exception, not the rule)."""
    stacked = np.concatenate(list(thumbs.values()), axis=0)
    ref = np.median(stacked, axis=0)  # (32, 32, 3)
    return {k: np.abs(v - ref).mean(axis=(1, 2, 3)) / 255.0 for k, v in thumbs.items()}, ref
