"""Demonstrations of the ACT paper's kind: the scripted expert's joint targets run in
gym-aloha's joint-space environment, which records the observations; an episode that does
not reach the task's top reward is dropped and counted. Written as ACT/ALOHA HDF5 (`/observations/qpos` 14, `/action` 14,
`/observations/images/top`), read by the pipeline's normal episode reader.

Step t of an episode: the observation before action t, and action t (the ACT scripts'
alignment: `data.action_shift: 0`). Scenes: demonstration seeds are even, evaluation
seeds odd (`scene_seed`), so no evaluation scene was demonstrated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import AlohaConfig
from ..pipeline.scenes import scene_seed
from .expert import ScriptedAlohaExpert
from .sim import SUCCESS_REWARD, joint_env, object_pose, reset_joint_env


@dataclass
class Demo:
    seed: int
    success: bool  # the replay reached the task's top reward
    max_reward: int
    qpos: np.ndarray  # (T, 14) observed before each action
    action: np.ndarray  # (T, 14) joint targets (grippers normalised 0 closed .. 1 open)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # top -> (T, H, W, 3), when rendered


def replay(task: str, pose: np.ndarray, actions: np.ndarray, size: tuple[int, int] | None = (480, 640),
           shadows: bool = True):
    """Actions (T, 14) in the joint-space environment from the scene with the object at
    `pose`: -> (qpos (T, 14) before each action, top images (T, H, W, 3) or None, the
    rewards after each action (T,)). `size`: (height, width) of the top camera, None to
    render nothing."""
    env = joint_env(task, size, shadows)
    ts = reset_joint_env(env, task, pose)
    qpos, images, rewards = [], [], []
    for a in actions:
        qpos.append(np.asarray(ts.observation["qpos"], dtype=float))
        if size is not None:
            images.append(ts.observation["images"]["top"])
        ts = env.step(a)
        rewards.append(float(ts.reward or 0.0))
    return np.stack(qpos), (np.stack(images) if size is not None else None), np.asarray(rewards)


def demonstrate(expert: ScriptedAlohaExpert, seed: int, size: tuple[int, int] | None = (480, 640),
                shadows: bool = True) -> Demo:
    """One demonstration of scene `seed`: the expert's joint targets, run and recorded."""
    task = expert.task
    pose = object_pose(task, seed)
    actions = expert.joint_targets(pose)
    qpos, images, rewards = replay(task, pose, actions, size, shadows)
    best = int(rewards.max())
    return Demo(seed, best >= SUCCESS_REWARD, best, qpos, actions, {"top": images} if images is not None else {})


def record_demos(cfg: AlohaConfig, episodes: int, out_dir: str | Path, seed: int = 0,
                 max_tries: int | None = None) -> dict:
    """Record `episodes` successful demonstrations of `cfg.task` into `out_dir`/episodes
    (atomically: a killed run leaves no folder that looks complete), trying consecutive
    demonstration scenes; failed ones are dropped and counted. -> the summary, also written
    to `out_dir`/episodes/demos.json: the expert's success rate, the seeds kept and dropped."""
    from ..data.episodes import write_episode
    from ..pipeline.atomic import atomic_dir

    out = Path(out_dir) / "episodes"
    expert = ScriptedAlohaExpert(cfg.task, cfg.episode_steps)
    size = (cfg.image_height, cfg.image_width)
    kept, dropped = [], []
    tries = max_tries if max_tries is not None else 2 * episodes + 10
    with atomic_dir(out) as tmp, tqdm(total=episodes, desc=f"synth: aloha {cfg.task} demonstrations", unit="ep") as bar:
        index = 0
        while len(kept) < episodes and index < tries:
            s = scene_seed("train", seed, index)
            demo = demonstrate(expert, s, size, cfg.shadows)
            index += 1
            if not demo.success:
                dropped.append({"seed": s, "max_reward": demo.max_reward})
                continue
            write_episode(tmp / f"episode_{len(kept)}.hdf5", demo.qpos, demo.action, demo.images, {}, layout="act",
                          compression="gzip")
            kept.append(s)
            bar.update(1)
        if len(kept) < episodes:
            raise RuntimeError(f"aloha {cfg.task}: the scripted expert solved {len(kept)} of {index} scenes, fewer "
                               f"than the {episodes} asked for; a bug in the expert or the environment")
        summary = {"task": cfg.task, "episodes": len(kept), "tried": index, "expert_success_rate": len(kept) / index,
                   "kept_seeds": kept, "dropped": dropped, "image_size": list(size), "shadows": cfg.shadows,
                   "steps": cfg.episode_steps}
        (tmp / "demos.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
