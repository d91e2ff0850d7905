"""The `geometry` stage: per frame, where each tactile sensor is and which box of each
camera image shows it, written to one Zarr store.

Store layout (rows are global frame indices: frame t of episode e is offsets[e] + t):
  sensor_pose          (N, S, 4, 4) float64   sensor poses in the world
  contact              (N, S)       bool      each sensor in contact: from its tactile images
                                              (prepare's contact.json) or, for a sensor with
                                              `contact: kinematics`, from its height
  next_row             (N, S)       int64     the row where that sensor's touch next changes
                                              (-1: never again): what a next-contact positive shows
  <camera>/box         (N, S, 4)    float32   x0 y0 x1 y1 in original-image pixels
  <camera>/depth       (N, S)       float32   metres along the optical axis
  <camera>/visible     (N, S)       bool
  <camera>/weight      (N, S)       float32   fraction of the box inside the image
  <camera>/next_box, next_visible, next_weight   the same for where the sensor's touch
                                     next changes (contact.next_change: where its next
                                     contact begins, or while touching, where it ends),
                                     projected into the camera as it is now
  attrs: stores.GeometryInfo (sensors, cameras, camera sizes and mounts, sensor arms and
         contact sources, qpos column names, offsets, fingerprints, schema_version), complete
`fingerprint` is the sha256 of every array and attribute above: what training keys its
resume decision on. Frame-major chunks of 65,536 rows keep the store at a handful of files.
Read it with stores.GeometryStore.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from ..config import CameraConfig, GeometryConfig, RobotConfig, SensorConfig
from ..data.manifest import SCHEMA_VERSIONS, Manifest, load_contact
from ..errors import ConfigError, EpisodeError, StoreError
from ..pipeline.atomic import atomic_dir
from ..pipeline.hashing import sha256_json
from .cameras import check_recorded_size
from .rig import Rig

CHUNK_ROWS = 65536

# Joint-limit warnings printed one per episode before they are summed per joint: a dataset
# whose every episode passes a limit (a robot model's limits narrower than the rig's) would
# otherwise print a screenful.
SHOWN_VIOLATIONS = 3


def limit_totals(violations: list) -> list[str]:
    """One line per (arm, joint) over every episode's kinematics.LimitViolation."""
    lines = []
    for arm, joint in sorted({(v.arm, v.joint) for v in violations}):
        mine = [v for v in violations if (v.arm, v.joint) == (arm, joint)]
        lines.append(f"arm '{arm}' joint {joint + 1}: outside the limits in {len(mine)} episodes "
                     f"({sum(v.frames for v in mine)} frames in all, worst {max(v.worst_deg for v in mine):.1f} deg "
                     "past the limit)")
    return lines


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> None:
    chunks = (min(chunk_rows, max(1, data.shape[0])), *data.shape[1:])
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
    arr[...] = data


def check_frame_sizes(manifest: Manifest, cameras: dict[str, CameraConfig], prepare_dir: Path) -> None:
    """Boxes are computed in the calibrated image size and mapped onto tokens of the
    recorded size: the two must be the same, or every box lands on the wrong tokens."""
    for name, cam in manifest.info.cameras.items():
        h, w = cam.shape[:2]
        check_recorded_size(name, cameras[name], w, h, f"the episodes record {w}x{h} frames "
                                                       f"({prepare_dir / 'episodes.json'})")


def touch_contact(prepare_dir: Path, manifest: Manifest, rig: Rig) -> tuple[dict, dict[str, str]]:
    """Prepare's contact flags (contact.json) -> episode id -> sensor -> (T,) bool, for the
    sensors whose contact comes from touch; and each sensor's contact source."""
    recorded = load_contact(prepare_dir)
    sources, out = {}, {e.id: {} for e in manifest.episodes}
    for name, sensor in rig.sensors.items():
        if sensor.contact_source == "kinematics":
            sources[name] = "kinematics"
        elif name not in recorded:
            sources[name] = "none"  # no tactile stream of this name in the episodes: never in contact
        else:
            sources[name] = "touch"
            for e in manifest.episodes:
                flags = recorded[name].get(e.id, {}).get("contact")
                if flags is None or len(flags) != e.length:
                    raise StoreError(f"{prepare_dir / 'contact.json'}: sensor '{name}' episode '{e.id}' has "
                                     f"{'no' if flags is None else len(flags)} contact flags for {e.length} frames; "
                                     f"rerun `dvc repro prepare`")
                out[e.id][name] = np.asarray(flags, bool)
    return out, sources


