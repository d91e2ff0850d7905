"""Inverse kinematics of the touch world's arms: joint targets that put a sensor (or, for a
pad in a claw, the claw's centre) at a point, pointing down, and the start pose. Below the
world (env) and its expert: both use it."""

from __future__ import annotations

import warnings

import numpy as np

from ..geometry.rig import Rig
from .claw import CLAW_OPEN, tcp_poses

GRIP_OPEN, GRIP_PRESS = 0.3, 0.6  # normalised gripper commands of the scripted expert
HOME_M = 0.20  # the start: this high above the table
HOME_LOCAL = (0.0, -0.40)  # ... over this point in the arm's base frame


class ArmIK:
    """Joint targets for 'sensor at world (x, y, z), pointing down', or for a pad in a claw
    'claw centre at (x, y, z), the claw pointing down' (it closes along world y)."""

    def __init__(self, rig: Rig, arm_name: str, sensor_name: str):
        from spatialmath import SE3

        self.SE3 = SE3
        self.arm = rig.arms[arm_name]
        sensor = rig.sensors[sensor_name]
        self.mount = tcp_poses(np.eye(4)[None], sensor.T_flange_sensor)[0] if sensor.in_claw else sensor.T_flange_sensor
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


def home_qpos(rig: Rig, sensing_arms: list[tuple[str, str]], width: int) -> np.ndarray:
    """The qpos with every sensor-carrying arm (`sensing_arms`: (arm, sensor) pairs) at its home
    waypoint, others at zero."""
    q = np.zeros(width)
    for arm_name, sensor_name in sensing_arms:
        arm = rig.arms[arm_name]
        home = (arm.base @ np.array([*HOME_LOCAL, 0.0, 1.0]))[:3] * [1, 1, 0] + [0, 0, HOME_M]
        ik = ArmIK(rig, arm_name, sensor_name)
        q[arm.cfg.qpos_start: arm.cfg.qpos_start + arm.n_joints] = ik.solve(*home)
        if arm.cfg.gripper_index is not None:
            q[arm.cfg.gripper_index] = CLAW_OPEN if rig.sensors[sensor_name].in_claw else GRIP_OPEN
    return q
