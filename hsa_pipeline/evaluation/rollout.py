"""Closed-loop evaluation: the exported policy drives the touch world (or gym-aloha's tasks,
aloha/env.py, behind the same interface).

The same code path a real robot uses: `Policy` computes features from the raw images
with the online encoder (the cache's exact preprocessing), ACT predicts a chunk, and
temporal ensembling turns the chunks into one action per step. A rollout ends on success,
on a failure the world detects (wrong tile, collision, joint limit) or after
`eval.max_steps` steps (timeout). Those are the world's failures, counted. An exception
is not a failure of the policy but a bug in our code (or the world's): it stops the
evaluation with its traceback and the scene it happened in, so it never reads as "0%".

Success rates come with a 95% Wilson score interval (Wilson 1927), which stays inside
[0, 1] and is honest for small counts, unlike the normal approximation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import StoreError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion successes / n."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: list[bool], b: list[bool], z: float = Z95) -> tuple[float, float, float]:
    """Success of A minus success of B on the SAME scenes (and training seeds), with a 95%
    interval: the mean of the per-scene differences d in {-1, 0, 1} +- z * sd(d) / sqrt(n).
    Pairing removes the scene-to-scene spread that two independent rates would carry."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference: {len(a)} and {len(b)} outcomes; pair the same scenes")
    d = np.asarray(a, float) - np.asarray(b, float)
    half = z * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


@dataclass
class RolloutResult:
    seed: int
    success: bool
    failure: str | None  # None on success
    phases_reached: int
    steps: int
    ms: dict[str, list[float]] = field(default_factory=dict)  # per step: world, encode, act
    # match: each arm's decision check at the first step it carries its probe (decision_check),
    # None for an arm that never carried one while the policy drove
    decisions: list[dict | None] = field(default_factory=list)
    arms: list[dict] = field(default_factory=list)  # match: each arm's own outcome (arm_outcomes)
    frames: list[np.ndarray] = field(default_factory=list)  # contact sheets, when recorded


def check_compatible(policy, env, where: str) -> None:
    """One clear error when the policy was made for other streams or another action width."""
    missing = [s for s in policy.streams if s not in env.streams]
    width = policy.meta["shapes"]["action_dim"]
    if missing or width != env.width or policy.meta["shapes"]["qpos_dim"] != env.width:
        raise StoreError(f"{where}: the policy reads streams {policy.streams} and acts with {width} values, but the "
                         f"simulator (world.kind) renders {env.streams} and takes {env.width}; closed-loop evaluation "
                         f"needs a policy trained on that simulator's rig (for real-robot data set eval.rollouts: 0)")


def drive(env, seed: int, start, record: bool = False, threads=None) -> RolloutResult:
    """One scene until the world says it is over. `start()` is called after the reset and
    returns `choose(obs, ms) -> action` (which may time its parts into `ms`)."""
    from ..world import contact_sheet

    result = RolloutResult(seed, False, None, 0, 0, {"world": [], "encode": [], "act": []})
    try:
        obs, info = env.reset(seed=seed)
        choose = start()
        done = False
        while not done:
            if threads is not None:
                threads.update()
            if record:
                result.frames.append(contact_sheet(obs, env.streams, height=96))
            action = choose(obs, result.ms)
            t = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            result.ms["world"].append(1e3 * (time.perf_counter() - t))
            done = terminated or truncated
        if record:
            result.frames.append(contact_sheet(obs, env.streams, height=96))
        result.success, result.failure = bool(info["success"]), info["failure"]
        result.phases_reached, result.steps = int(info["phases_reached"]), int(info["step"])
    except Exception as e:
        e.add_note(f"(in the closed-loop rollout of scene seed {seed}, step {getattr(env, 't', '?')})")
        raise
    return result


def decision_check(env, policy, obs: dict, chunk: np.ndarray, seed: int, arm: int) -> dict:
    """match task, at the first step arm `arm` carries its probe (whatever the other arms
    do): which tile its part of the predicted chunk heads for (WorldTruth.chunk_places)
    against the true one, and whether the decision FOLLOWS TOUCH: with the tactile image
    of another candidate's class put in (the cameras unchanged), does the chunk turn to
    that candidate? (over the candidates that are neither the true tile nor the one
    already chosen; a policy that ignores touch scores 0, one that reads the felt class
    1). Guessing is right 1 in `candidates` per arm. Uses the world's truth, so it is an
    evaluation in the touch world only (never training)."""
    from ..world.truth import WorldTruth

    truth = WorldTruth(env)
    task = env.tasks[arm]
    chosen = truth.chunk_places(chunk)[arm]
    rng = np.random.default_rng([seed, 11, arm])  # the counterfactual's own draws: the rollout is unchanged
    follows = []
    for j, tile in enumerate(task.tiles):
        if tile.kind != "candidate" or j in (task.targets[0], chosen):
            continue  # a tile the chunk heads for already cannot show that it follows
        other = {**obs, task.sensor: truth.felt_image(task, tile.cls, rng)}
        follows.append(truth.chunk_places(policy.predict_chunk(other, obs["qpos"]))[arm] == j)
    return {"chosen": chosen, "true": task.targets[0], "correct": chosen == task.targets[0],
            "follows_touch": float(np.mean(follows)) if follows else None}


