"""The calibration solvers (OpenCV, then least squares on every corner's reprojection):
intrinsics from a ChArUco board; a world camera's pose from a board on the flange
(eye-to-hand) or from hand marks of the pad (PnP); a wrist camera's pose in the flange
frame from a board on the table (eye-in-hand). Each drops outlier frames and warns when
the recording cannot pin the solution down."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import EpisodeError
from .board import BoardSpec
from .calibration_io import Result, pose_values
from .kinematics import invert_rigid, pose_matrix

MIN_CORNERS = 6  # a frame needs this many ChArUco corners to count
MIN_FRAMES = 6


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


def pose_error(found: dict, truth) -> tuple[float, float]:
    """(position error in m, rotation error in degrees) between a found pose (params.yaml's
    {xyz, rpy_deg}) and a config Pose: how far a calibration is from the truth."""
    A = pose_matrix(type(truth)(xyz=found["xyz"], rpy_deg=found["rpy_deg"]))
    B = pose_matrix(truth)
    R = A[:3, :3].T @ B[:3, :3]
    return float(np.linalg.norm(A[:3, 3] - B[:3, 3])), math.degrees(math.acos(min(1.0, (np.trace(R) - 1) / 2)))


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
