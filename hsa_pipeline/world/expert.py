"""The scripted expert: a teleoperator stand-in that solves each task in the touch world.

It plans once per scene: minimum-jerk straight lines of the sensor between a few
waypoints, turned into joints by inverse kinematics (roboticstoolbox, seeded from the
previous solution so the arm stays in one branch) for "sensor at (x, y, z), pointing
down". Then it acts: one joint-position target per step, exactly what a recording stores
as the action.

Timing, per touch (`world.frames_per_touch` frames): move above the tile, press down,
hold, lift.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError
from .env import GRIP_OPEN, GRIP_PRESS, PRESS_M, TouchWorld
from .tasks import ArmTask

HOVER_M = 0.06  # above a tile between presses
HOME_M = 0.20  # the start: this high above the table
HOME_LOCAL = (0.0, -0.40)  # ... over this point in the arm's base frame


class ArmIK:
    """Joint targets for 'sensor at world (x, y, z), pointing down'."""

    def __init__(self, env: TouchWorld, arm_name: str, sensor_name: str, gripper: float | None):
        from spatialmath import SE3

        self.SE3 = SE3
        self.arm = env.rig.arms[arm_name]
        sensor = env.rig.sensors[sensor_name]
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


def _min_jerk(n: int) -> np.ndarray:
    s = np.linspace(0, 1, n + 1)[1:]
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def _home_xyz(env: TouchWorld, arm_name: str) -> np.ndarray:
    return (env.rig.arms[arm_name].base @ np.array([*HOME_LOCAL, 0.0, 1.0]))[:3] * [1, 1, 0] + [0, 0, HOME_M]


def home_qpos(env: TouchWorld) -> np.ndarray:
    """The qpos with every sensor-carrying arm at its home waypoint (others at zero)."""
    q = np.zeros(env.width)
    for arm_name, sensor_name in env.workers:
        arm = env.rig.arms[arm_name]
        ik = ArmIK(env, arm_name, sensor_name, GRIP_PRESS)
        q[arm.cfg.qpos_start: arm.cfg.qpos_start + arm.n_joints] = ik.solve(*_home_xyz(env, arm_name))
        if arm.cfg.gripper_index is not None:
            q[arm.cfg.gripper_index] = GRIP_OPEN
    return q


def _touch_sequence(task: ArmTask, cfg) -> list[int]:
    """The tiles the expert presses, in order."""
    if cfg.task == "match":
        return [task.probe, task.order[0]]  # pick the probe up, put it down on its match
    return list(task.order)


def plan(env: TouchWorld) -> np.ndarray:
    """(T, D) joint-position targets solving the current scene; plan[0] is the start qpos.
    Every segment is a minimum-jerk straight line of the SENSOR (inverse kinematics at each
    frame): a line in joint space can sag into the table between two tiles."""
    cfg = env.cfg
    n_down = n_hold = n_up = max(1, cfg.frames_per_touch // 5)
    n_move = cfg.frames_per_touch - n_down - n_hold - n_up
    start = env.qpos.copy()
    lengths = [len(_touch_sequence(t, cfg)) for t in env.tasks]
    T = 1 + cfg.frames_per_touch * max(lengths)
    out = np.repeat(start[None], T, axis=0)
    _, sensor_pose, _ = env._poses()
    for task in env.tasks:
        arm = env.rig.arms[task.arm]
        cols = slice(arm.cfg.qpos_start, arm.cfg.qpos_start + arm.n_joints)
        ik = ArmIK(env, task.arm, task.sensor, GRIP_PRESS)
        ik.q = start[cols].copy()
        here, t = sensor_pose[task.sensor][0, :3, 3].copy(), 1
        grip = np.full(T, GRIP_OPEN)
        for k in _touch_sequence(task, cfg):
            tile = task.tiles[k]
            above, press = np.array([tile.x, tile.y, HOVER_M]), np.array([tile.x, tile.y, -PRESS_M])
            for goal, n, squeeze in ((above, n_move, False), (press, n_down, False), (press, n_hold, True),
                                     (above, n_up, False)):
                for i, s in enumerate(_min_jerk(n)):
                    out[t + i, cols] = ik.solve(*(here + s * (goal - here)))
                grip[t: t + n] = GRIP_PRESS if squeeze else GRIP_OPEN
                here, t = goal, t + n
        out[t:, cols] = out[t - 1, cols]
        if arm.cfg.gripper_index is not None:
            out[:, arm.cfg.gripper_index] = grip
        fastest = np.abs(np.diff(out[:, cols], axis=0)).max()
        if fastest > env.max_step_rad + 1e-9:
            raise ConfigError(f"world: the scripted expert would move arm '{task.arm}' at "
                              f"{np.rad2deg(fastest) * cfg.control_hz:.0f} deg/s, above world.max_joint_speed_deg "
                              f"{cfg.max_joint_speed_deg:g}; raise world.frames_per_touch or the speed limit")
    return out


class ScriptedExpert:
    """Acts in `env` along `plan(env)`: call `reset()` after env.reset, then `act()` each step."""

    def __init__(self, env: TouchWorld):
        self.env = env
        self.targets: np.ndarray | None = None
        self.i = 0

    def reset(self) -> None:
        self.targets, self.i = plan(self.env), 0

    @property
    def length(self) -> int:
        """Steps of the plan (the episode length the demo records)."""
        return len(self.targets) - 1

    def act(self) -> np.ndarray:
        self.i = min(self.i + 1, len(self.targets) - 1)
        return self.targets[self.i]
