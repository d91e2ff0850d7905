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

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EpisodeError
from .board import BoardSpec
from .kinematics import invert_rigid, pose_matrix

MIN_CORNERS = 6  # a frame needs this many ChArUco corners to count
MIN_FRAMES = 6


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


@dataclass
class Detection:
    index: int  # frame index in the recording
    obj: np.ndarray  # (N, 3) board points (board frame)
    img: np.ndarray  # (N, 2) pixels


def detect(frames: list[np.ndarray], spec: BoardSpec) -> tuple[list[Detection], int]:
    """ChArUco corners in every frame; frames with fewer than MIN_CORNERS are skipped."""
    import cv2

    board = spec.board()
    detector = cv2.aruco.CharucoDetector(board)
    found, skipped = [], 0
    for i, img in enumerate(frames):
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        corners, ids, _, _ = detector.detectBoard(gray)
        if ids is None or len(ids) < MIN_CORNERS:
            skipped += 1
            continue
        obj, pts = board.matchImagePoints(corners, ids)
        found.append(Detection(i, obj.reshape(-1, 3).astype(float), pts.reshape(-1, 2).astype(float)))
    return found, skipped


def _need(n: int, what: str, skipped: int) -> None:
    if n < MIN_FRAMES:
        raise EpisodeError(f"calibrate: only {n} usable frames ({skipped} without the board or with under "
                           f"{MIN_CORNERS} corners); {what} needs at least {MIN_FRAMES}. Check the board definition "
                           f"(--board) against the printed board, and record more views")


# --------------------------------------------------------------------------- geometry helpers
def rt_to_T(rvec, tvec) -> np.ndarray:
    import cv2

    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, float).reshape(3))[0]
    T[:3, 3] = np.asarray(tvec, float).reshape(3)
    return T


def T_to_rt(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    return cv2.Rodrigues(T[:3, :3])[0].reshape(3), T[:3, 3].copy()


def rpy_deg(R: np.ndarray) -> list[float]:
    """Inverse of kinematics.rpy_matrix: R = Rz(yaw) Ry(pitch) Rx(roll) -> degrees."""
    pitch = math.asin(max(-1.0, min(1.0, -R[2, 0])))
    roll = math.atan2(R[2, 1], R[2, 2])
    yaw = math.atan2(R[1, 0], R[0, 0])
    return [math.degrees(a) for a in (roll, pitch, yaw)]


def pose_error(found: dict, truth) -> tuple[float, float]:
    """(position error in m, rotation error in degrees) between a found pose (params.yaml's
    {xyz, rpy_deg}) and a config Pose: how far a calibration is from the truth."""
    A = pose_matrix(type(truth)(xyz=found["xyz"], rpy_deg=found["rpy_deg"]))
    B = pose_matrix(truth)
    R = A[:3, :3].T @ B[:3, :3]
    return float(np.linalg.norm(A[:3, 3] - B[:3, 3])), math.degrees(math.acos(min(1.0, (np.trace(R) - 1) / 2)))


def pose_values(T: np.ndarray) -> dict:
    """A pose as params.yaml writes it, checked to be a proper rotation."""
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0.999:
        raise ValueError(f"calibrate: the solution is not a proper rotation (det {np.linalg.det(R):.4f})")
    return {"xyz": [round(float(v), 5) for v in T[:3, 3]], "rpy_deg": [round(v, 4) for v in rpy_deg(R)]}


def project(K: np.ndarray, dist: np.ndarray, T_cam_x: np.ndarray, pts: np.ndarray) -> np.ndarray:
    import cv2

    r, t = T_to_rt(T_cam_x)
    return cv2.projectPoints(pts.reshape(-1, 1, 3), r, t, K, dist)[0].reshape(-1, 2)


def conditioning(motions: list[np.ndarray], n: int) -> list[str]:
    """Warnings when arm motions cannot pin a hand-eye solution down."""
    warn = []
    if n < 10:
        warn.append(f"only {n} frames: record 10 or more views for a stable solution")
    axes, angles = [], []
    for i in range(len(motions)):
        for j in range(i + 1, len(motions)):
            Rr = motions[i][:3, :3].T @ motions[j][:3, :3]
            angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(Rr) - 1) / 2))))
            angles.append(angle)
            if angle > 2:
                axis = np.array([Rr[2, 1] - Rr[1, 2], Rr[0, 2] - Rr[2, 0], Rr[1, 0] - Rr[0, 1]])
                axes.append(axis / np.linalg.norm(axis))
    if not angles or max(angles) < 15:
        warn.append(f"little rotation between views (at most {max(angles, default=0):.0f} deg): turn the wrist more")
    elif len(axes) >= 2 and np.linalg.svd(np.array(axes), compute_uv=False)[1] < 0.2:
        warn.append("the arm rotated about nearly one axis: rotate about two different axes")
    return warn


