"""The rig's sections of params.yaml: the arms (`robot`), the tactile sensors and the
cameras, and the poses that place them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .fields import param


@dataclass
class Pose:
    """A rigid transform: the pose of a child frame (sensor, camera, arm base) in its parent
    frame (the field's doc names the parent). Either `xyz` + `rpy_deg` or a full 4x4
    `matrix`; a matrix must be a proper rotation (orthonormal, det +1), last row 0 0 0 1."""

    xyz: list[float] = param(doc="translation of the child's origin in the parent frame, metres",
                             factory=lambda: [0.0, 0.0, 0.0])
    rpy_deg: list[float] = param(doc="roll, pitch, yaw in degrees about the parent's fixed x, y, z axes "
                                     "(R = Rz(yaw) Ry(pitch) Rx(roll), the URDF convention)",
                                 factory=lambda: [0.0, 0.0, 0.0])
    matrix: Optional[list[list[float]]] = param(None, "4x4 homogeneous matrix; overrides xyz/rpy_deg when set")


@dataclass
class ArmConfig:
    """One arm: its kinematic model, where it stands and which qpos columns drive it."""

    model: str = param("nova2", "nova2, nova5, vx300s (ALOHA's ViperX 300s), or a path to a URDF file (relative to "
                                "the repository root)")
    qpos_start: int = param(0, "this arm's joints are qpos[qpos_start : qpos_start + n_joints]", ge=0)
    gripper_index: Optional[int] = param(6, "qpos index of this arm's normalised gripper command, or null", ge=0)
    end_link: Optional[str] = param(None, "URDF only: the link treated as the flange (default: the model's end effector)")
    base: Pose = param(doc="pose of the arm's base frame in the WORLD frame", factory=Pose)
    on_limit_violation: Literal["warn", "error"] = param("warn", "what to do when recorded joints leave the joint limits")


@dataclass
class RobotConfig:
    """The arms of the rig (X-Trainer: two Nova 2 arms, left first in qpos)."""

    arms: dict[str, ArmConfig] = param(doc="arm name -> arm", factory=lambda: {"arm": ArmConfig()})


@dataclass(kw_only=True)
class SensorConfig:
    """A tactile sensor, keyed by its tactile stream name. Its sensing surface is a
    rectangle in the x-y plane of the sensor frame, centred on its origin."""

    arm: str = param(doc="the arm whose flange carries it")
    mount: Pose = param(doc="pose of the sensor frame in the FLANGE frame of its arm (the published X-Trainer "
                            "mount is xyz 0 0 0.02)")
    size: list[float] = param(doc="surface rectangle (x, y) in metres", factory=lambda: [0.03, 0.04], min_len=2)
    finger_offset: Literal["none", "left", "right"] = param(
        "none", "the pad sits on a claw finger: the mount moves along flange y by +/- half the X-Trainer claw "
                "opening (the touch world then grasps by squeezing between the fingers instead of pressing down)")
    contact: Literal["touch", "kinematics"] = param(
        "touch", "where this sensor's contact comes from: touch = its own tactile images (data.contact); "
                 "kinematics = the sensor within geometry.press_tolerance_m of its lowest height in the episode, a "
                 "fallback for a sensor whose images carry no contact signal (wrong for claws, presses at several "
                 "heights, low passes without touching and episodes without contact)")


@dataclass(kw_only=True)
class CameraConfig:
    """A calibrated colour camera, keyed by its image stream name."""

    mount: str = param(doc="'world' (fixed, third-person) or the name of the arm whose flange carries it")
    width: int = param(doc="image width in pixels", ge=1)
    height: int = param(doc="image height in pixels", ge=1)
    K: list[list[float]] = param(doc="3x3 intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]]")
    distortion: list[float] = param(doc="OpenCV k1 k2 p1 p2 [k3]; empty for none", factory=list)
    pose: Pose = param(doc="pose of the camera frame in its MOUNT frame (the world frame, or the flange frame of "
                           "the arm that carries it); OpenCV camera axes: z forward, x right, y down")
