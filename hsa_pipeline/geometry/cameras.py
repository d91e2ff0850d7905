"""Camera model, sensor boxes and the box -> patch-token mask.

Conventions: camera frames use OpenCV axes (z forward, x right, y down); boxes are
(x0, y0, x1, y1) in pixels of the ORIGINAL image, half-open, x1/y1 exclusive.

The image -> token-grid mapping (`GridMapping`) is the single definition used by both
the feature stage (to resize images) and the token mask (to select tokens), so the two
cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import CameraConfig
from ..errors import ConfigError
from .kinematics import invert_rigid, pose_matrix

NEAR_M = 1e-3  # points closer than this to the camera plane count as behind it


@dataclass
class Camera:
    name: str
    K: np.ndarray  # (3, 3)
    distortion: np.ndarray  # (5,) k1 k2 p1 p2 k3
    width: int
    height: int
    mount: str  # "world" or an arm name
    T_mount_cam: np.ndarray  # (4, 4) camera pose in its mount frame

    @classmethod
    def from_config(cls, name: str, cfg: CameraConfig) -> "Camera":
        dist = np.zeros(5)
        dist[: len(cfg.distortion)] = cfg.distortion
        return cls(name, np.asarray(cfg.K, float), dist, cfg.width, cfg.height, cfg.mount, pose_matrix(cfg.pose))

    def world_poses(self, flange_poses: dict[str, np.ndarray], n_frames: int) -> np.ndarray:
        """(T, 4, 4) camera poses in the world; flange_poses: arm -> (T, 4, 4)."""
        if self.mount == "world":
            return np.broadcast_to(self.T_mount_cam, (n_frames, 4, 4))
        return flange_poses[self.mount] @ self.T_mount_cam

    def project(self, p_cam: np.ndarray) -> np.ndarray:
        """(..., 3) points in the camera frame (z > 0) -> (..., 2) pixels, with distortion."""
        x = p_cam[..., 0] / p_cam[..., 2]
        y = p_cam[..., 1] / p_cam[..., 2]
        k1, k2, p1, p2, k3 = self.distortion
        if np.any(self.distortion):
            r2 = x * x + y * y
            radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
            x, y = (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                    y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        return np.stack([fx * x + cx, fy * y + cy], axis=-1)


@dataclass
class Boxes:
    box: np.ndarray  # (T, 4) float32, clipped to the image; zeros when not visible
    depth: np.ndarray  # (T,) depth of the sensor centre along the optical axis (m)
    visible: np.ndarray  # (T,) bool
    weight: np.ndarray  # (T,) fraction of the (margin-widened) box inside the image, 0 if not visible


def sensor_boxes(cam: Camera, T_world_cam: np.ndarray, points_world: np.ndarray, margin_px: float = 0.0) -> Boxes:
    """Box of a sensor surface in a camera, per frame.

    T_world_cam (T, 4, 4); points_world (T, P, 3) the sensor's surface points.
    A frame is not visible when any surface point is behind the camera, or when the
    box lies entirely outside the image.
    """
    T_cam_world = invert_rigid(T_world_cam)  # (T, 4, 4)
    p = points_world @ np.swapaxes(T_cam_world[:, :3, :3], 1, 2) + T_cam_world[:, None, :3, 3]  # (T, P, 3)
    depth = p[..., 2].mean(axis=1)  # (T,)
    in_front = (p[..., 2] > NEAR_M).all(axis=1)
    safe = np.where(in_front[:, None, None], p, np.array([0.0, 0.0, 1.0]))  # avoid dividing by z <= 0
    uv = cam.project(safe)  # (T, P, 2)
    raw = np.concatenate([uv.min(axis=1), uv.max(axis=1)], axis=1)  # (T, 4)
    raw = raw + np.array([-margin_px, -margin_px, margin_px, margin_px])
    clipped = np.stack([
        np.clip(raw[:, 0], 0, cam.width), np.clip(raw[:, 1], 0, cam.height),
        np.clip(raw[:, 2], 0, cam.width), np.clip(raw[:, 3], 0, cam.height),
    ], axis=1)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    raw_area, in_area = area(raw), area(clipped)
    visible = in_front & (in_area > 0)
    weight = np.where(visible, in_area / np.maximum(raw_area, 1e-12), 0.0)
    box = np.where(visible[:, None], clipped, 0.0)
    return Boxes(box.astype(np.float32), depth, visible, weight.astype(np.float32))


def check_recorded_size(name: str, cam: CameraConfig, width: int, height: int, recorded: str) -> None:
    """ConfigError unless camera `name` records frames of its calibrated size; the message
    says how to rescale the calibration (`recorded` says where the size was seen)."""
    if (width, height) != (cam.width, cam.height):
        sx, sy = width / cam.width, height / cam.height
        raise ConfigError(f"cameras.{name}: calibrated for {cam.width}x{cam.height} images, but {recorded}; rescale "
                          f"the calibration to the recording: width: {width}, height: {height}, fx and cx x {sx:g}, "
                          f"fy and cy x {sy:g} (or recalibrate: hsa calibrate)")
