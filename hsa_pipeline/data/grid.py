"""How an image becomes the encoder's patch-token grid, and which tokens a pixel box covers.

The feature store records each stream's GridMapping in its attributes; the box -> token
mask of training and evaluation uses exactly that mapping, so a box always lands on the
tokens the encoder made from those pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GridMapping:
    """How an (orig_w x orig_h) image becomes the encoder's (size x size) input and its
    (grid x grid) patch tokens. Stored in the feature store's attributes."""

    orig_w: int
    orig_h: int
    size: int  # square encoder input side
    patch: int  # patch side in input pixels
    mode: str  # "stretch" | "letterbox"
    new_w: int  # resized image inside the input (before padding)
    new_h: int
    pad_x: int  # left padding (letterbox)
    pad_y: int  # top padding

    @property
    def grid(self) -> int:
        return self.size // self.patch

    @classmethod
    def create(cls, mode: str, orig_w: int, orig_h: int, size: int, patch: int) -> "GridMapping":
        if mode == "stretch":
            return cls(orig_w, orig_h, size, patch, mode, size, size, 0, 0)
        if mode == "letterbox":
            s = size / max(orig_w, orig_h)
            new_w, new_h = max(1, round(orig_w * s)), max(1, round(orig_h * s))
            return cls(orig_w, orig_h, size, patch, mode, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2)
        raise ValueError(f"resize mode must be 'stretch' or 'letterbox', got {mode!r}")

    def to_input(self, box: np.ndarray) -> np.ndarray:
        """(..., 4) boxes in original pixels -> input pixels."""
        sx, sy = self.new_w / self.orig_w, self.new_h / self.orig_h
        return box * np.array([sx, sy, sx, sy]) + np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])

    def to_dict(self) -> dict:
        return asdict(self)


def box_token_mask(box: np.ndarray, mapping: GridMapping) -> np.ndarray:
    """(..., 4) boxes in original pixels -> (..., G, G) bool: tokens whose patch centre is
    inside the box. A non-empty box that contains no patch centre selects the token under
    its own centre. Empty boxes (not visible) select nothing."""
    g, p = mapping.grid, mapping.patch
    b = mapping.to_input(np.asarray(box, dtype=float))  # (..., 4)
    centres = (np.arange(g) + 0.5) * p  # (G,)
    in_x = (centres >= b[..., 0:1]) & (centres < b[..., 2:3])  # (..., G)
    in_y = (centres >= b[..., 1:2]) & (centres < b[..., 3:4])  # (..., G)
    mask = in_y[..., :, None] & in_x[..., None, :]  # (..., G, G)
    nonempty = (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])
    lonely = nonempty & ~mask.any(axis=(-1, -2))
    if lonely.any():
        cx = np.clip(((b[..., 0] + b[..., 2]) / 2 // p).astype(int), 0, g - 1)
        cy = np.clip(((b[..., 1] + b[..., 3]) / 2 // p).astype(int), 0, g - 1)
        flat, lonely_flat = mask.reshape(-1, g, g), lonely.reshape(-1)
        n = np.nonzero(lonely_flat)[0]
        flat[n, cy.reshape(-1)[n], cx.reshape(-1)[n]] = True
        mask = flat.reshape(mask.shape)
    return mask


