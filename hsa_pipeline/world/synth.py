"""The embedded demo dataset: the touch world's scripted expert, recorded as HDF5 episodes.

One renderer and one rig for training data and evaluation: each episode is a scene of
the world (`world/`) reset with a training seed, the expert acting in it step by step,
and what the env observed at each step recorded as frame t with the expert's target as
action t (so `data.action_shift: 0`). Scenes are a pure function of `synth.seed`; the
evaluation's rollouts use disjoint seeds (`scene_seed`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import CameraConfig, RobotConfig, SensorConfig, SynthConfig, WorldConfig
from ..data.episodes import write_episode
from ..pipeline.scenes import scene_seed


def key_classes(cfg: WorldConfig, seed: int, index: int, n_arms: int) -> list[int]:
    """The deciding class of each arm in training episode `index`, by a balanced design:
    each run of C = object_classes episodes (0..C-1, C..2C-1, ...) shows every class once on
    every arm, and each run of C**n_arms episodes shows every combination of the arms'
    classes once, same-class pairs included. So no arm's class follows from another's,
    as at evaluation, where each arm's class is drawn alone. Run b of C episodes gives arm
    a > 0 the classes of arm 0 shifted by one offset; the runs take the C**(n_arms-1)
    offset vectors in a seeded order. With one arm: a seeded permutation, repeated."""
    c = cfg.object_classes
    perm = np.random.default_rng([seed, 7]).permutation(c)
    run, j = divmod(index, c)
    n_runs = c ** (n_arms - 1)  # offset vectors: every combination once
    code = int(np.random.default_rng([seed, 8]).permutation(n_runs)[run % n_runs])
    offsets = [0] + [(code // c ** (a - 1)) % c for a in range(1, n_arms)]
    return [int(perm[(j + off) % c]) for off in offsets]


def record_episode(env, seed: int, classes: list[int] | None = None) -> dict:
    """Run the scripted expert in `env` on scene `seed`: qpos (T, D), action (T, D), the
    images and tactile images per stream (T, H, W, 3), and the truth: `felt_class` (sensor ->
    (T,) class the sensor feels, -1 for none) and whether the expert succeeded."""
    from .expert import ScriptedExpert

    obs, info = env.reset(seed=seed, options={"key_classes": classes})
    expert = ScriptedExpert(env)
    expert.reset()
    frames, actions, felt_class = [], [], {t.sensor: [] for t in env.tasks}
    for _ in range(expert.length):
        frames.append(obs)
        for task in env.tasks:
            felt_class[task.sensor].append(env.felt_class(task))
        action = expert.act()
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
    frames.append(obs)  # the final frame holds still: its action is to stay
    for task in env.tasks:
        felt_class[task.sensor].append(env.felt_class(task))
    actions.append(env.qpos.copy())
    return {"qpos": np.stack([f["qpos"] for f in frames]).astype(np.float64), "action": np.stack(actions),
            "images": {c: np.stack([f[c] for f in frames]) for c in env.rig.cameras},
            "tactile": {s: np.stack([f[s] for f in frames]) for s in env.rig.sensors},
            "felt_class": {s: np.array(v) for s, v in felt_class.items()}, "success": bool(info["success"]),
            "failure": info["failure"]}


def run_synth(cfg: SynthConfig, world: WorldConfig, robot: RobotConfig, sensors: dict[str, SensorConfig],
              cameras: dict[str, CameraConfig], out_dir: str | Path) -> Path:
    """Write the demo episodes (atomically) to `out_dir`/episodes."""
    from ..pipeline.atomic import atomic_dir
    from . import TouchWorld

    out = Path(out_dir) / "episodes"
    env = TouchWorld(world, robot, sensors, cameras, max_steps=10**6)
    with atomic_dir(out) as tmp:
        for i in tqdm(range(cfg.episodes), desc="synth: recording the expert", unit="ep"):
            ep = record_episode(env, scene_seed("train", cfg.seed, i), key_classes(world, cfg.seed, i, len(env.sensing_arms)))
            if not ep["success"]:
                raise RuntimeError(f"synth: the scripted expert failed scene {i} ({ep['failure']}); a bug in the "
                                   f"world or its expert, or a rig the expert cannot reach")
            write_episode(tmp / f"episode_{i}.hdf5", ep["qpos"], ep["action"], ep["images"], ep["tactile"],
                          layout=cfg.layout, jpeg_quality=cfg.jpeg_quality)
    return out