def _refine(residual, x0: np.ndarray) -> np.ndarray:
    from scipy.optimize import least_squares

    return least_squares(residual, x0, loss="soft_l1", f_scale=1.0).x


def _pack(*Ts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.concatenate(T_to_rt(T)) for T in Ts])


def _unpack(x: np.ndarray, k: int) -> list[np.ndarray]:
    return [rt_to_T(x[6 * i: 6 * i + 3], x[6 * i + 3: 6 * i + 6]) for i in range(k)]


# --------------------------------------------------------------------------- intrinsics
def intrinsics(frames: list[np.ndarray], spec: BoardSpec, camera: str) -> Result:
    import cv2

    dets, skipped = detect(frames, spec)
    _need(len(dets), "intrinsics", skipped)
    h, w = frames[0].shape[:2]
    objs = [d.obj.astype(np.float32) for d in dets]
    imgs = [d.img.astype(np.float32) for d in dets]
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(objs, imgs, (w, h), None, None)
    per_frame = [float(np.linalg.norm(cv2.projectPoints(o, r, t, K, dist)[0].reshape(-1, 2) - i, axis=1).mean())
                 for o, i, r, t in zip(objs, imgs, rvecs, tvecs, strict=True)]
    warn = [] if len(dets) >= 10 else [f"only {len(dets)} views: record 10 or more, tilted in several directions"]
    values = {"width": w, "height": h, "K": [[round(float(v), 3) for v in row] for row in K],
              "distortion": [round(float(v), 6) for v in dist.reshape(-1)[:5]]}
    return Result(camera, values, per_frame, len(dets), skipped, warn)


def _camera_model(cam) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(cam.K, float), np.asarray(cam.distortion, float)


def _board_poses(dets: list[Detection], K, dist) -> list[np.ndarray]:
    import cv2

    poses = []
    for d in dets:
        ok, r, t = cv2.solvePnP(d.obj, d.img, K, dist, flags=cv2.SOLVEPNP_IPPE)
        r, t = cv2.solvePnPRefineLM(d.obj, d.img, K, dist, r, t)
        poses.append(rt_to_T(r, t))
    return poses


def _drop_outliers(errors: np.ndarray, limit_px: float = 3.0) -> np.ndarray:
    """Frames whose error is far above the rest (a bad detection, a stale joint reading)."""
    med = float(np.median(errors))
    return errors <= max(limit_px, 3 * med)


# --------------------------------------------------------------------------- world camera
def world_camera(frames, qpos, flange_pose_fn, cam, spec: BoardSpec, camera: str) -> Result:
    """Camera pose in the world from a board on the flange (eye-to-hand)."""
    import cv2

    K, dist = _camera_model(cam)
    dets, skipped = detect(frames, spec)
    _need(len(dets), "a world-camera calibration", skipped)
    flanges = [flange_pose_fn(qpos[d.index]) for d in dets]  # T_world_flange
    boards = _board_poses(dets, K, dist)  # T_cam_board
    inv = [invert_rigid(F) for F in flanges]
    R, t = cv2.calibrateHandEye([T[:3, :3] for T in inv], [T[:3, 3] for T in inv],
                                [B[:3, :3] for B in boards], [B[:3, 3] for B in boards], method=cv2.CALIB_HAND_EYE_PARK)
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R, t.reshape(3)  # T_world_cam
    Y = invert_rigid(flanges[0]) @ X @ boards[0]  # T_flange_board

    def residual(x, keep):
        Xc, Yc = _unpack(x, 2)
        return np.concatenate([(project(K, dist, invert_rigid(Xc) @ flanges[i] @ Yc, dets[i].obj) - dets[i].img).ravel()
                               for i in keep])

    keep = list(range(len(dets)))
    x = _refine(lambda v: residual(v, keep), _pack(X, Y))
    X, Y = _unpack(x, 2)
    errors = np.array([np.linalg.norm(project(K, dist, invert_rigid(X) @ flanges[i] @ Y, dets[i].obj) - dets[i].img,
                                      axis=1).mean() for i in range(len(dets))])
    good = _drop_outliers(errors)
    if not good.all():
        keep = list(np.nonzero(good)[0])
        X, Y = _unpack(_refine(lambda v: residual(v, keep), _pack(X, Y)), 2)
        errors = np.array([np.linalg.norm(project(K, dist, invert_rigid(X) @ flanges[i] @ Y, dets[i].obj)
                                          - dets[i].img, axis=1).mean() for i in keep])
    warn = conditioning(flanges, len(keep))
    if len(keep) < len(dets):
        warn.append(f"{len(dets) - len(keep)} frames dropped as outliers (reprojection far above the others)")
    return Result(camera, {"pose": pose_values(X)}, errors.tolist(), len(keep), skipped + len(dets) - len(keep), warn)


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


