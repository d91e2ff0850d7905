"""Calibration's input and output: recordings (episodes holding a camera's frames and the
arm's qpos), hand marks (CSV), and the result as a params.yaml block (`--write` edits
params.yaml in place, keeping its comments) or as text."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EpisodeError


@dataclass
class Result:
    """What a calibration found, and how well it fits."""

    camera: str
    values: dict  # params.yaml keys under cameras.<camera> -> value
    per_frame_px: list[float]  # mean reprojection error of each frame used, pixels
    frames_used: int
    frames_skipped: int
    warnings: list[str] = field(default_factory=list)

    @property
    def rms_px(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.per_frame_px)))) if self.per_frame_px else float("nan")

    def yaml_block(self) -> str:
        import yaml

        return yaml.safe_dump({"cameras": {self.camera: self.values}}, default_flow_style=None, sort_keys=False)


def rpy_deg(R: np.ndarray) -> list[float]:
    """Inverse of kinematics.rpy_matrix: R = Rz(yaw) Ry(pitch) Rx(roll) -> degrees."""
    pitch = math.asin(max(-1.0, min(1.0, -R[2, 0])))
    roll = math.atan2(R[2, 1], R[2, 2])
    yaw = math.atan2(R[1, 0], R[0, 0])
    return [math.degrees(a) for a in (roll, pitch, yaw)]


def pose_values(T: np.ndarray) -> dict:
    """A pose as params.yaml writes it, checked to be a proper rotation."""
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0.999:
        raise ValueError(f"calibrate: the solution is not a proper rotation (det {np.linalg.det(R):.4f})")
    return {"xyz": [round(float(v), 5) for v in T[:3, 3]], "rpy_deg": [round(v, 4) for v in rpy_deg(R)]}


# --------------------------------------------------------------------------- recordings
def read_recordings(paths: list[Path], camera: str) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """qpos (N, D), frames, and 'file:frame' names of every frame of the given episodes."""
    from ..data.episodes import open_episode

    qs, frames, names = [], [], []
    for p in paths:
        with open_episode(p) as ep:
            q = ep.qpos
            stream = ep.stream(camera, kind="camera")
            for t in range(len(q)):
                frames.append(ep.frame(camera, t, stream=stream))
                names.append(f"{Path(p).name}:{t}")
            qs.append(q)
    if not frames:
        raise EpisodeError("calibrate: the recordings hold no frames")
    return np.concatenate(qs), frames, names


def read_marks(path: Path, camera: str) -> list[tuple[str, int, float, float]]:
    """Rows 'episode,frame,camera,u,v' (a header line allowed) -> this camera's marks."""
    import csv

    rows = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].strip().lower() == "episode":
                continue
            if len(row) != 5:
                raise EpisodeError(f"{path}:{n}: expected episode,frame,camera,u,v, got {row}")
            if row[2].strip() == camera:
                rows.append((row[0].strip(), int(row[1]), float(row[3]), float(row[4])))
    return rows


# --------------------------------------------------------------------------- params.yaml
def write_params(path: Path, result: Result) -> None:
    """Put the result under cameras.<camera> in params.yaml, keeping its comments and
    layout; the file is replaced only by a complete, valid new version."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from ..config import load_params

    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(path.read_text())
    cams = doc.get("cameras") or {}
    if result.camera not in cams:
        raise ConfigError(f"{path}: cameras.{result.camera} is not there; add the camera (mount, width, height, K, pose) "
                          f"first")

    def flow(value):
        if isinstance(value, dict):
            m = CommentedMap((k, flow(v)) for k, v in value.items())
            m.fa.set_flow_style()
            return m
        if isinstance(value, list):
            s = CommentedSeq(flow(v) for v in value)
            s.fa.set_flow_style()
            return s
        return value

    for key, value in result.values.items():
        cams[result.camera][key] = flow(value)
    tmp = path.with_name(path.name + ".calibrate.tmp")
    with open(tmp, "w") as f:
        yaml.dump(doc, f)
    try:
        load_params(tmp)  # never leave a params.yaml that does not load
    except ConfigError:
        tmp.unlink()
        raise
    os.replace(tmp, path)


def describe(r: Result) -> str:
    """What a person reads after a calibration."""
    errs = np.asarray(r.per_frame_px)
    lines = [f"calibrate {r.camera}: {r.frames_used} frames used, {r.frames_skipped} skipped; reprojection error "
             f"mean {errs.mean():.2f} px, worst frame {errs.max():.2f} px (RMS {r.rms_px:.2f} px)",
             "per-frame reprojection error (px): " + " ".join(f"{e:.2f}" for e in errs)]
    lines += [f"warning: {w}" for w in r.warnings]
    lines += ["", "# paste into params.yaml (or rerun with --write):", r.yaml_block()]
    return "\n".join(lines)
