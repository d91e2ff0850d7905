"""What the `evaluate` stage writes and prints: metrics.json (rounded), plots/*.csv,
rollouts/ (outcomes.csv, animated GIFs), TensorBoard scalars and the touch summary, and the
HTML report (report.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import EvalConfig
from ..data.caches import Caches
from ..pipeline.atomic import atomic_dir, write_json
from .alignment import alignment_rows
from .rollout import RolloutResult, write_gif


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
