"""The rig: arms, tactile sensors and cameras built from params, and the per-frame
geometry of an episode (sensor poses and boxes). Used by the `geometry` stage, the demo
renderer and `hsa preview`, so all three see the same world."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import CameraConfig, RobotConfig, SensorConfig
from ..data.contact import contact_from_height, next_change
from .cameras import Boxes, Camera, sensor_boxes
from .kinematics import Arm, LimitViolation, claw_width, pose_matrix


@dataclass
class Sensor:
    name: str
    arm: str
    T_flange_sensor: np.ndarray  # (4, 4)
    size: tuple[float, float]
    finger_offset: str  # none | left | right
    contact_source: str = "touch"  # touch | kinematics (SensorConfig.contact)

    @classmethod
    def from_config(cls, name: str, cfg: SensorConfig) -> "Sensor":
        return cls(name, cfg.arm, pose_matrix(cfg.mount), (cfg.size[0], cfg.size[1]), cfg.finger_offset, cfg.contact)

    @property
    def in_claw(self) -> bool:
        """The pad sits on a claw finger (it touches by squeezing, at any height)."""
        return self.finger_offset != "none"

    def surface_points(self) -> np.ndarray:
        """(4, 3) corners of the sensing surface in the sensor frame (its x-y plane)."""
        hx, hy = self.size[0] / 2, self.size[1] / 2
        return np.array([[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0]], dtype=float)

    def surface_world(self, poses: np.ndarray) -> np.ndarray:
        """(T, 4, 4) sensor poses -> (T, P, 3) surface points in the world."""
        return np.einsum("tij,pj->tpi", poses[:, :3, :3], self.surface_points()) + poses[:, None, :3, 3]

    def world_poses(self, flange: np.ndarray, gripper: np.ndarray | None) -> np.ndarray:
        """flange (T, 4, 4), gripper command (T,) -> (T, 4, 4) sensor poses in the world."""
        poses = flange @ self.T_flange_sensor
        if self.finger_offset != "none":
            if gripper is None:
                raise ValueError(f"sensors.{self.name}.finger_offset needs robot.arms.{self.arm}.gripper_index")
            sign = 1.0 if self.finger_offset == "left" else -1.0
            shift = np.zeros((len(flange), 4, 4))
            shift[:] = np.eye(4)
            shift[:, 1, 3] = sign * claw_width(gripper) / 2  # along flange y, before the fixed mount
            poses = flange @ shift @ self.T_flange_sensor
        return poses


@dataclass
class EpisodeGeometry:
    flange: dict[str, np.ndarray]  # arm -> (T, 4, 4)
    sensor_pose: dict[str, np.ndarray]  # sensor -> (T, 4, 4)
    camera_pose: dict[str, np.ndarray]  # camera -> (T, 4, 4)
    boxes: dict[str, dict[str, Boxes]]  # camera -> sensor -> Boxes
    # camera -> sensor -> Boxes of where the sensor's touch next changes, seen from the camera NOW
    next_boxes: dict[str, dict[str, Boxes]] = field(default_factory=dict)
    contact: dict[str, np.ndarray] = field(default_factory=dict)  # sensor -> (T,) bool
    next_frame: dict[str, np.ndarray] = field(default_factory=dict)  # sensor -> (T,) where the touch next changes, -1
    violations: list[LimitViolation] = field(default_factory=list)


class Rig:
    """The arms, tactile sensors and cameras of params.yaml's `robot`, `sensors` and
    `cameras` sections."""

    def __init__(self, robot: RobotConfig, sensors: dict[str, SensorConfig], cameras: dict[str, CameraConfig],
                 margin_px: float = 0.0, base_dir: Path | str = "."):
        self.arms = {n: Arm(n, a, base_dir) for n, a in robot.arms.items()}
        self.sensors = {n: Sensor.from_config(n, s) for n, s in sensors.items()}
        self.cameras = {n: Camera.from_config(n, c) for n, c in cameras.items()}
        self.margin_px = margin_px

    def qpos_width(self) -> int:
        ends = [a.cfg.qpos_start + a.n_joints for a in self.arms.values()]
        ends += [a.cfg.gripper_index + 1 for a in self.arms.values() if a.cfg.gripper_index is not None]
        return max(ends)

    def column_names(self, width: int) -> list[str]:
        """Names of qpos/action columns: '<arm>.j<k>' for joints, '<arm>.gripper', else 'dim<i>'."""
        names = [f"dim{i}" for i in range(width)]
        for a in self.arms.values():
            for j in range(a.n_joints):
                if a.cfg.qpos_start + j < width:
                    names[a.cfg.qpos_start + j] = f"{a.name}.j{j + 1}"
            if a.cfg.gripper_index is not None and a.cfg.gripper_index < width:
                names[a.cfg.gripper_index] = f"{a.name}.gripper"
        return names

    def episode_geometry(self, qpos: np.ndarray, where: str = "qpos", margin_px: float | None = None,
                         touch: dict[str, np.ndarray] | None = None, press_tolerance_m: float = 0.01) -> EpisodeGeometry:
        """All per-frame geometry of one episode from its (T, D) qpos: the sensor boxes now,
        each sensor's contact, and the boxes of where its touch next changes (contact.next_change)
        projected into the cameras as they are now: the recording's own future, nothing a
        real rig lacks. `touch`: sensor -> (T,) contact read from its tactile images (prepare);
        a sensor with `contact: kinematics` uses its height instead, and a touch sensor
        missing from `touch` has no contact (and so no next-contact box)."""
        margin = self.margin_px if margin_px is None else margin_px
        n = len(qpos)
        flange, violations, grip = {}, [], {}
        for name, arm in self.arms.items():
            q = arm.joints(qpos, where)
            violations += arm.check_limits(q)
            flange[name] = arm.flange_poses(q)
            grip[name] = arm.gripper(qpos)
        sensor_pose = {s.name: s.world_poses(flange[s.arm], grip[s.arm]) for s in self.sensors.values()}
        camera_pose = {c.name: c.world_poses(flange, n) for c in self.cameras.values()}
        surface = {s.name: s.surface_world(sensor_pose[s.name]) for s in self.sensors.values()}  # (T, P, 3)
        contact = {s.name: (contact_from_height(sensor_pose[s.name][:, 2, 3], press_tolerance_m)
                            if s.contact_source == "kinematics" else
                            np.asarray((touch or {}).get(s.name, np.zeros(n, bool)), bool))
                   for s in self.sensors.values()}
        nxt = {s: next_change(c) for s, c in contact.items()}
        boxes: dict[str, dict[str, Boxes]] = {}
        next_boxes: dict[str, dict[str, Boxes]] = {}
        for c in self.cameras.values():
            boxes[c.name], next_boxes[c.name] = {}, {}
            for s in self.sensors.values():
                boxes[c.name][s.name] = sensor_boxes(c, camera_pose[c.name], surface[s.name], margin)
                ahead = sensor_boxes(c, camera_pose[c.name], surface[s.name][np.maximum(nxt[s.name], 0)], margin)
                none = nxt[s.name] < 0  # the touch does not change again: nothing to point at
                ahead.visible[none], ahead.weight[none], ahead.box[none] = False, 0.0, 0.0
                next_boxes[c.name][s.name] = ahead
        return EpisodeGeometry(flange, sensor_pose, camera_pose, boxes, next_boxes, contact, nxt, violations)
