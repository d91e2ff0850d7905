"""gym-aloha's tasks behind the interface the closed-loop evaluation drives (the touch
world's): `reset(seed)` -> (obs, info), `step(action)` -> (obs, reward, terminated,
truncated, info), with `obs = {"qpos": (14,), "top": (H, W, 3)}` and `info` saying whether
the scene succeeded, how many of the task's reward stages it reached, and at which step.

Success is the task's own top reward (4), the check LeRobot's evaluation makes; a rollout
ends there or after `max_steps` steps (a timeout: these tasks detect no other failure).
Scene `seed` places the object with gym-aloha's own sampler.
"""

from __future__ import annotations

import numpy as np

from ..config import AlohaConfig
from .sim import STAGES, SUCCESS_REWARD, joint_env, object_pose, reset_joint_env

STREAM = "top"
QPOS_WIDTH = 14  # per arm 6 joints and a normalised gripper, left arm first


class AlohaEnv:
    touch_decisions = False  # no tile to choose by touch: the decision checks do not apply

    def __init__(self, cfg: AlohaConfig, max_steps: int):
        self.cfg, self.max_steps = cfg, max_steps
        self.env = joint_env(cfg.task, (cfg.image_height, cfg.image_width), cfg.shadows)
        self.streams, self.width = [STREAM], QPOS_WIDTH
        self.phase_names = STAGES[cfg.task]
        self.t, self.best = 0, 0

    def _obs(self, ts) -> dict:
        return {"qpos": np.asarray(ts.observation["qpos"], dtype=np.float32), STREAM: ts.observation["images"][STREAM]}

    def _info(self) -> dict:
        success = self.best >= SUCCESS_REWARD
        failure = None if success or self.t < self.max_steps else "timeout"
        return {"success": success, "failure": failure, "phases_reached": self.best, "step": self.t}

    def reset(self, seed: int | None = None, options: dict | None = None):
        ts = reset_joint_env(self.env, self.cfg.task, object_pose(self.cfg.task, seed))
        self.t, self.best = 0, 0
        return self._obs(ts), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=float)
        if action.shape != (self.width,):
            raise ValueError(f"aloha: an action has {self.width} values (6 joints and a gripper per arm), got "
                             f"shape {action.shape}")
        ts = self.env.step(action)
        self.t += 1
        self.best = max(self.best, int(ts.reward or 0))
        info = self._info()
        return self._obs(ts), float(ts.reward or 0), info["success"], info["failure"] is not None, info
