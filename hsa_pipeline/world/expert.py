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

import numpy as np

from ..errors import ConfigError
from .env import PRESS_M, TouchWorld
from .ik import GRIP_OPEN, GRIP_PRESS, ArmIK
from .tasks import ArmTask

HOVER_M = 0.06  # above a tile between presses


def _min_jerk(n: int) -> np.ndarray:
    s = np.linspace(0, 1, n + 1)[1:]
    return 10 * s**3 - 15 * s**4 + 6 * s**5


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
        ik = ArmIK(env.rig, task.arm, task.sensor, GRIP_PRESS)
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
