"""The `evaluate` stage: does the policy act right, and does touch line up with sight?

Closed loop (`eval.rollouts` > 0): the exported policy drives the touch world on scenes
no training episode used (rollout.py): success rate with its 95% interval, per-phase
success, time to success, failure kinds, step timings, and two animated rollouts.

Open loop, on the held-out (val) episodes, from the caches and the exported policy:
1. action error in joint units (degrees for arm joints, the gripper's own unit), first
   action and whole chunk, per joint and per horizon, for the policy and two baselines:
   hold the current qpos, and constant-velocity extrapolation;
2. open-loop replay along each episode with and without temporal ensembling;
3. alignment: tactile -> wrist / third-person retrieval (top-1, top-5) and in-image
   localisation, each with its chance, against both targets: where the sensor is while in
   contact (the published positive) and where its touch next changes (the recipe's)
   (alignment.py);
outputs: metrics.json, plots/*.csv and a self-contained report.html.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import AlohaConfig, CameraConfig, EvalConfig, RobotConfig, SensorConfig, WorldConfig
from ..data.caches import Caches, chunk_window
from ..data.codec import ActionCodec
from ..errors import StoreError
from ..model.policy import TemporalEnsembler, load_model
from ..pipeline.atomic import atomic_dir, write_json
from ..pipeline.runtime import ThreadTuner
from .alignment import alignment, alignment_rows
from .reliance import donor_rows, predict_chunks, touch_reliance
from .rollout import RolloutResult, check_compatible, run_rollout, summarise, write_gif

BATCH = 64


# --------------------------------------------------------------------------- action metrics
def joint_units(x: np.ndarray, angle_columns: list[int]) -> np.ndarray:
    """(..., D) radians -> degrees on the arm-joint columns; other columns unchanged."""
    out = np.array(x, dtype=float, copy=True)
    if angle_columns:
        out[..., angle_columns] = np.rad2deg(out[..., angle_columns])
    return out


def chunk_targets(action: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray, chunk: int, shift: int):
    """Ground-truth chunks (R, k, D) and validity (R, k) for global rows, per episode bounds."""
    R, D = len(rows), action.shape[1]
    target = np.zeros((R, chunk, D))
    valid = np.zeros((R, chunk), bool)
    for i, (row, s, e) in enumerate(zip(rows, starts, ends, strict=True)):
        a0, n = chunk_window(int(row), int(s), int(e), chunk, shift)
        target[i, :n] = action[a0: a0 + n]
        valid[i, :n] = True
    return target, valid


def baselines(qpos: np.ndarray, rows: np.ndarray, starts: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """hold: qpos[t] at every horizon; constant velocity: qpos[t] + (h + 1) * (qpos[t] - qpos[t-1])."""
    q = qpos[rows]  # (R, D)
    prev = qpos[np.maximum(rows - 1, starts)]
    h = np.arange(1, chunk + 1)[None, :, None]
    return {"hold": np.repeat(q[:, None], chunk, axis=1), "const_vel": q[:, None] + h * (q - prev)[:, None]}


def action_errors(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict:
    """pred/target (R, k, D) in joint units -> first-action and chunk L1 per joint and mean,
    and L1 by horizon."""
    err = np.abs(pred - target)  # (R, k, D)
    v = valid[..., None]
    per_joint_chunk = (err * v).sum((0, 1)) / np.maximum(v.sum((0, 1)), 1)
    first = err[:, 0][valid[:, 0]]
    per_joint_first = first.mean(0) if len(first) else np.full(err.shape[-1], np.nan)
    horizon = (err.mean(-1) * valid).sum(0) / np.maximum(valid.sum(0), 1)
    return {"first_l1": float(per_joint_first.mean()), "chunk_l1": float(per_joint_chunk.mean()),
            "per_joint_first": per_joint_first.tolist(), "per_joint_chunk": per_joint_chunk.tolist(),
            "horizon": horizon.tolist()}


def replay(chunks: np.ndarray, k: float, ensemble: bool) -> np.ndarray:
    """Executed actions (T, D) of an open-loop replay from per-step chunk predictions (T, c, D):
    with ensembling, every step averages all chunks covering it; without, a new chunk is
    taken every c steps and executed in full (ACT without ensembling)."""
    T, c, _ = chunks.shape
    if ensemble:
        ens = TemporalEnsembler(c, k)
        return np.stack([ens.step(chunks[t]) for t in range(T)])
    return np.stack([chunks[t - t % c][t % c] for t in range(T)])


# --------------------------------------------------------------------------- the stage
def load_trained(train_dir: Path, device):
    """The exported policy of a train stage's output and its HSA heads (None without HSA)."""
    policy, hsa, meta = load_model(Path(train_dir) / "policy")
    return policy.to(device), (hsa.to(device) if hsa is not None else None), meta