# closed_loop.per_arm: each arm's figures (key -> what it says), in the order tables show them
ARM_FIGURES = {"decision_right": "decision right", "picked_up": "picked up", "on_a_tile": "put down on a tile",
               "right_tile": "on the right tile"}


def arm_outcomes(env) -> list[dict]:
    """match: how far each arm got when the rollout ended: picked its probe up, put it down
    on a tile, on the right one. A rollout ends at the first failure of ANY arm, so an
    arm's later figures are censored by the other's failure (its decision is censored only
    where the other arm failed before this one picked its probe up: it is checked at this
    arm's own pick-up, whatever the other does)."""
    if not env.touch_decisions:
        return []
    return [{"arm": t.arm, "picked_up": t.carrying or t.placed is not None, "on_a_tile": t.placed_on is not None,
             "right_tile": t.placed_on is not None and t.placed_on == t.targets[0]} for t in env.tasks]


def run_rollout(env, policy, seed: int, ensemble_k: float, record: bool = False, threads=None) -> RolloutResult:
    """One scene with the policy in the loop: encode, ACT, temporal ensembling, each timed;
    on the match task, each arm's decision check at the first step it carries its probe."""
    from ..model.policy import TemporalEnsembler

    checked: dict[int, dict] = {}  # arm index -> its decision check

    def start():
        ens = TemporalEnsembler(policy.chunk_size, ensemble_k)

        def choose(obs, ms):
            t0 = time.perf_counter()
            tokens = policy.features({s: obs[s] for s in policy.streams})
            t1 = time.perf_counter()
            chunk = policy.predict_chunk(None, obs["qpos"], tokens)
            action = ens.step(chunk)
            ms["encode"].append(1e3 * (t1 - t0))
            ms["act"].append(1e3 * (time.perf_counter() - t1))
            if env.touch_decisions:
                for a, task in enumerate(env.tasks):
                    if task.carrying and a not in checked:
                        checked[a] = decision_check(env, policy, obs, chunk, seed, a)
            return action
        return choose

    result = drive(env, seed, start, record, threads)
    result.arms = arm_outcomes(env)
    result.decisions = [checked.get(a) for a in range(len(result.arms))]
    return result


def per_arm(results: list[RolloutResult]) -> dict[str, dict]:
    """match: each arm's own rates (arm_outcomes), and how often its decision at its own
    pick-up was right (of the rollouts in which it carried its probe)."""
    out: dict[str, dict] = {}
    for a, arm in enumerate(r["arm"] for r in (results[0].arms if results else [])):
        rows = [r.arms[a] for r in results]
        checks = [r.decisions[a]["correct"] for r in results if r.decisions[a] is not None]
        out[arm] = {k: sum(row[k] for row in rows) / len(rows) for k in rows[0] if k != "arm"}  # how far it got
        out[arm]["decision_right"] = sum(checks) / len(checks) if checks else None
    return out


