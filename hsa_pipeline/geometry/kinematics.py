"""Robot models and batched forward kinematics.

Models come from roboticstoolbox-python (Dobot Nova 2 / Nova 5 from their DH tables, the
ViperX 300s of ALOHA from the MuJoCo model gym-aloha ships, any robot from a URDF).
roboticstoolbox evaluates one pose at a time (`ets().fkine` ~3.7 us a pose); `BatchedChain`
evaluates the same elementary-transform sequence for a whole episode with stacked numpy
matrix products, so geometry for 10^5 frames takes a moment.
It reads the chain from roboticstoolbox, so the two cannot describe different robots.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ArmConfig, ConfigError, Pose


def _rtb():
    """roboticstoolbox, imported only where a robot model is built: train and evaluate read
    cached geometry and run on GPU hosts without it (and without its slow import)."""
    with warnings.catch_warnings():  # roboticstoolbox imports pkg_resources-era modules noisily
        warnings.simplefilter("ignore")
        import roboticstoolbox as rtb
    return rtb

# Standard DH (d, a, alpha, theta offset) per joint, from Dobot's xtrainer code
# (dobot_function/manipulate_utils.py) and DreamTacVLA (arXiv 2512.23864, Table 6).
_HALF_PI = np.pi / 2
DH_TABLES = {
    "nova2": dict(d=[0.2234, 0, 0, 0.1175, 0.120, 0.088], a=[0, -0.280, -0.225, 0, 0, 0]),
    "nova5": dict(d=[0.240, 0, 0, 0.135, 0.120, 0.088], a=[0, -0.400, -0.330, 0, 0, 0]),
}
_ALPHA = [_HALF_PI, 0, 0, _HALF_PI, -_HALF_PI, 0]
_OFFSET = [0, -_HALF_PI, 0, -_HALF_PI, 0, 0]
# Usable limits from Dobot: J1, J4, J5, J6 +-360 deg, J2 +-180 deg, J3 +-160 deg.
_LIMITS_DEG = [360, 180, 160, 360, 360, 360]


# The ViperX 300s (6 joints) as gym-aloha's MJCF (assets/vx300s_left.xml) writes it: each body's
# offset from its parent, then its joint's axis; no body is rotated. The flange is
# `gripper_link`. tests/test_aloha.py checks these against MuJoCo's own body poses.
VX300S_CHAIN = [("tz", 0.079), ("Rz", None), ("tz", 0.04805), ("Ry", None), ("tx", 0.05955), ("tz", 0.3), ("Ry", None),
                ("tx", 0.2), ("Rx", None), ("tx", 0.1), ("Ry", None), ("tx", 0.069744), ("Rx", None)]
VX300S_LIMITS = [(-3.14158, 3.14158), (-1.85005, 1.25664), (-1.76278, 1.6057), (-3.14158, 3.14158),
                 (-1.8675, 2.23402), (-3.14158, 3.14158)]
ROBOTS = "nova2, nova5, vx300s or a path to a .urdf file"


def _vx300s(rtb):
    ets = rtb.ETS([getattr(rtb.ET, kind)(value) if value is not None else getattr(rtb.ET, kind)()
                   for kind, value in VX300S_CHAIN])
    robot = rtb.Robot(ets, name="vx300s", manufacturer="Trossen Robotics")
    robot.qlim = np.array(VX300S_LIMITS).T
    return robot


def rpy_matrix(rpy_rad) -> np.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll), the URDF / ROS convention."""
    r, p, y = rpy_rad
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def pose_matrix(pose: Pose) -> np.ndarray:
    """4x4 matrix of a config Pose (validated by the config package)."""
    if pose.matrix is not None:
        return np.asarray(pose.matrix, dtype=float)
    m = np.eye(4)
    m[:3, :3] = rpy_matrix(np.deg2rad(pose.rpy_deg))
    m[:3, 3] = pose.xyz
    return m


