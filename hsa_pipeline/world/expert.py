"""The scripted expert: a teleoperator stand-in that solves each task in the touch world.

It plans once per scene: minimum-jerk straight lines of the sensor between a few
waypoints, turned into joints by inverse kinematics (roboticstoolbox, seeded from the
previous solution so the arm stays in one branch) for "sensor at (x, y, z), pointing
down". Then it acts: one joint-position target per step, exactly what a recording stores
as the action.

Timing, per touch (`world.frames_per_touch` frames): move above the tile, press down,
hold, lift. A pad in a claw (claw.py): move the claw's centre above the probe, lower it
around the probe, squeeze, lift; then above the matching tile, lower, open, lift.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .claw import CLAW_OPEN, CLAW_SQUEEZE, GRASP_Z_M, PROBE_HEIGHT_M
from .env import PRESS_M, TouchWorld
from .ik import GRIP_OPEN, GRIP_PRESS, ArmIK
from .tasks import ArmTask

HOVER_M = 0.06  # above a tile between presses
CLAW_HOVER_M = PROBE_HEIGHT_M + 0.05  # the claw's centre between touches: fingertips clear the probe
PLACE_CLEARANCE_M = 0.002  # a claw lowers a carried probe to this above the table, then opens


def _min_jerk(n: int) -> np.ndarray:
    s = np.linspace(0, 1, n + 1)[1:]
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def _touch_sequence(task: ArmTask, cfg) -> list[int]:
    """The tiles the expert presses, in order."""
    if cfg.task == "match":
        return [task.probe, task.targets[0]]  # pick the probe up, put it down on its match
    return list(task.targets)


def _segments(task: ArmTask, tile, touch: int) -> list[tuple[np.ndarray, float, str]]:
    """One touch as four segments (goal, gripper command, name): move above, go down,
    hold, go up. Goals are the sensor's position (a pad pressing down) or the claw's centre."""
    if not task.claw:
        above, low = np.array([tile.x, tile.y, HOVER_M]), np.array([tile.x, tile.y, -PRESS_M])
        return [(above, GRIP_OPEN, "move"), (low, GRIP_OPEN, "down"), (low, GRIP_PRESS, "hold"), (above, GRIP_OPEN, "up")]
    placing = touch > 0  # the first touch grasps the probe, the next one puts it down
    above = np.array([tile.x, tile.y, CLAW_HOVER_M])
    low = np.array([tile.x, tile.y, GRASP_Z_M + (PLACE_CLEARANCE_M if placing else 0.0)])
    before, after = (CLAW_SQUEEZE, CLAW_OPEN) if placing else (CLAW_OPEN, CLAW_SQUEEZE)
    return [(above, before, "move"), (low, before, "down"), (low, after, "hold"), (above, after, "up")]


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
        ik = ArmIK(env.rig, task.arm, task.sensor)
        ik.q = start[cols].copy()
        here = (env.claw_centre(task) if task.claw else sensor_pose[task.sensor][0])[:3, 3].copy()
        t = 1
        grip = np.full(T, CLAW_OPEN if task.claw else GRIP_OPEN)
        frames = {"move": n_move, "down": n_down, "hold": n_hold, "up": n_up}
        for touch, k in enumerate(_touch_sequence(task, cfg)):
            for goal, command, name in _segments(task, task.tiles[k], touch):
                n = frames[name]
                for i, s in enumerate(_min_jerk(n)):
                    out[t + i, cols] = ik.solve(*(here + s * (goal - here)))
                grip[t: t + n] = command
                here, t = goal, t + n
        out[t:, cols] = out[t - 1, cols]
        grip[t:] = grip[t - 1]
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
