"""The `geometry` stage: per frame, where each tactile sensor is and which box of each
camera image shows it, written to one Zarr store.

Store layout (rows are global frame indices: frame t of episode e is offsets[e] + t):
  sensor_pose          (N, S, 4, 4) float64   sensor poses in the world
  <camera>/box         (N, S, 4)    float32   x0 y0 x1 y1 in original-image pixels
  <camera>/depth       (N, S)       float32   metres along the optical axis
  <camera>/visible     (N, S)       bool
  <camera>/weight      (N, S)       float32   fraction of the box inside the image
  attrs: sensors, cameras, episodes, offsets, margin_px, limit_violations, complete
Frame-major chunks of 65,536 rows keep the store at a handful of files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from .atomic import atomic_dir
from .config import Params
from .episodes import Episode
from .prepare import Manifest
from .rig import Rig

CHUNK_ROWS = 65536


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> None:
    chunks = (min(chunk_rows, max(1, data.shape[0])), *data.shape[1:])
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
    arr[...] = data


def run_geometry(params: Params, prepare_dir: str | Path, out: str | Path, base_dir: str | Path = ".") -> dict:
    manifest = Manifest.load(prepare_dir)
    rig = Rig(params, base_dir)
    missing = [c for c in manifest.raw["cameras"] if c not in rig.cameras]
    if missing:
        raise ValueError(f"cameras.{missing[0]}: no calibration for camera '{missing[0]}' of the manifest")
    sensors, cameras = list(rig.sensors), list(rig.cameras)
    N, S = manifest.n_frames, len(sensors)
    pose = np.zeros((N, S, 4, 4))
    per_cam = {c: {"box": np.zeros((N, S, 4), np.float32), "depth": np.zeros((N, S), np.float32),
                   "visible": np.zeros((N, S), bool), "weight": np.zeros((N, S), np.float32)} for c in cameras}
    violations = []
    width = rig.qpos_width()
    for e, (ep, start) in enumerate(tqdm(list(zip(manifest.episodes, manifest.offsets)), desc="geometry", unit="ep")):
        path = manifest.path(ep)
        with Episode(path, ep["layout"]) as f:
            qpos = f.qpos
        if qpos.shape[1] < width:
            raise ValueError(f"{path}: /observations/qpos has {qpos.shape[1]} columns; the arms in robot.arms need {width}")
        geo = rig.episode_geometry(qpos, where=f"{path}: /observations/qpos")
        for v in geo.violations:
            msg = f"{path}: {v}"
            if rig.arms[v.arm].cfg.on_limit_violation == "error":
                raise ValueError(msg + " (robot.arms.<arm>.on_limit_violation: error)")
            tqdm.write("warning: " + msg)
            violations.append(msg)
        rows = slice(int(start), int(start) + ep["length"])
        for s, name in enumerate(sensors):
            pose[rows, s] = geo.sensor_pose[name]
            for c in cameras:
                b = geo.boxes[c][name]
                per_cam[c]["box"][rows, s] = b.box
                per_cam[c]["depth"][rows, s] = b.depth
                per_cam[c]["visible"][rows, s] = b.visible
                per_cam[c]["weight"][rows, s] = b.weight
    with atomic_dir(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        write_array(root, "sensor_pose", pose)
        for c in cameras:
            g = root.create_group(c)
            for k, v in per_cam[c].items():
                write_array(g, k, v)
        summary = {
            "sensors": sensors, "cameras": cameras,
            "camera_sizes": {c: [rig.cameras[c].width, rig.cameras[c].height] for c in cameras},
            "episodes": [e["id"] for e in manifest.episodes], "offsets": manifest.offsets.tolist(),
            "margin_px": params.geometry.margin_px, "limit_violations": violations,
            # what later stages need to know about the rig, so they need not read its params
            "camera_mounts": {c: rig.cameras[c].mount for c in cameras},
            "sensor_arms": {s: rig.sensors[s].arm for s in sensors},
            "angle_columns": sorted(i for a in rig.arms.values() for i in range(a.cfg.qpos_start, a.cfg.qpos_start + a.n_joints)),
            "visible_fraction": {c: per_cam[c]["visible"].mean(axis=0).round(4).tolist() for c in cameras},
        }
        root.attrs.update({**summary, "complete": True})
    return summary


class GeometryStore:
    """Read side of geometry.zarr, whole arrays in memory (they are small)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: geometry store not found; run `dvc repro geometry`")
        root = zarr.open_group(str(path), mode="r")
        self.attrs = dict(root.attrs)
        if not self.attrs.get("complete"):
            raise ValueError(f"{path}: geometry store is incomplete; rerun `dvc repro geometry`")
        self.sensors: list[str] = self.attrs["sensors"]
        self.cameras: list[str] = self.attrs["cameras"]
        self.sensor_pose = root["sensor_pose"][...]
        self.cam = {c: {k: root[f"{c}/{k}"][...] for k in ("box", "depth", "visible", "weight")} for c in self.cameras}