def build_robot(model: str, base_dir: Path | str = ".", key: str = "robot"):
    """A roboticstoolbox robot for 'nova2', 'nova5', 'vx300s' or a URDF path (relative to base_dir)."""
    rtb = _rtb()
    name = model.lower()
    if name in DH_TABLES:
        t = DH_TABLES[name]
        links = [
            rtb.RevoluteDH(d=t["d"][i], a=t["a"][i], alpha=_ALPHA[i], offset=_OFFSET[i],
                           qlim=np.deg2rad([-_LIMITS_DEG[i], _LIMITS_DEG[i]]))
            for i in range(6)
        ]
        return rtb.DHRobot(links, name=name, manufacturer="Dobot")
    if name == "vx300s":
        return _vx300s(rtb)
    if name.endswith((".urdf", ".xacro")):
        path = Path(base_dir) / model
        if not path.is_file():
            raise ConfigError(f"{key}.model: URDF file {path} not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return rtb.Robot.URDF(str(path.resolve()))
        except Exception as e:  # the URDF parser raises many kinds
            raise ConfigError(f"{key}.model: {path} does not parse as a URDF: {type(e).__name__}: {e}") from None
    raise ConfigError(f"{key}.model: unknown robot '{model}'; expected {ROBOTS}")


class BatchedChain:
    """Forward kinematics of a roboticstoolbox ETS for N joint vectors at once.

    Consecutive constant transforms are fused, so a 6-joint DH arm costs 12 stacked 4x4
    products per call whatever N is.
    """

    def __init__(self, ets):
        self.steps: list[tuple] = []  # ("const", A) | ("joint", axis, jindex, sign)
        const = np.eye(4)
        for et in ets:
            if et.isjoint:
                if not np.allclose(const, np.eye(4)):
                    self.steps.append(("const", const))
                self.steps.append(("joint", et.kind if hasattr(et, "kind") else et.axis, et.jindex, -1.0 if et.isflip else 1.0))
                const = np.eye(4)
            else:
                const = const @ et.A()
        self.tail = const  # constant after the last joint
        self.n_joints = sum(1 for s in self.steps if s[0] == "joint")

    # Column pairs a joint rotation mixes: T @ R_axis(q) rewrites only these two columns.
    _ROT_COLUMNS = {"Rx": (1, 2), "Ry": (2, 0), "Rz": (0, 1)}

    def fkine(self, q: np.ndarray, all_joints: bool = False) -> np.ndarray:
        """q (N, n_joints) -> (N, 4, 4) end poses, or (N, n_joints + 1, 4, 4) frames
        (base-side of each joint, then the end) with all_joints=True.

        Works on the top 3 rows only: a constant transform is one (3N, 4) @ (4, 4) product,
        a revolute joint mixes two columns elementwise, a prismatic joint shifts column 3.
        """
        q = np.asarray(q, dtype=float)
        n = q.shape[0]
        t = np.zeros((n, 3, 4))
        t[:, 0, 0] = t[:, 1, 1] = t[:, 2, 2] = 1.0
        frames = []
        for step in self.steps:
            if step[0] == "const":
                t = (t.reshape(-1, 4) @ step[1]).reshape(n, 3, 4)
                continue
            _, axis, jindex, sign = step
            if all_joints:
                frames.append(t.copy())
            qj = sign * q[:, jindex, None]  # (N, 1)
            if axis[0] == "R":
                i, j = self._ROT_COLUMNS[axis]
                c, s = np.cos(qj), np.sin(qj)
                ci, cj = t[:, :, i].copy(), t[:, :, j].copy()
                t[:, :, i] = ci * c + cj * s
                t[:, :, j] = cj * c - ci * s
            else:  # prismatic tx / ty / tz
                t[:, :, 3] += qj * t[:, :, "xyz".index(axis[1])]
        t = (t.reshape(-1, 4) @ self.tail).reshape(n, 3, 4)
        if all_joints:
            frames.append(t)
            return _homogeneous(np.stack(frames, axis=1))
        return _homogeneous(t)


def _homogeneous(top: np.ndarray) -> np.ndarray:
    """(..., 3, 4) -> (..., 4, 4) with the last row 0 0 0 1."""
    out = np.zeros((*top.shape[:-2], 4, 4))
    out[..., :3, :] = top
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """(..., 4, 4) rigid transforms -> their inverses (R^T, -R^T t), cheaper than inv()."""
    out = np.zeros_like(T)
    rt = np.swapaxes(T[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def claw_width(command: np.ndarray) -> np.ndarray:
    """X-Trainer claw opening (metres) for a normalised gripper command in [0, 1], the
    formula of Dobot's xtrainer code (its tool point sits at +-half this along flange y)."""
    s = 2.3818 - 1.5401 * np.asarray(command, dtype=float)
    return 0.03 * np.cos(s) + 0.5 * np.sqrt(0.0036 * np.cos(s) ** 2 + 0.0028)


@dataclass
class LimitViolation:
    arm: str
    joint: int
    frames: int
    first_frame: int
    worst_deg: float

    def __str__(self) -> str:
        return (f"arm '{self.arm}' joint {self.joint + 1}: {self.frames} frames outside the limits "
                f"(first at frame {self.first_frame}, worst {self.worst_deg:.1f} deg past the limit)")


class Arm:
    """One arm of the rig: a robot model, its base pose in the world and its slice of qpos."""

    def __init__(self, name: str, cfg: ArmConfig, base_dir: Path | str = "."):
        self.name = name
        self.cfg = cfg
        self.robot = build_robot(cfg.model, base_dir, key=f"robot.arms.{name}")
        ets = self.robot.ets(end=cfg.end_link) if cfg.end_link else self.robot.ets()
        self.chain = BatchedChain(ets)
        self.n_joints = self.chain.n_joints
        self.base = pose_matrix(cfg.base)
        self.qlim = np.asarray(self.robot.qlim, dtype=float)[:, : self.n_joints]

    def joints(self, qpos: np.ndarray, where: str = "qpos") -> np.ndarray:
        """(T, D) qpos -> (T, n_joints) joint angles of this arm, with clear errors."""
        lo, hi = self.cfg.qpos_start, self.cfg.qpos_start + self.n_joints
        if qpos.ndim != 2 or qpos.shape[1] < hi:
            raise ValueError(f"{where}: arm '{self.name}' needs qpos columns {lo}..{hi - 1}, "
                             f"but qpos has shape {qpos.shape}")
        q = np.asarray(qpos[:, lo:hi], dtype=float)
        bad = ~np.isfinite(q)
        if bad.any():
            frame, joint = np.argwhere(bad)[0]
            raise ValueError(f"{where}: frame {frame}: arm '{self.name}' joint {joint + 1} is {q[frame, joint]}")
        return q

    def gripper(self, qpos: np.ndarray) -> np.ndarray | None:
        i = self.cfg.gripper_index
        return None if i is None else np.asarray(qpos[:, i], dtype=float)

    def flange_poses(self, q: np.ndarray) -> np.ndarray:
        """(T, n_joints) -> (T, 4, 4) flange poses in the world frame."""
        return self.base @ self.chain.fkine(q)

    def check_limits(self, q: np.ndarray) -> list[LimitViolation]:
        out = []
        for j in range(self.n_joints):
            lo, hi = self.qlim[:, j]
            past = np.maximum(lo - q[:, j], q[:, j] - hi)
            bad = past > 1e-9
            if bad.any():
                out.append(LimitViolation(self.name, j, int(bad.sum()), int(np.argmax(bad)), float(np.rad2deg(past.max()))))
        return out
