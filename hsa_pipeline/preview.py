"""`hsa preview`: draw the sensor boxes the rig computes onto real frames, so a user can
check calibration by eye before training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .config import Params
from .episodes import Episode
from .rig import Rig

COLOURS = [(255, 40, 40), (40, 255, 40), (60, 160, 255), (255, 220, 0)]


def draw_boxes(img: np.ndarray, boxes: list[tuple[np.ndarray, bool]], width: int = 2) -> Image.Image:
    """boxes: (x0 y0 x1 y1, visible) per sensor; invisible ones are not drawn."""
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for i, (b, vis) in enumerate(boxes):
        if vis:
            d.rectangle([float(b[0]), float(b[1]), float(b[2]) - 1, float(b[3]) - 1], outline=COLOURS[i % len(COLOURS)], width=width)
    return im


def run_preview(params: Params, episode: Path, out_dir: Path, frames: int = 6) -> list[Path]:
    """Write one PNG per (camera, frame) with the boxes drawn, plus contact_sheet.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rig = Rig(params)
    written = []
    with Episode(episode, params.data.layout) as ep:
        qpos = ep.qpos
        geo = rig.episode_geometry(qpos, where=f"{episode}: /observations/qpos")
        ts = np.linspace(0, len(qpos) - 1, frames).round().astype(int)
        rows = []
        for cam in params.data.cameras:
            if cam not in rig.cameras:
                raise ValueError(f"cameras.{cam}: no calibration for camera '{cam}'")
            tiles = []
            for t in ts:
                img = ep.frame(cam, int(t))
                boxes = [(geo.boxes[cam][s].box[t], bool(geo.boxes[cam][s].visible[t])) for s in rig.sensors]
                im = draw_boxes(img, boxes)
                path = out_dir / f"{episode.stem}_{cam}_{t:05d}.png"
                im.save(path)
                written.append(path)
                tiles.append(im.resize((256, round(256 * im.height / im.width))))
            h = max(t.height for t in tiles)
            row = Image.new("RGB", (256 * len(tiles), h))
            for i, tile in enumerate(tiles):
                row.paste(tile, (256 * i, 0))
            rows.append(row)
        for name in params.data.tactile:
            tiles = [Image.fromarray(ep.frame(name, int(t))).resize((128, 128)) for t in ts]
            row = Image.new("RGB", (256 * len(tiles), 128))
            for i, tile in enumerate(tiles):
                row.paste(tile, (256 * i + 64, 0))
            rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (30, 30, 30))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    path = out_dir / "contact_sheet.png"
    sheet.save(path)
    written.append(path)
    return written
