"""`hsa calibrate`: camera intrinsics and poses from recordings, the way a robotics lab
calibrates (OpenCV), and a check of the sensor boxes that needs no board.

- intrinsics: a ChArUco board waved in front of the camera -> K, distortion, RMS error;
- world-camera (third-person): a ChArUco board on the flange while the arm moves ->
  the camera's pose in the world (hand-eye, eye-to-hand form: the board's mount on the
  flange need not be known), or, without a board, the sensor pad's centre marked by hand
  in >= 6 frames -> the pose by PnP with the FK-known 3D points (RANSAC, then refined);
- wrist-camera (on a flange): a ChArUco board lying on the table while the arm moves ->
  the camera's pose in the flange frame (cv2.calibrateHandEye, eye-in-hand).

Every pose is refined by least squares on the reprojection of every board corner in every
frame, frames far off (outliers) are dropped, and the result comes with per-frame
reprojection errors, a proper-rotation check, and warnings when the recording cannot pin
the solution down (few frames, little rotation, rotations about one axis).
`--check` compares, per camera, how the image changes at contact inside the box and
outside it: a box that sits on the sensor sees the change; one that misses does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, EpisodeError
from .board import BoardSpec
from .calibration_io import Result, read_marks, read_recordings
from .calibration_solvers import intrinsics, world_camera, world_camera_from_marks, wrist_camera

# --------------------------------------------------------------------------- the check
OK_RATIO, DOUBT_RATIO = 2.0, 1.3


def box_check(data, robot, sensors, cameras, margin_px: float, max_episodes: int = 10) -> dict[str, dict]:
    """Per camera: how much more the image changes INSIDE the sensor's box than outside it
    when contact starts (the frame before contact -> the first contact frame). The pad
    deforms and what it presses comes into view where the sensor is, so a box on the
    sensor sees the change; a box that misses it sees background. Needs no board."""
    from ..data.contact import THUMB, runs, start_look, thumbnail, trace
    from ..data.episodes import episode_files, open_episode, resolve_layout
    from ..data.lerobot import stream_mapping
    from .cameras import check_recorded_size
    from .rig import Rig

    rig = Rig(robot, sensors, cameras, margin_px)
    layout = resolve_layout(data.episodes_dir, data.layout)
    ratios: dict[str, list[float]] = {c: [] for c in data.cameras}
    for path in episode_files(data.episodes_dir, layout)[:max_episodes]:
        with open_episode(path, layout, stream_mapping(data)) as ep:
            for cam in data.cameras:
                h, w = ep.frame(cam, 0).shape[:2]
                check_recorded_size(cam, cameras[cam], w, h, f"{path} records {w}x{h} frames")
            qpos = ep.qpos
            geo = rig.episode_geometry(qpos, where=f"{path}: qpos")
            thumbs = {s: np.stack([thumbnail(ep.frame(s, t, draft=THUMB)) for t in range(len(qpos))]) for s in data.tactile}
            for s in data.tactile:  # contact onsets read from the touch, as prepare reads them (data.contact)
                touch = trace(thumbs[s], start_look(thumbs[s], data.contact), data.contact).contact
                onsets = [start for start, _ in runs(touch) if start > 0]
                for cam in data.cameras:
                    for t in onsets:
                        box = geo.boxes[cam][s]
                        if not box.visible[t]:
                            continue
                        diff = np.abs(ep.frame(cam, t).astype(float) - ep.frame(cam, t - 1)).mean(-1)
                        x0, y0, x1, y1 = np.round(box.box[t]).astype(int)
                        inside = np.zeros(diff.shape, bool)
                        inside[max(y0, 0):y1, max(x0, 0):x1] = True
                        if inside.sum() == 0 or (~inside).sum() == 0:
                            continue
                        ratios[cam].append(float(diff[inside].mean() / max(diff[~inside].mean(), 1e-6)))
    out = {}
    for cam, r in ratios.items():
        if not r:
            out[cam] = {"ratio": None, "onsets": 0, "verdict": "no contact onsets with the sensor in view: cannot tell"}
            continue
        med = float(np.median(r))
        verdict = ("ok: the box sits on the sensor" if med >= OK_RATIO else
                   "doubtful: the box may be off; look at `hsa preview`" if med >= DOUBT_RATIO else
                   "the box misses the sensor: recalibrate this camera (pose, mount or K)")
        out[cam] = {"ratio": round(med, 2), "onsets": len(r), "verdict": verdict}
    return out


# --------------------------------------------------------------------------- entry points (hsa calibrate)
def arm_of_camera(p, camera: str, arm: str | None, key: str) -> str:
    cam = p.cameras[camera]
    if cam.mount != "world":
        return cam.mount
    if arm:
        if arm not in p.robot.arms:
            raise ConfigError(f"--arm: '{arm}' is not an arm; arms: {', '.join(p.robot.arms)}")
        return arm
    if len(p.robot.arms) == 1:
        return next(iter(p.robot.arms))
    raise ConfigError(f"{key}: the rig has several arms ({', '.join(p.robot.arms)}); say which one moved with --arm")


def run(p, method: str, camera: str, episodes: list[Path], board: str, arm: str | None = None,
        sensor: str | None = None, marks: Path | None = None) -> Result:
    """`hsa calibrate <method>`: intrinsics | world-camera | wrist-camera."""
    from .rig import Rig

    if camera not in p.cameras:
        raise ConfigError(f"cameras.{camera}: no such camera in params.yaml; cameras: {', '.join(p.cameras)}")
    rig = Rig(p.robot, p.sensors, p.cameras)
    cam = rig.cameras[camera]
    spec = BoardSpec.parse(board)
    if method == "intrinsics":
        _, frames, _ = read_recordings(episodes, camera)
        return intrinsics(frames, spec, camera)
    if method == "wrist-camera" and cam.mount == "world":
        raise ConfigError(f"cameras.{camera}.mount: 'world'; wrist-camera calibrates a camera on a flange "
                          f"(use world-camera)")
    if method == "world-camera" and cam.mount != "world":
        raise ConfigError(f"cameras.{camera}.mount: '{cam.mount}'; world-camera calibrates a fixed camera "
                          f"(use wrist-camera)")
    arm_name = arm_of_camera(p, camera, arm, "--arm")
    a = rig.arms[arm_name]
    cols = slice(a.cfg.qpos_start, a.cfg.qpos_start + a.n_joints)

    def flange(q: np.ndarray) -> np.ndarray:
        return a.flange_poses(np.asarray(q)[None, cols])[0]

    if method == "world-camera" and marks is not None:
        return _from_marks(p, rig, camera, marks, sensor)
    qpos, frames, _ = read_recordings(episodes, camera)
    if method == "world-camera":
        return world_camera(frames, qpos, flange, cam, spec, camera)
    return wrist_camera(frames, qpos, flange, cam, spec, camera)


def _from_marks(p, rig, camera: str, marks: Path, sensor: str | None) -> Result:
    from ..data.episodes import open_episode

    if sensor is None:
        if len(rig.sensors) != 1:
            raise ConfigError(f"--sensor: the rig has several sensors ({', '.join(rig.sensors)}); say whose pad was marked")
        sensor = next(iter(rig.sensors))
    rows = read_marks(marks, camera)
    cache: dict[str, np.ndarray] = {}

    def centre(episode: str, t: int) -> np.ndarray:
        if episode not in cache:
            path = Path(p.data.episodes_dir) / episode
            path = path if path.exists() else path.with_suffix(".hdf5")
            if not path.exists():
                raise EpisodeError(f"{marks}: episode '{episode}' is not in data.episodes_dir ({p.data.episodes_dir})")
            with open_episode(path) as ep:
                cache[episode] = rig.episode_geometry(ep.qpos, where=f"{path}: qpos").sensor_pose[sensor][:, :3, 3]
        if not 0 <= t < len(cache[episode]):
            raise EpisodeError(f"{marks}: frame {t} of '{episode}' outside 0..{len(cache[episode]) - 1}")
        return cache[episode][t]

    return world_camera_from_marks(rows, centre, rig.cameras[camera], camera, str(marks))