def summarise(results: list[RolloutResult], phase_names: list[str], max_steps: int) -> dict:
    """Success rate with its interval, per-phase success, time to success, failure kinds, timings."""
    n = len(results)
    k = sum(r.success for r in results)
    low, high = wilson(k, n)
    failures: dict[str, int] = {}
    for r in results:
        if not r.success:
            kind = r.failure or "unknown"
            failures[kind] = failures.get(kind, 0) + 1
    steps_ok = [r.steps for r in results if r.success]
    per_step = {name: [x for r in results for x in r.ms.get(name, [])] for name in ("world", "encode", "act")}
    policy_ms = [e + a for r in results for e, a in zip(r.ms.get("encode", []), r.ms.get("act", []), strict=True)]

    def pct(xs, q):
        return float(np.percentile(xs, q)) if xs else None

    arm_runs = [d for r in results for d in r.decisions]  # one per (rollout, arm)
    checks = [d for d in arm_runs if d is not None]
    follows = [c["follows_touch"] for c in checks if c["follows_touch"] is not None]
    decisions = len(checks)
    correct = sum(c["correct"] for c in checks)

    return {
        "success_rate": k / n if n else None, "success_ci95": [low, high], "rollouts": n, "successes": k,
        "phase_success": {name: sum(r.phases_reached > i for r in results) / max(n, 1)
                          for i, name in enumerate(phase_names)},
        "time_to_success_steps": {"mean": float(np.mean(steps_ok)) if steps_ok else None,
                                  "median": float(np.median(steps_ok)) if steps_ok else None},
        "failures": failures, "max_steps": max_steps,
        "ms_per_step": {"world_render": pct(per_step["world"], 50), "encode": pct(per_step["encode"], 50),
                        "act_and_ensemble": pct(per_step["act"], 50)},
        "policy_step_ms": {"p50": pct(policy_ms, 50), "p99": pct(policy_ms, 99)},
        "decision": {"checked": decisions, "accuracy": correct / decisions if decisions else None,
                     "accuracy_ci95": list(wilson(correct, decisions)) if decisions else None,
                     "follows_touch": float(np.mean(follows)) if follows else None,
                     "never_carried": len(arm_runs) - decisions},
        "per_arm": per_arm(results),
    }


def write_gif(frames: list[np.ndarray], path, fps: float = 10.0) -> None:
    """An animated GIF of contact sheets (plays in any browser and image viewer)."""
    from PIL import Image

    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0,
                   optimize=True)


def run_expert(env, seed: int, record: bool = True) -> RolloutResult:
    """The scripted expert on one scene, recorded like a policy rollout (for comparison)."""
    from ..world import ScriptedExpert

    def start():
        expert = ScriptedExpert(env)  # plans from the scene the reset made
        expert.reset()
        return lambda obs, ms: expert.act()

    return drive(env, seed, start, record)


def run_aloha_expert(env, seed: int, record: bool = True) -> RolloutResult:
    """gym-aloha's scripted expert (its joint targets for the scene) driving the evaluation's
    environment, recorded like a policy rollout (it holds its last target past its plan)."""
    from ..aloha.expert import ScriptedAlohaExpert
    from ..aloha.sim import object_pose

    def start():
        targets = ScriptedAlohaExpert(env.cfg.task, env.cfg.episode_steps).joint_targets(object_pose(env.cfg.task, seed))
        return lambda obs, ms: targets[min(env.t, len(targets) - 1)]

    return drive(env, seed, start, record)


def policy_driver(policy_dir, server: str | None = None, api_key: str | None = None):
    """What drives a rollout: the exported policy in this process, or (`server`, a ws://
    address of `hsa serve`) the served one through openpi's client."""
    from pathlib import Path

    if server:
        from ..serving.client import RemotePolicy

        return RemotePolicy(server, api_key)
    from ..model.policy import Policy

    return Policy.load(Path(policy_dir), device="cpu")


def simulator(world, aloha, robot, sensors, cameras, max_steps: int):
    """The closed-loop environment of `world.kind`, its scene seeds (disjoint from the
    demonstrations') and the names of its phases: -> (env, scene_seed, phase names)."""
    from ..pipeline.scenes import scene_seed

    if world.kind == "aloha":
        from ..aloha.env import AlohaEnv

        env = AlohaEnv(aloha, max_steps)
        return env, scene_seed, env.phase_names
    from ..world import TouchWorld
    from ..world.tasks import phases

    env = TouchWorld(world, robot, sensors, cameras, max_steps=max_steps)
    return env, scene_seed, phases(world)


def rollout_animation(p, policy_dir, scene: int, out, expert: bool = False, server: str | None = None,
                      api_key: str | None = None) -> RolloutResult:
    """`hsa rollout`: scene `scene` of the evaluate stage's rollouts (eval.seed) in the
    simulator `world.kind` names, driven by the policy in `policy_dir` or at `server` (or
    the scripted expert), written as an animated GIF."""
    from pathlib import Path

    env, scene_seed, _ = simulator(p.world, p.aloha, p.robot, p.sensors, p.cameras, p.eval.max_steps)
    seed = scene_seed("eval", p.eval.seed, scene)
    if expert and p.world.kind == "aloha":
        result = run_aloha_expert(env, seed)
    elif expert:
        result = run_expert(env, seed)
    else:
        policy = policy_driver(policy_dir, server, api_key)
        check_compatible(policy, env, server or str(policy_dir))
        result = run_rollout(env, policy, seed, p.eval.ensemble_k, record=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_gif(result.frames, out)
    return result