def world_camera_from_marks(marks, sensor_centre_fn, cam, camera: str, where: str) -> Result:
    """Camera pose in the world from hand-marked sensor centres (PnP + RANSAC + LM)."""
    import cv2

    K, dist = _camera_model(cam)
    if len(marks) < MIN_FRAMES:
        raise EpisodeError(f"{where}: {len(marks)} marks for camera '{camera}'; PnP needs at least {MIN_FRAMES}")
    outside = [m for m in marks if not (0 <= m[2] < cam.width and 0 <= m[3] < cam.height)]
    if outside:
        e, t, u, v = outside[0]
        raise EpisodeError(f"{where}: mark ({u}, {v}) of {e} frame {t} lies outside the {cam.width}x{cam.height} image")
    pts = np.array([sensor_centre_fn(e, t) for e, t, _, _ in marks])
    img = np.array([[u, v] for _, _, u, v in marks])
    ok, r, t, inliers = cv2.solvePnPRansac(pts, img, K, dist, reprojectionError=8.0, iterationsCount=500,
                                          flags=cv2.SOLVEPNP_SQPNP)
    if not ok or inliers is None or len(inliers) < MIN_FRAMES:
        n = 0 if inliers is None else len(inliers)
        raise EpisodeError(f"{where}: the marks do not fit one camera pose (RANSAC found {n} consistent marks); check "
                           f"the camera name and the frame numbers")
    idx = inliers.reshape(-1)
    r, t = cv2.solvePnPRefineLM(pts[idx], img[idx], K, dist, r, t)
    T_cam_world = rt_to_T(r, t)
    errors = np.linalg.norm(project(K, dist, T_cam_world, pts[idx]) - img[idx], axis=1)
    warn = [] if len(idx) >= 10 else [f"only {len(idx)} marks: 10 or more, spread over the image, pin the pose better"]
    if len(idx) < len(marks):
        warn.append(f"{len(marks) - len(idx)} marks dropped as outliers")
    return Result(camera, {"pose": pose_values(invert_rigid(T_cam_world))}, errors.tolist(), len(idx),
                  len(marks) - len(idx), warn)


# --------------------------------------------------------------------------- wrist camera
def wrist_camera(frames, qpos, flange_pose_fn, cam, spec: BoardSpec, camera: str) -> Result:
    """Camera pose in the flange frame from a board fixed in the world (eye-in-hand)."""
    import cv2

    K, dist = _camera_model(cam)
    dets, skipped = detect(frames, spec)
    _need(len(dets), "a hand-eye calibration", skipped)
    flanges = [flange_pose_fn(qpos[d.index]) for d in dets]
    boards = _board_poses(dets, K, dist)
    R, t = cv2.calibrateHandEye([F[:3, :3] for F in flanges], [F[:3, 3] for F in flanges],
                                [B[:3, :3] for B in boards], [B[:3, 3] for B in boards], method=cv2.CALIB_HAND_EYE_PARK)
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R, t.reshape(3)  # T_flange_cam
    W = flanges[0] @ X @ boards[0]  # T_world_board

    def predicted(Xc, Wc, i):
        return invert_rigid(Xc) @ invert_rigid(flanges[i]) @ Wc

    def residual(x, keep):
        Xc, Wc = _unpack(x, 2)
        return np.concatenate([(project(K, dist, predicted(Xc, Wc, i), dets[i].obj) - dets[i].img).ravel() for i in keep])

    keep = list(range(len(dets)))
    X, W = _unpack(_refine(lambda v: residual(v, keep), _pack(X, W)), 2)
    errors = np.array([np.linalg.norm(project(K, dist, predicted(X, W, i), dets[i].obj) - dets[i].img, axis=1).mean()
                       for i in range(len(dets))])
    good = _drop_outliers(errors)
    if not good.all():
        keep = list(np.nonzero(good)[0])
        X, W = _unpack(_refine(lambda v: residual(v, keep), _pack(X, W)), 2)
        errors = np.array([np.linalg.norm(project(K, dist, predicted(X, W, i), dets[i].obj) - dets[i].img,
                                          axis=1).mean() for i in keep])
    warn = conditioning(flanges, len(keep))
    if len(keep) < len(dets):
        warn.append(f"{len(dets) - len(keep)} frames dropped as outliers (reprojection far above the others)")
    return Result(camera, {"pose": pose_values(X)}, errors.tolist(), len(keep), skipped + len(dets) - len(keep), warn)


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


def describe(r: Result) -> str:
    """What a person reads after a calibration."""
    errs = np.asarray(r.per_frame_px)
    lines = [f"calibrate {r.camera}: {r.frames_used} frames used, {r.frames_skipped} skipped; reprojection error "
             f"mean {errs.mean():.2f} px, worst frame {errs.max():.2f} px (RMS {r.rms_px:.2f} px)",
             "per-frame reprojection error (px): " + " ".join(f"{e:.2f}" for e in errs)]
    lines += [f"warning: {w}" for w in r.warnings]
    lines += ["", "# paste into params.yaml (or rerun with --write):", r.yaml_block()]
    return "\n".join(lines)
