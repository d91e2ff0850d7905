"""Boxes drawn on camera images (preview, TensorBoard, the evaluation report)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = [(255, 40, 40), (40, 255, 40), (60, 160, 255), (255, 220, 0)]


def draw_boxes(img: np.ndarray, boxes: list[tuple[np.ndarray, bool]], width: int = 2) -> Image.Image:
    """boxes: (x0 y0 x1 y1, visible) per sensor; invisible ones are not drawn."""
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for i, (b, vis) in enumerate(boxes):
        if vis:
            corners = [float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1]
            d.rectangle(corners, outline=COLOURS[i % len(COLOURS)], width=width)
    return im
