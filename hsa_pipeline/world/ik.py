"""Inverse kinematics of the touch world's arms: joint targets that put a sensor at a
point, pointing down, and the start pose. Below the world (env) and its expert: both use it."""

from __future__ import annotations

import warnings

import numpy as np

from ..geometry.rig import Rig

GRIP_OPEN, GRIP_PRESS = 0.3, 0.6  # normalised gripper commands of the scripted expert
HOME_M = 0.20  # the start: this high above the table
HOME_LOCAL = (0.0, -0.40)  # ... over this point in the arm's base frame


class ArmIK:
    """Joint targets for 'sensor at world (x, y, z), pointing down'."""

    def __init__(self, rig: Rig, arm_name: str, sensor_name: str, gripper: float | None):
        from spatialmath import SE3

        self.SE3 = SE3
        self.arm = rig.arms[arm_name]
        sensor = rig.sensors[sensor_name]
        # the mount with the X-Trainer finger offset at the pressing grip, when the sensor has one
        self.mount = (sensor.world_poses(np.eye(4)[None], None if gripper is None else np.array([gripper]))[0]
                      if sensor.finger_offset != "none" else sensor.T_flange_sensor)
        self.q = np.array([1.3, 0.6, 1.7, -0.8, -1.57, 2.9])[: self.arm.n_joints]

    def solve(self, x: float, y: float, z: float) -> np.ndarray:
        target = np.eye(4)
        target[:3, :3] = np.diag([1.0, -1.0, -1.0])  # the sensor's z axis points down
        target[:3, 3] = [x, y, z]
        flange = np.linalg.inv(self.arm.base) @ target @ np.linalg.inv(self.mount)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = self.arm.robot.ikine_LM(self.SE3(flange, check=False), q0=self.q, seed=0, ilimit=200, slimit=20)
        if not sol.success or np.abs(sol.q - self.q).max() > 2.0:
            raise RuntimeError(f"world: no smooth IK solution for the sensor of arm '{self.arm.name}' at "
                               f"({x:.3f}, {y:.3f}, {z:.3f}); move robot.arms.{self.arm.name}.base")
        self.q = np.asarray(sol.q, dtype=float)
        return self.q.copy()


def home_qpos(rig: Rig, workers: list[tuple[str, str]], width: int) -> np.ndarray:
    """The qpos with every sensor-carrying arm (`workers`: (arm, sensor) pairs) at its home
    waypoint, others at zero."""
    q = np.zeros(width)
    for arm_name, sensor_name in workers:
        arm = rig.arms[arm_name]
        home = (arm.base @ np.array([*HOME_LOCAL, 0.0, 1.0]))[:3] * [1, 1, 0] + [0, 0, HOME_M]
        ik = ArmIK(rig, arm_name, sensor_name, GRIP_PRESS)
        q[arm.cfg.qpos_start: arm.cfg.qpos_start + arm.n_joints] = ik.solve(*home)
        if arm.cfg.gripper_index is not None:
            q[arm.cfg.gripper_index] = GRIP_OPEN
    return q
