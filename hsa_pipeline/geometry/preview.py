"""`hsa preview`: draw the sensor boxes the rig computes onto real frames, so a user can
check calibration by eye before training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..config import CameraConfig, DataConfig, RobotConfig, SensorConfig
from ..data.episodes import open_episode, resolve_layout
from ..data.lerobot import episode_name, open_dataset, stream_mapping
from ..errors import ConfigError, EpisodeError
from .draw import draw_boxes
from .rig import Rig


def resolve_episode(path: Path, index: int, layout: str) -> tuple[Path, str]:
    """What `hsa preview` was given -> (the episode path open_episode takes, its layout): an
    HDF5 file, or a LeRobot dataset's root with the episode index."""
    path = Path(path)
    if path.is_dir():
        if resolve_layout(path, layout) != "lerobot":
            raise EpisodeError(f"{path}: a directory, but not a LeRobot dataset (no meta/info.json); give an "
                               f"episode .hdf5 file, or a LeRobot dataset's root with --episode N")
        available = sorted(open_dataset(str(path.resolve())).episodes)
        if index not in available:
            raise EpisodeError(f"{path}: no episode {index} in this LeRobot dataset (it has {len(available)}: "
                               f"{available[0]}..{available[-1]})")
        return path / episode_name(index), "lerobot"
    if not path.is_file():
        raise EpisodeError(f"{path}: no such episode file")
    return path, resolve_layout(path.parent, layout)


def run_preview(data: DataConfig, robot: RobotConfig, sensors: dict[str, SensorConfig],
                cameras: dict[str, CameraConfig], margin_px: float, episode: Path, out_dir: Path,
                frames: int = 6, index: int = 0) -> list[Path]:
    """Write one PNG per (camera, frame) with the boxes drawn, plus contact_sheet.png.
    `episode`: an HDF5 file, or a LeRobot dataset's root (then `index` picks the episode)."""
    episode, layout = resolve_episode(episode, index, data.layout)
    out_dir.mkdir(parents=True, exist_ok=True)
    rig = Rig(robot, sensors, cameras, margin_px)
    written = []
    with open_episode(episode, layout, stream_mapping(data)) as ep:
        qpos = ep.qpos
        geo = rig.episode_geometry(qpos, where=f"{episode}: /observations/qpos")
        ts = np.linspace(0, len(qpos) - 1, frames).round().astype(int)
        rows = []
        for cam in data.cameras:
            if cam not in rig.cameras:
                raise ConfigError(f"cameras.{cam}: no calibration for camera '{cam}'")
            tiles = []
            for t in ts:
                img = ep.frame(cam, int(t))
                boxes = [(geo.boxes[cam][s].box[t], bool(geo.boxes[cam][s].visible[t])) for s in rig.sensors]
                im = draw_boxes(img, boxes, width=max(2, round(img.shape[1] / 128)))  # 2+ px on the contact sheet
                path = out_dir / f"{episode.stem}_{cam}_{t:05d}.png"
                im.save(path)
                written.append(path)
                tiles.append(im.resize((256, round(256 * im.height / im.width))))
            h = max(t.height for t in tiles)
            row = Image.new("RGB", (256 * len(tiles), h))
            for i, tile in enumerate(tiles):
                row.paste(tile, (256 * i, 0))
            rows.append(row)
        for name in data.tactile:
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
