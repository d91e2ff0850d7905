"""The ALOHA study: ACT on cached encoder grids against the ACT paper's figures, on
gym-aloha's simulated bimanual tasks (issue #43; docs/aloha.md).

Records the scripted demonstrations once (the real `synth` stage with `world.kind: aloha`),
caches prepare, geometry and features once, then for each training seed trains to each
step count in --steps in turn (a run continues to the next count: a learning curve over
training steps) and evaluates closed loop in gym-aloha after each: success (the task's own
reward 4) pooled over seeds with a 95% Wilson interval, how far the rollouts got (the
task's reward stages), and each stage's wall time. Every evaluation uses the same scenes
(eval.seed). Writes study.md and study.json in --out.

    python scripts/aloha_study.py --preset presets/aloha-sim/transfer-cube.yaml --out outputs/aloha-cube \
        [--seeds 0 1 2] [--steps 2000 5000] [--rollouts 50] [--jobs 2] [--set train.batch_size=8 ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import yaml  # noqa: E402
from hsa_study import SHARED, StageCost, build_dataset, format_gb, stage, write_params  # noqa: E402

from hsa_pipeline.config import apply_overrides, params_from_dict, preset_overrides  # noqa: E402
from hsa_pipeline.evaluation.rollout import wilson  # noqa: E402
from hsa_pipeline.pipeline.paths import EVAL  # noqa: E402

# Published figures (success of the task's last stage) and what they trained with.
REFERENCES = {
    "transfer_cube": [
        ("ACT paper (arXiv 2304.13705, Table I), 50 scripted demonstrations, 3 seeds x 50 trials", "90%",
         "ResNet18 (ImageNet) fine-tuned end to end, chunk 100, batch 8"),
        ("LeRobot act_aloha_sim_transfer_cube_human (model card), 500 episodes", "87.6%",
         "100k steps, batch 8, ~2.5 h on an RTX 3090 (human demonstrations)"),
        ("a LeRobot ACT on aloha_sim_transfer_cube_scripted (model card), 200 episodes", "93.0% (88.6-95.8)",
         "100k steps, batch 8, one RTX 5090")],
    "insertion": [
        ("ACT paper (arXiv 2304.13705, Table I), 50 scripted demonstrations, 3 seeds x 50 trials", "50%",
         "ResNet18 (ImageNet) fine-tuned end to end, chunk 100, batch 8")],
}


def train_and_evaluate_curve(d: Path, shared: Path, overrides: list[str], steps: list[int]) -> dict:
    """One training seed: train to each step count in turn (continuing the run), evaluate
    after each; each evaluation's metrics kept in d/at-<steps>/. -> each stage's cost."""
    for item in SHARED:  # the one dataset and its caches
        link = d / item
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(shared / item)
    costs = {}
    for n in steps:
        write_params(d, overrides + [f"train.steps={n}"])
        with open(d / "run.log", "a") as log:
            costs[f"train to {n}"] = stage("train", d, log)
            costs[f"evaluate at {n}"] = stage("evaluate", d, log)
        kept = d / f"at-{n}"
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir()
        shutil.copy(d / EVAL / "metrics.json", kept / "metrics.json")
        shutil.copytree(d / EVAL / "rollouts", kept / "rollouts")
    return costs


def summarise(runs: list[dict], steps: list[int]) -> list[dict]:
    rows = []
    for n in steps:
        closed = [r["at"][n]["closed_loop"] for r in runs]
        k, total = sum(c["successes"] for c in closed), sum(c["rollouts"] for c in closed)
        lo, hi = wilson(k, total)
        stages = list(closed[0]["phase_success"])
        rows.append({"steps": n, "successes": k, "rollouts": total, "success": k / total, "ci95": [lo, hi],
                     "per_seed": [c["success_rate"] for c in closed],
                     "stages": {s: sum(c["phase_success"][s] for c in closed) / len(closed) for s in stages},
                     "val_l1": [r["at"][n].get("chunk_l1") for r in runs]})
    return rows


def render(task: str, rows: list[dict], args, minutes: float, costs: dict[str, StageCost]) -> str:
    lines = [f"ALOHA study: {task}, training seeds {args.seeds}, {args.rollouts} rollouts per evaluation (the same "
             f"scenes each time), presets {[str(p) for p in args.preset]}, overrides {args.set or 'none'}; "
             f"{minutes:.0f} min", "",
             "| training steps | success (pooled) | 95% interval | per seed | " + " | ".join(rows[0]["stages"]) + " |",
             "|---|---|---|---|" + "---|" * len(rows[0]["stages"])]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['successes']}/{r['rollouts']} = {r['success']:.0%} | {r['ci95'][0]:.0%}-"
                     f"{r['ci95'][1]:.0%} | {', '.join(f'{s:.0%}' for s in r['per_seed'])} | "
                     + " | ".join(f"{v:.0%}" for v in r["stages"].values()) + " |")
    lines += ["", "Published figures:", "", "| reference | success | training |", "|---|---|---|"]
    lines += [f"| {ref} | {rate} | {budget} |" for ref, rate, budget in REFERENCES[task]]
    lines += ["", "Each stage: wall time (this machine, with whatever else ran) and the peak resident memory "
              "of its process:", ""]
    lines += [f"- {k}: {c.seconds:.0f} s, {format_gb(c.peak_rss_gb)}" for k, c in costs.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", action="append", required=True, type=Path, help="presets/aloha-sim/<task>.yaml")
    ap.add_argument("--out", type=Path, default=Path("outputs/aloha-study"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[2000, 5000], help="evaluate after these many steps")
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=1, help="training seeds at once (each uses train.threads threads)")
    ap.add_argument("--set", action="append", default=[], help="override for every run, e.g. train.batch_size=8")
    args = ap.parse_args()
    out, steps = args.out.resolve(), sorted(args.steps)
    base = [o for p in args.preset for o in preset_overrides(p)] + args.set + [f"eval.rollouts={args.rollouts}"]
    p = params_from_dict(apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), base))
    if p.world.kind != "aloha":
        raise SystemExit(f"aloha_study: the presets give world.kind {p.world.kind!r}; pass presets/aloha-sim/<task>.yaml")
    task = p.aloha.task
    t0 = time.perf_counter()
    costs: dict[str, StageCost] = {}
    shared = build_dataset(out / "shared", base, costs)
    jobs = [(out / f"s{seed}", [*base, f"train.seed={seed}"]) for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for (d, _), c in zip(jobs, pool.map(lambda j: train_and_evaluate_curve(j[0], shared, j[1], steps), jobs), strict=True):
            costs.update({f"{d.name}: {k}": v for k, v in c.items()})
    runs = [{"seed": s, "at": {n: json.loads((out / f"s{s}" / f"at-{n}" / "metrics.json").read_text()) for n in steps}}
            for s in args.seeds]
    rows = summarise(runs, steps)
    demos = json.loads((shared / "data" / "aloha" / task / "episodes" / "demos.json").read_text()) \
        if (shared / "data" / "aloha" / task / "episodes" / "demos.json").exists() else None
    text = render(task, rows, args, (time.perf_counter() - t0) / 60, costs)
    if demos:
        text += (f"\nThe scripted expert solved {demos['episodes']} of {demos['tried']} demonstration scenes "
                 f"({demos['expert_success_rate']:.0%}); images {demos['image_size']}, shadows {demos['shadows']}.\n")
    (out / "study.md").write_text(text)
    times = {k: c.seconds for k, c in costs.items()}
    memory_gb = {k: c.peak_rss_gb for k, c in costs.items()}
    (out / "study.json").write_text(json.dumps({"rows": rows, "demos": demos, "times": times, "peak_rss_gb": memory_gb,
                                                "runs": [{"seed": r["seed"], "at": {str(n): m for n, m in r["at"].items()}}
                                                         for r in runs]}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