def open_loop(cfg: EvalConfig, caches: Caches, rows: np.ndarray, train_dir: Path, device) -> tuple[dict, dict, dict]:
    """Action errors against baselines, open-loop replay and alignment on held-out frames.
    -> (metrics, per-model error results, the loaded policy and HSA heads)."""
    policy, hsa, meta = load_trained(train_dir, device)
    codec = ActionCodec.from_stats(caches.stats, meta["act"].get("relative_actions", False))
    angles = caches.geometry_info.angle_columns
    k, shift, offs = meta["act"]["chunk_size"], caches.manifest.action_shift, caches.manifest.offsets
    eps = np.array([caches.episode_of(int(r)) for r in rows])
    starts, ends = offs[eps], offs[eps + 1]

    pred = codec.decode(predict_chunks(policy, caches, rows, device), caches.qpos_raw[rows])  # (R, k, D) raw units
    target, valid = chunk_targets(caches.action_raw, starts, ends, rows, k, shift)
    to_units = lambda x: joint_units(x, angles)  # noqa: E731
    results = {"policy": action_errors(to_units(pred), to_units(target), valid)}
    if caches.qpos_raw.shape[1] == caches.action_raw.shape[1]:  # baselines need actions in qpos space
        for name, b in baselines(caches.qpos_raw, rows, starts, k).items():
            results[name] = action_errors(to_units(b), to_units(target), valid)

    replay_err = {"ensembled": [], "chunked": []}
    for e in caches.manifest.split("val"):
        sel = np.isin(rows, np.arange(offs[e], offs[e + 1]))
        recorded = to_units(target[sel][:, 0])
        for mode, ens in (("ensembled", True), ("chunked", False)):
            executed = to_units(replay(pred[sel], cfg.ensemble_k, ens))
            replay_err[mode].append(np.abs(executed - recorded)[valid[sel][:, 0]].mean())
    align = alignment(caches, policy, hsa, rows, device, meta["hsa"]["positives"] if meta["hsa"] else None)
    reliance = touch_reliance(policy, caches, rows, codec, valid, to_units, device, base=to_units(pred))
    metrics = {
        "chunk_l1": results["policy"]["chunk_l1"], "first_l1": results["policy"]["first_l1"],
        **{f"{b}_chunk_l1": results[b]["chunk_l1"] for b in ("hold", "const_vel") if b in results},
        **{f"{b}_first_l1": results[b]["first_l1"] for b in ("hold", "const_vel") if b in results},
        "replay_l1_ensembled": float(np.mean(replay_err["ensembled"])),
        "replay_l1_chunked": float(np.mean(replay_err["chunked"])),
        "hsa_enabled": hsa is not None,
        "alignment": align,
        "touch_reliance": reliance,
        "units": "degrees for arm joints, raw units for other columns",
        "val_frames": int(len(rows)),
    }
    if "hold" in results:
        metrics["chunk_l1_vs_hold"] = metrics["chunk_l1"] / max(metrics["hold_chunk_l1"], 1e-12)
    return metrics, results, {"policy": policy, "hsa": hsa}


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


def simulator(world: WorldConfig, aloha: AlohaConfig, robot: RobotConfig, sensors: dict[str, SensorConfig],
              cameras: dict[str, CameraConfig], max_steps: int):
    """The closed-loop environment of `world.kind`, its scene seeds (disjoint from the
    demonstrations') and the names of its phases: -> (env, scene_seed, phase names)."""
    if world.kind == "aloha":
        from ..aloha.env import AlohaEnv
        from ..aloha.record import scene_seed

        env = AlohaEnv(aloha, max_steps)
        return env, scene_seed, env.phase_names
    from ..world import TouchWorld
    from ..world.synth import scene_seed
    from ..world.tasks import phases

    env = TouchWorld(world, robot, sensors, cameras, max_steps=max_steps)
    return env, scene_seed, phases(world)


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
    held = caches.hold_rows(np.union1d(rows, donor_rows(caches, rows)), cfg.memory_budget_gb)
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


def touch_summary(metrics: dict) -> str:
    """Does the policy act on touch? A few lines for the console and TensorBoard."""
    lines = []
    for phase, v in (metrics.get("touch_reliance") or {}).items():
        if isinstance(v, dict) and v.get("frames") and "reliance" in v:
            lines.append(f"touch reliance {phase}: {v['reliance']:.2f} (tactile swap moves the chunk "
                         f"{v['tactile_swap']:.2f}, a camera swap up to {v['camera_swap']:.2f} deg): {v['reading']}")
    decision = (metrics.get("closed_loop") or {}).get("decision") or {}
    if decision.get("checked"):
        follows = decision["follows_touch"]
        lines.append(f"decision at each arm's pick-up: the right tile in {decision['accuracy']:.0%} of "
                     f"{decision['checked']} pick-ups; turns to the tile a swapped touch names: "
                     f"{'n/a' if follows is None else f'{follows:.0%}'}")
    arms = (metrics.get("closed_loop") or {}).get("per_arm") or {}
    for arm, v in arms.items() if len(arms) > 1 else ():
        right = "n/a" if v["decision_right"] is None else f"{v['decision_right']:.0%}"
        lines.append(f"arm {arm}: decision right {right}; picked up {v['picked_up']:.0%}, put down on a tile "
                     f"{v['on_a_tile']:.0%}, on the right one {v['right_tile']:.0%} (ends with the other arm's failure)")
    return "\n".join(lines)


