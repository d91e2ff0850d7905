"""Calibration recordings rendered by the touch world, so that `hsa calibrate` is tested
against ground truth: the camera poses and intrinsics of params.yaml are what the tools
must recover.

- a ChArUco board on an arm's flange, seen by a world-fixed camera while the arm moves
  (the world-camera recording);
- a ChArUco board lying on the table, seen by a wrist camera while the arm moves (the
  hand-eye recording).

Both are written as ordinary episodes (qpos + the camera's images), the format the
calibration tools read, like a lab's own calibration recordings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..geometry.board import BoardSpec
from ..geometry.cameras import Camera
from ..geometry.kinematics import invert_rigid
from .render import ROOM_RGB, TABLE_RGB, Canvas


def flange_board_mount(spec: BoardSpec, offset_m: float = 0.02) -> np.ndarray:
    """A board centred on the flange, its printed face looking back along the tool (up,
    when the tool points down), `offset_m` behind the flange face. (OpenCV's board frame:
    x along a row, y down the columns, z INTO the board: the print faces -z.)"""
    w, h = spec.size_m
    T = np.eye(4)  # board z = flange z: the print faces -flange z
    T[:3, 3] = [-w / 2, -h / 2, -offset_m]
    return T


def table_board_pose(spec: BoardSpec, x: float, y: float) -> np.ndarray:
    """A board lying on the table centred at (x, y), print up."""
    w, h = spec.size_m
    T = np.eye(4)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])  # board z down into the table: the print faces up
    T[:3, 3] = [x - w / 2, y + h / 2, 0.001]
    return T


def render_board(cam: Camera, T_world_cam: np.ndarray, spec: BoardSpec, T_world_board: np.ndarray,
                 texture: np.ndarray, links: np.ndarray | None = None) -> np.ndarray:
    """One camera image: room, table, (the arm), the board. Clean: a calibration target."""
    canvas = Canvas(cam, T_world_cam, Image.new("RGB", (cam.width, cam.height), ROOM_RGB))
    canvas.quad(np.array([[-1.2, -1.6, 0], [1.2, -1.6, 0], [1.2, 0.5, 0], [-1.2, 0.5, 0]]), None, fill=TABLE_RGB)
    if links is not None:
        canvas.polyline(links, 6, (200, 200, 205))
    canvas.quad(spec.corners_world(T_world_board), texture)
    return np.asarray(canvas.img)


def _facing(cam_pose: np.ndarray, board_pose: np.ndarray, spec: BoardSpec, cam: Camera, min_cos: float) -> bool:
    """The whole board is in the image, in front of the camera, and faces it."""
    pts = spec.corners_world(board_pose)
    T = invert_rigid(cam_pose)
    p = pts @ T[:3, :3].T + T[:3, 3]
    if (p[:, 2] < 0.05).any():
        return False
    uv = cam.project(p)
    margin = 0.03 * cam.width
    if (uv < margin).any() or (uv[:, 0] > cam.width - margin).any() or (uv[:, 1] > cam.height - margin).any():
        return False
    to_cam = cam_pose[:3, 3] - pts.mean(0)
    return float(-board_pose[:3, 2] @ to_cam / np.linalg.norm(to_cam)) > min_cos  # the print faces -z


def record(env, camera: str, arm: str, spec: BoardSpec, frames: int, seed: int, out: Path,
           board_on: str = "flange", table_board: np.ndarray | None = None, spread: float = 0.35) -> dict:
    """Move `arm` through random poses around the world's home pose; keep those where
    `camera` sees the whole board, facing it; write them as one episode to `out`.
    Returns the truth: the board pose in the flange (flange board) or world (table board)."""
    from ..data.episodes import write_episode

    rig = env.rig
    cam = rig.cameras[camera]
    a = rig.arms[arm]
    cols = slice(a.cfg.qpos_start, a.cfg.qpos_start + a.n_joints)
    texture = spec.texture()
    mount = flange_board_mount(spec)
    if board_on == "table" and table_board is None:
        table_board = table_board_pose(spec, *(a.base @ np.array([0.0, -0.4, 0.0, 1.0]))[:2])
    env.reset(seed=seed)
    home = env.qpos.copy()
    rng = np.random.default_rng(seed)
    qs, images = [], []
    tries = 0
    while len(qs) < frames:
        tries += 1
        if tries > 200 * frames:
            raise RuntimeError(f"calibration recording: camera '{camera}' rarely sees the board; move it or the arm")
        q = home.copy()
        q[cols] += rng.uniform(-spread, spread, a.n_joints) * np.array([0.5, 0.5, 0.5, 1, 1, 1])[: a.n_joints]
        flange = a.flange_poses(q[None, cols])[0]
        cam_pose = cam.world_poses({arm: flange[None]}, 1)[0]
        board = flange @ mount if board_on == "flange" else table_board
        if board_on == "table" and (flange[2, 3] < 0.15):
            continue
        if not _facing(cam_pose, board, spec, cam, 0.5):
            continue
        links = None
        if cam.mount == "world":
            links = (a.base @ a.chain.fkine(q[None, cols], all_joints=True)[0])[:, :3, 3]
        images.append(render_board(cam, cam_pose, spec, board, texture, links))
        qs.append(q)
    qpos = np.stack(qs)
    write_episode(out, qpos, qpos, {camera: np.stack(images)}, {}, layout="act")
    return {"board_in_flange": mount if board_on == "flange" else None,
            "board_in_world": table_board if board_on == "table" else None}

