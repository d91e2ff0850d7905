"""The HSA study: does the HSA term make the policy better on the touch task?

Trains and evaluates, on ONE dataset of the touch world (params.yaml's `world`, with
`--set` overrides), each variant with several training seeds, then tabulates closed-loop
success (pooled over seeds and rollouts, with a 95% Wilson interval), chunk L1 and the
alignment metrics:

  hsa-on       ACT + HSA (params.yaml as it is)
  hsa-off      plain ACT on the same tokens (hsa.enabled=false)
  touch-blind  plain ACT that never sees the tactile stream (act.blind=[tactile]): the
               guessing baseline a touch-dependent task must beat

    python scripts/hsa_study.py --out outputs/study [--seeds 0 1 2] [--rollouts 50] \
        [--variants hsa-on hsa-off touch-blind] [--set synth.episodes=80 ...]

Every variant runs the real stages (`python -m stages.<name>`) in its own directory under
--out; the dataset and caches are built once, in --out/shared. A rerun continues: training
resumes or skips by its own content-keyed rule, evaluation reruns. Writes study.md and
study.json in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hsa_pipeline.config import apply_overrides, params_from_dict  # noqa: E402
from hsa_pipeline.rollout import wilson  # noqa: E402

VARIANTS = {
    "hsa-on": [],
    "hsa-off": ["hsa.enabled=false"],
    "touch-blind": ["hsa.enabled=false", "act.blind=[tactile]"],
}
SHARED = ["data", "outputs/prepare", "outputs/geometry.zarr", "outputs/features.zarr"]


def write_params(directory: Path, overrides: list[str]) -> None:
    raw = apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    params_from_dict(raw)  # validate before any work
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def stage(name: str, cwd: Path, log) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "stages." + name], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"  {cwd.name}: {name} {'ok' if r.returncode == 0 else 'FAILED'} ({time.perf_counter() - t:.0f} s)", flush=True)
    if r.returncode:
        raise SystemExit(f"{name} failed in {cwd}; see {log.name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/study"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="override for every run, e.g. synth.episodes=80")
    args = ap.parse_args()
    out = args.out.resolve()
    base = args.set + [f"eval.rollouts={args.rollouts}"]
    t0 = time.perf_counter()

    shared = out / "shared"
    write_params(shared, base)
    with open(out / "shared.log", "a") as log:
        for name in ("synth", "prepare", "geometry", "features"):
            stage(name, shared, log)

    runs = []
    for variant in args.variants:
        for seed in args.seeds:
            d = out / f"{variant}-s{seed}"
            write_params(d, base + VARIANTS[variant] + [f"train.seed={seed}"])
            for item in SHARED:  # the one dataset and its caches
                link = d / item
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(shared / item)
            with open(d / "run.log", "a") as log:
                stage("train", d, log)
                stage("evaluate", d, log)
            m = json.loads((d / "outputs/eval/metrics.json").read_text())
            runs.append({"variant": variant, "seed": seed, **m})

    table = summarise(runs, args.variants)
    minutes = (time.perf_counter() - t0) / 60
    text = render(table, runs, args, minutes)
    (out / "study.md").write_text(text)
    (out / "study.json").write_text(json.dumps({"table": table, "runs": runs}, indent=1))
    print(text)


def summarise(runs: list[dict], variants: list[str]) -> list[dict]:
    rows = []
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        k = sum(r["closed_loop"]["successes"] for r in rs)
        n = sum(r["closed_loop"]["rollouts"] for r in rs)
        lo, hi = wilson(k, n)
        align = [r["alignment"].get("tactile_to_wrist", {}) for r in rs]
        rows.append({"variant": v, "seeds": len(rs), "successes": k, "rollouts": n, "success": k / n if n else None,
                     "ci95": [lo, hi], "per_seed": [r["closed_loop"]["success_rate"] for r in rs],
                     "chunk_l1_vs_hold": _mean([r.get("chunk_l1_vs_hold") for r in rs]),
                     "wrist_top1": _mean([a.get("top1") for a in align]),
                     "wrist_top1_chance": _mean([a.get("top1_chance") for a in align]),
                     "wrist_loc": _mean([a.get("loc_acc") for a in align])})
    return rows


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _f(x, pct=False):
    if x is None:
        return "-"
    return f"{x:.0%}" if pct else f"{x:.2f}"


def render(table: list[dict], runs: list[dict], args, minutes: float) -> str:
    lines = [f"HSA study: task {runs[0]['closed_loop']['task']}, seeds {args.seeds}, {args.rollouts} rollouts per run, "
             f"overrides {args.set or 'none'}; {minutes:.0f} min", "",
             "| variant | success (pooled) | 95% interval | per seed | chunk L1 / hold | tactile->wrist top-1 (chance) "
             "| wrist localisation |", "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['variant']} | {r['successes']}/{r['rollouts']} = {_f(r['success'], True)} | "
                     f"{_f(r['ci95'][0], True)}-{_f(r['ci95'][1], True)} | "
                     f"{', '.join(_f(s, True) for s in r['per_seed'])} | {_f(r['chunk_l1_vs_hold'])} | "
                     f"{_f(r['wrist_top1'])} ({_f(r['wrist_top1_chance'])}) | {_f(r['wrist_loc'])} |")
    guess = runs[0]["closed_loop"].get("guess_rate")
    if guess:
        lines += ["", f"Guessing the tile: {guess:.0%}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