def tensorboard_scalars(metrics: dict) -> dict[str, float]:
    """The evaluation's headline figures as TensorBoard scalars (tag -> value)."""
    out = {}
    closed = metrics.get("closed_loop") or {}
    if closed:
        out["eval/success_rate"] = closed["success_rate"]
        if (closed.get("decision") or {}).get("checked"):
            out["eval/decision_accuracy"] = closed["decision"]["accuracy"]
            if closed["decision"]["follows_touch"] is not None:
                out["eval/decision_follows_touch"] = closed["decision"]["follows_touch"]
        for arm, v in (closed.get("per_arm") or {}).items():
            if v["decision_right"] is not None:
                out[f"eval/decision_right/{arm}"] = v["decision_right"]
    for phase, v in (metrics.get("touch_reliance") or {}).items():
        if isinstance(v, dict) and v.get("frames"):
            tag = phase.replace(" ", "_")
            for k in ("reliance", "tactile_swap", "tactile_blank"):
                if v.get(k) is not None and math.isfinite(v[k]):
                    out[f"touch/{k}/{tag}"] = v[k]
    out["eval/chunk_l1"] = metrics["chunk_l1"]
    return out


def write_tensorboard(directory: Path, metrics: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    for tag, value in tensorboard_scalars(metrics).items():
        writer.add_scalar(tag, float(value), 0)
    writer.add_text("touch", touch_summary(metrics), 0)
    writer.close()


# --------------------------------------------------------------------------- outputs
def write_outputs(out: Path, metrics: dict, results: dict, caches: Caches, models: dict, rows, cfg: EvalConfig,
                  examples: dict[str, RolloutResult], outcomes: list[RolloutResult], device) -> None:
    from .report import render_report

    names = list(results)
    align = alignment_rows(metrics["alignment"])
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", _round(metrics))
        plots = tmp / "plots"
        plots.mkdir()
        horizon = np.array([results[n]["horizon"] for n in names]).T
        _csv(plots / "horizon.csv", ["horizon"] + names, [[h + 1, *row] for h, row in enumerate(horizon)])
        per_joint = np.array([results[n]["per_joint_chunk"] for n in names]).T
        joints = caches.geometry_info.column_names
        _csv(plots / "per_joint.csv", ["joint"] + names, [[joints[j], *row] for j, row in enumerate(per_joint)])
        _csv(plots / "retrieval.csv", ["query", "metric", "value", "chance"],
             [[q, m, v[m], v.get(f"{m}_chance", v.get("loc_chance"))] for q, v in align
              for m in ("top1", "top5", "loc_acc") if m in v])
        (tmp / "rollouts").mkdir()  # one animated success and one failure, when there are rollouts
        if "closed_loop" in metrics:
            phase = metrics["closed_loop"]["phase_success"]
            _csv(plots / "phases.csv", ["phase", "success"], [[k, float(v)] for k, v in phase.items()])
            _csv(tmp / "rollouts" / "outcomes.csv", OUTCOME_COLUMNS, [outcome_row(i, r) for i, r in enumerate(outcomes)])
            for kind, r in examples.items():
                write_gif(r.frames, tmp / "rollouts" / f"{kind}.gif")
        write_tensorboard(tmp / "tb", metrics)
        render_report(tmp / "report.html", metrics, results, caches, models, rows, cfg, examples, device)


OUTCOME_COLUMNS = ["scene", "seed", "success", "failure", "phases_reached", "steps", "decision_correct",
                   "follows_touch"]


def outcome_row(scene: int, r: RolloutResult) -> list:
    """One rollout as a row of rollouts/outcomes.csv (what paired comparisons read)."""
    checked = [d for d in r.decisions if d is not None]
    every_arm = bool(r.decisions) and len(checked) == len(r.decisions)  # decision_correct: all arms, each at its pick-up
    follows = [d["follows_touch"] for d in checked if d["follows_touch"] is not None]
    return [scene, r.seed, int(r.success), (r.failure or "").replace(",", ";"), r.phases_reached, r.steps,
            int(all(d["correct"] for d in checked)) if every_arm else "", float(np.mean(follows)) if follows else ""]


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    lines = [",".join(header)] + [",".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _round(x):
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x