def run_geometry(robot: RobotConfig, sensors: dict[str, SensorConfig], cameras: dict[str, CameraConfig],
                 cfg: GeometryConfig, prepare_dir: str | Path, out: str | Path, base_dir: str | Path = ".") -> dict:
    """Sensor poses, contact and boxes of every frame of the episodes in `prepare_dir` -> `out`."""
    manifest = Manifest.load(prepare_dir)
    rig = Rig(robot, sensors, cameras, cfg.margin_px, base_dir)
    missing = [c for c in manifest.info.cameras if c not in rig.cameras]
    if missing:
        raise ConfigError(f"cameras.{missing[0]}: no calibration for camera '{missing[0]}' of the episodes")
    check_frame_sizes(manifest, cameras, Path(prepare_dir))
    touch, sources = touch_contact(Path(prepare_dir), manifest, rig)
    sensor_names, camera_names = list(rig.sensors), list(rig.cameras)
    N, S = manifest.n_frames, len(sensor_names)
    pose = np.zeros((N, S, 4, 4))
    contact = np.zeros((N, S), bool)
    next_row = np.full((N, S), -1, np.int64)
    per_cam = {c: {"box": np.zeros((N, S, 4), np.float32), "depth": np.zeros((N, S), np.float32),
                   "visible": np.zeros((N, S), bool), "weight": np.zeros((N, S), np.float32),
                   "next_box": np.zeros((N, S, 4), np.float32), "next_visible": np.zeros((N, S), bool),
                   "next_weight": np.zeros((N, S), np.float32)} for c in camera_names}
    violations, by_joint = [], []  # every episode's line (kept in the store), and the violations themselves
    width = rig.qpos_width()
    for ep, start in tqdm(list(zip(manifest.episodes, manifest.offsets[:-1], strict=True)), desc="geometry", unit="ep"):
        path = manifest.path(ep)
        with manifest.open(ep) as f:
            qpos = f.qpos
        if qpos.shape[1] < width:
            raise EpisodeError(f"{path}: /observations/qpos has {qpos.shape[1]} columns; the arms in robot.arms "
                               f"need {width}")
        geo = rig.episode_geometry(qpos, where=f"{path}: /observations/qpos", touch=touch[ep.id],
                                   press_tolerance_m=cfg.press_tolerance_m)
        for v in geo.violations:
            msg = f"{path}: {v}"
            if rig.arms[v.arm].cfg.on_limit_violation == "error":
                raise EpisodeError(msg + f" (robot.arms.{v.arm}.on_limit_violation: error)")
            if len(violations) < SHOWN_VIOLATIONS:
                tqdm.write("warning: " + msg, file=sys.stderr)
            violations.append(msg)
            by_joint.append(v)
        rows = slice(int(start), int(start) + ep.length)
        for s, name in enumerate(sensor_names):
            pose[rows, s] = geo.sensor_pose[name]
            contact[rows, s] = geo.contact[name]
            target = geo.next_frame[name]
            next_row[rows, s] = np.where(target >= 0, start + target, -1)
            for c in camera_names:
                b = geo.boxes[c][name]
                per_cam[c]["box"][rows, s] = b.box
                per_cam[c]["depth"][rows, s] = b.depth
                per_cam[c]["visible"][rows, s] = b.visible
                per_cam[c]["weight"][rows, s] = b.weight
                ahead = geo.next_boxes[c][name]
                per_cam[c]["next_box"][rows, s] = ahead.box
                per_cam[c]["next_visible"][rows, s] = ahead.visible
                per_cam[c]["next_weight"][rows, s] = ahead.weight
    if len(violations) > SHOWN_VIOLATIONS:
        for line in limit_totals(by_joint):
            print(f"warning: {line} (the first {SHOWN_VIOLATIONS} episodes above; every episode's line in the "
                  "geometry store's limit_violations)", file=sys.stderr)
    summary = {
        "sensors": sensor_names, "cameras": camera_names,
        "camera_sizes": {c: [rig.cameras[c].width, rig.cameras[c].height] for c in camera_names},
        "episodes": [e.id for e in manifest.episodes], "offsets": manifest.offsets.tolist(),
        "margin_px": cfg.margin_px, "limit_violations": violations,
        # what later stages need to know about the rig, so they need not read its params
        "camera_mounts": {c: rig.cameras[c].mount for c in camera_names},
        "sensor_arms": {s: rig.sensors[s].arm for s in sensor_names},
        "contact_sources": sources,
        "contact_fraction": contact.mean(axis=0).round(4).tolist(),
        "angle_columns": sorted(i for a in rig.arms.values()
                                for i in range(a.cfg.qpos_start, a.cfg.qpos_start + a.n_joints)),
        "column_names": rig.column_names(manifest.info.qpos_dim),
        "visible_fraction": {c: per_cam[c]["visible"].mean(axis=0).round(4).tolist() for c in camera_names},
        "episodes_fingerprint": manifest.fingerprint,
        "schema_version": SCHEMA_VERSIONS["geometry"],
    }
    summary["fingerprint"] = content_fingerprint({"sensor_pose": pose, "contact": contact, "next_row": next_row},
                                                 per_cam, summary)
    with atomic_dir(out) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        write_array(root, "sensor_pose", pose)
        write_array(root, "contact", contact)
        write_array(root, "next_row", next_row)
        for c in camera_names:
            g = root.create_group(c)
            for k, v in per_cam[c].items():
                write_array(g, k, v)
        root.attrs.update({**summary, "complete": True})
    return summary


def content_fingerprint(arrays: dict[str, np.ndarray], per_cam: dict[str, dict[str, np.ndarray]], attrs: dict) -> str:
    """sha256 of every array and attribute: equal fingerprints mean equal stores."""
    h = hashlib.sha256(sha256_json(attrs).encode())
    for k in sorted(arrays):
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    for c in sorted(per_cam):
        for k in sorted(per_cam[c]):
            h.update(np.ascontiguousarray(per_cam[c][k]).tobytes())
    return h.hexdigest()
