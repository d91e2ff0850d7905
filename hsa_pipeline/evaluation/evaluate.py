"""The `evaluate` stage: does the policy act right, and does touch line up with sight?

Closed loop (`eval.rollouts` > 0): the exported policy drives the touch world on scenes
no training episode used (rollout.py): success rate with its 95% interval, per-phase
success, time to success, failure kinds, step timings, and two animated rollouts.

Open loop, on the held-out (val) episodes, from the caches and the exported policy
(open_loop.py):
1. action error in joint units (degrees for arm joints, the gripper's own unit), first
   action and whole chunk, per joint and per horizon, for the policy and two baselines:
   hold the current qpos, and constant-velocity extrapolation;
2. open-loop replay along each episode with and without temporal ensembling;
3. alignment: tactile -> wrist / third-person retrieval (top-1, top-5) and in-image
   localisation, each with its chance, against both targets: where the sensor is while in
   contact (the published positive) and where its touch next changes (the recipe's)
   (alignment.py);
outputs: metrics.json, plots/*.csv, TensorBoard and a self-contained report.html (outputs.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import AlohaConfig, CameraConfig, EvalConfig, RobotConfig, SensorConfig, WorldConfig
from ..data.caches import Caches
from ..errors import StoreError
from ..pipeline.runtime import ThreadTuner
from .alignment import alignment_rows
from .open_loop import open_loop
from .outputs import touch_summary, write_outputs
from .reliance import donor_rows
from .rollout import RolloutResult, check_compatible, run_rollout, simulator, summarise


def closed_loop(cfg: EvalConfig, world: WorldConfig, aloha: AlohaConfig, robot: RobotConfig,
                sensors: dict[str, SensorConfig], cameras: dict[str, CameraConfig],
                train_dir: Path) -> tuple[dict, dict[str, RolloutResult], list[RolloutResult]]:
    """`cfg.rollouts` rollouts of the exported policy in the simulator `world.kind` names,
    on scenes no training episode used. -> (summary, {"success": one, "failure": one}
    recorded rollouts, every rollout's result in scene order)."""
    from .rollout import policy_driver

    policy = policy_driver(Path(train_dir) / "policy", cfg.server, os.environ.get("HSA_API_KEY"))
    env, scene_seed, phase_names = simulator(world, aloha, robot, sensors, cameras, cfg.max_steps)
    check_compatible(policy, env, cfg.server or str(Path(train_dir) / "policy"))
    if cfg.server:
        from ..serving.server import policy_hash

        local = policy_hash(Path(train_dir) / "policy")
        if policy.meta["policy_sha256"] != local:
            raise StoreError(f"eval.server: {cfg.server} serves policy {policy.meta['policy_sha256'][:12]}, not "
                             f"{Path(train_dir) / 'policy'} ({local[:12]}); restart `hsa serve` on this policy")
    threads = ThreadTuner(cfg.threads)
    results, examples = [], {}
    for j in tqdm(range(cfg.rollouts), desc="evaluate: rollouts", unit="rollout"):
        record = len(examples) < 2  # keep the frames of the first success and the first failure
        r = run_rollout(env, policy, scene_seed("eval", cfg.seed, j), cfg.ensemble_k, record, threads)
        key = "success" if r.success else "failure"
        if record and key not in examples:
            examples[key] = r
        results.append(r)
    summary = summarise(results, phase_names, cfg.max_steps)
    summary["task"] = f"aloha {aloha.task}" if world.kind == "aloha" else world.task
    summary["driven_by"] = cfg.server or "in-process"
    # guessing the tile succeeds 1 in candidates for each arm, and the scene needs every arm
    summary["guess_rate"] = (1 / world.candidates) ** len(env.tasks) if env.touch_decisions else None
    return summary, examples, results


def run_evaluate(cfg: EvalConfig, world: WorldConfig, aloha: AlohaConfig, robot: RobotConfig,
                 sensors: dict[str, SensorConfig], cameras: dict[str, CameraConfig], prepare_dir: Path,
                 geometry_path: Path, features_path: Path, train_dir: Path, out: Path) -> dict:
    """Score the policy in `train_dir`: open loop on the held-out episodes, closed loop in
    the touch world -> metrics.json, plots/, report.html in `out`."""
    ThreadTuner(cfg.threads)
    device = torch.device("cpu")
    caches = Caches(prepare_dir, geometry_path, features_path, memory_budget_gb=0)
    rows = caches.rows("val")
    # only the validation frames and the frames the touch-reliance swaps read, held when
    # they fit eval.memory_budget_gb, else read per batch: memory is bounded either way
    held = caches.load_rows(np.union1d(rows, donor_rows(caches, rows)), cfg.memory_budget_gb)
    print(f"evaluate: {held / 2**20:.0f} MiB of validation token grids held in RAM" if held else
          f"evaluate: the validation token grids exceed eval.memory_budget_gb ({cfg.memory_budget_gb} GB): "
          "read from the feature store per batch")
    if not len(rows):
        n, skipped = len(caches.manifest.episodes), len(caches.manifest.info.skipped)
        raise StoreError(f"evaluate: no validation episodes in {prepare_dir}: prepare found {n} usable episode(s) "
                         f"({skipped} skipped, see episodes.json) and put all of them in training; record more "
                         f"episodes or lower data.train_ratio")
    metrics, results, models = open_loop(cfg, caches, rows, train_dir, device)
    examples: dict[str, RolloutResult] = {}
    outcomes: list[RolloutResult] = []
    if cfg.rollouts:
        summary, examples, outcomes = closed_loop(cfg, world, aloha, robot, sensors, cameras, train_dir)
        metrics = {"success_rate": summary["success_rate"], "success_ci95": summary["success_ci95"], **metrics,
                   "closed_loop": summary}
    write_outputs(Path(out), metrics, results, caches, models, rows, cfg, examples, outcomes, device)
    print("\n".join("evaluate: " + line for line in touch_summary(metrics).splitlines()))
    closed = (f"success {metrics['success_rate']:.0%} [{metrics['success_ci95'][0]:.0%}, "
              f"{metrics['success_ci95'][1]:.0%}] over {cfg.rollouts} rollouts; " if cfg.rollouts else "")
    print(f"evaluate: {closed}chunk L1 {metrics['chunk_l1']:.3f} (hold {metrics.get('hold_chunk_l1', float('nan')):.3f},"
          f" const-vel {metrics.get('const_vel_chunk_l1', float('nan')):.3f}); alignment "
          + ", ".join(f"{k}: top1 {v.get('top1', float('nan')):.2f} (chance {v.get('top1_chance', float('nan')):.2f}), "
                      f"loc {v['loc_acc']:.2f} (chance {v['loc_chance']:.2f})"
                      for k, v in alignment_rows(metrics["alignment"], trained_only=True)))
    return metrics


