"""The HSA study: does the HSA term make the policy better on the touch task?

Trains and evaluates, on ONE dataset of the touch world per dataset size (params.yaml's
`world`, with `--set` overrides), each variant with several training seeds, then
tabulates closed-loop success (pooled over seeds and rollouts, with a 95% Wilson
interval), the decision check after pick-up, touch reliance in contact, and each
variant's success MINUS HSA off on the same scenes and seeds (paired, with its interval):

  hsa-on       ACT + HSA as params.yaml has it (the recipe: positives where the sensor's
               touch next changes, read from its images; their heads = the policy's touch
               map, one map per sensor)
  mean-map     the recipe with one touch map from the MEAN of every tactile stream (the
               map before per-sensor maps; the same as hsa-on with one sensor)
  hsa-on-now   the published HSA: positives where the sensor is now, contact frames only
  hsa-off      the same ACT without the HSA loss (its touch maps learned from actions only)
  touch-blind  hsa-off that never sees a tactile stream (act.blind = every one): the
               guessing baseline a touch-dependent task must beat

    python scripts/hsa_study.py --out outputs/study [--seeds 0 1 2] [--rollouts 100] \
        [--variants hsa-on hsa-off touch-blind] [--episodes 40 80 160 320] \
        [--preset presets/touch-world/claw.yaml] [--steps N] [--set world.task=match ...]

Every variant runs the real stages (`python -m stages.<name>`) in its own directory under
--out; each dataset and its caches are built once, in --out/shared-e<N>. Every run's
rollouts use the same scenes (eval.seed), so variants are compared scene by scene. Runs
are independent processes with a fixed thread count (train.threads: 1), so `--jobs 2`
runs two at once with the same results as one at a time. A rerun continues: training
resumes or skips by its own content-keyed rule, evaluation reruns. Writes study.md and
study.json in --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hsa_pipeline.config import apply_overrides, params_from_dict, preset_overrides  # noqa: E402
from hsa_pipeline.evaluation.rollout import ARM_FIGURES, paired_difference, wilson  # noqa: E402
from hsa_pipeline.pipeline.paths import EVAL, FEATURES, GEOMETRY, PREPARE  # noqa: E402

VARIANTS = {  # overrides of each variant; TACTILE stands for the list of every tactile stream
    "hsa-on": [],
    "mean-map": ["act.touch_query=mean"],
    "hsa-on-now": ["hsa.positives=now", "hsa.require_contact=true"],
    "hsa-off": ["hsa.enabled=false"],
    "touch-blind": ["hsa.enabled=false", "act.blind=TACTILE"],
}
STUDY_STEPS = 1500  # training steps where neither --steps nor a preset says: what the one-arm studies were measured at
BASELINE = "hsa-off"  # the paired differences are "variant minus this"
SHARED = ["data", str(PREPARE), str(GEOMETRY), str(FEATURES)]


def study_overrides(presets: list[Path], steps: int | None, sets: list[str], rollouts: int) -> list[str]:
    """The overrides of every run: the presets, the training steps (--steps, else the last
    preset's train.steps, else STUDY_STEPS), --set, and the rollouts."""
    from_presets = [o for p in presets for o in preset_overrides(p)]
    if steps is not None:
        from_presets.append(f"train.steps={steps}")
    elif not any(o.startswith("train.steps=") for o in from_presets):
        from_presets.append(f"train.steps={STUDY_STEPS}")
    return from_presets + sets + [f"eval.rollouts={rollouts}"]


def variant_overrides(variant: str, base: list[str]) -> list[str]:
    """A variant's overrides, with TACTILE replaced by the tactile streams of `base`'s params."""
    tactile = params_from_dict(apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), base)).data.tactile
    return [o.replace("TACTILE", "[" + ", ".join(tactile) + "]") for o in VARIANTS[variant]]


def write_params(directory: Path, overrides: list[str]) -> None:
    raw = apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    params_from_dict(raw)  # validate before any work
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@dataclass(frozen=True)
class StageCost:
    """What one stage took: wall time (with whatever else ran beside it) and the peak
    resident memory of the stage's own process (None where /proc is not there)."""

    seconds: float
    peak_rss_gb: float | None


# Runs the module argv[2] as `python -m` would (argv[3:] its arguments) and, at exit, writes
# the process's own high-water resident memory (VmHWM, kB) to the file argv[1]. Not
# ru_maxrss: Linux carries the PARENT's high-water mark into a child across fork and exec,
# so a small stage started from a large process would report the parent's size.
PEAK_WRAPPER = """
import atexit, runpy, sys
def write_peak(path=sys.argv[1]):
    try:
        with open('/proc/self/status') as f:
            kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
    except OSError:
        return
    with open(path, 'w') as f:
        f.write(kb)
atexit.register(write_peak)
module, sys.argv = sys.argv[2], sys.argv[2:]
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def run_measured(module: str, args: list[str], cwd: Path, env: dict, log) -> tuple[int, StageCost]:
    """Run `python -m <module> <args>` to its end in `cwd`, output to `log`; -> its exit
    code and cost (time, its own peak memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak_kb"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, str(peak), module, *args], cwd=cwd, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
        gb = int(peak.read_text()) / 2**20 if peak.exists() else None  # kB -> GiB
        return r.returncode, StageCost(time.perf_counter() - t, gb)


def stage(name: str, cwd: Path, log) -> StageCost:
    """Run `python -m stages.<name>` in `cwd` (output to `log`); -> its time and memory."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code, cost = run_measured("stages." + name, [], cwd, env, log)
    print(f"  {cwd.name}: {name} {'ok' if code == 0 else 'FAILED'} ({cost.seconds:.0f} s, "
          f"peak {format_gb(cost.peak_rss_gb)})", flush=True)
    if code:
        raise SystemExit(f"{name} failed in {cwd}; see {log.name}")
    return cost


def format_gb(gb: float | None) -> str:
    return "not measured" if gb is None else f"{gb:.2f} GiB"


def build_dataset(shared: Path, overrides: list[str], costs: dict[str, StageCost] | None = None) -> Path:
    """synth, prepare, geometry and features in `shared`; each stage's cost into `costs`."""
    write_params(shared, overrides)
    with open(shared.parent / f"{shared.name}.log", "a") as log:
        for name in ("synth", "prepare", "geometry", "features"):
            cost = stage(name, shared, log)
            if costs is not None:
                costs[name] = cost
    return shared


def train_and_evaluate(d: Path, shared: Path, overrides: list[str]) -> None:
    write_params(d, overrides)
    for item in SHARED:  # the one dataset and its caches
        link = d / item
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(shared / item)
    with open(d / "run.log", "a") as log:
        stage("train", d, log)
        stage("evaluate", d, log)


def read_run(d: Path, variant: str, seed: int, episodes: int | None) -> dict:
    m = json.loads((d / EVAL / "metrics.json").read_text())
    with open(d / EVAL / "rollouts" / "outcomes.csv") as f:
        outcomes = [(int(r["scene"]), int(r["success"])) for r in csv.DictReader(f)]
    return {"variant": variant, "seed": seed, "episodes": episodes, "outcomes": outcomes, **m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/study"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--episodes", type=int, nargs="+", default=[None],
                    help="dataset sizes (a learning curve); default: params.yaml's synth.episodes")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses train.threads CPU threads)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps of every run (default: the preset's train.steps if it sets one, else "
                         f"{STUDY_STEPS}, as the one-arm studies in docs/studies.md; params.yaml's demo trains 1,000)")
    ap.add_argument("--preset", action="append", default=[], type=Path,
                    help="an overlay of params for every run, e.g. presets/touch-world/bimanual.yaml")
    ap.add_argument("--set", action="append", default=[], help="override for every run, e.g. world.candidate_order=by_class")
    args = ap.parse_args()
    out = args.out.resolve()
    base = study_overrides(args.preset, args.steps, args.set, args.rollouts)
    t0 = time.perf_counter()

    jobs = []
    for n in args.episodes:
        size = [] if n is None else [f"synth.episodes={n}"]
        tag = "" if n is None else f"-e{n}"
        shared = build_dataset(out / f"shared{tag}", base + size)
        for variant in args.variants:
            for seed in args.seeds:
                d = out / f"{variant}{tag}-s{seed}"
                jobs.append((d, shared, base + size + variant_overrides(variant, base) + [f"train.seed={seed}"], variant,
                             seed, n))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda j: train_and_evaluate(*j[:3]), jobs))
    runs = [read_run(d, variant, seed, n) for d, _, _, variant, seed, n in jobs]

    table = summarise(runs)
    minutes = (time.perf_counter() - t0) / 60
    text = render(table, runs, args, minutes)
    (out / "study.md").write_text(text)
    (out / "study.json").write_text(json.dumps({"table": table, "runs": runs}, indent=1))
    print(text)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (dataset size, variant): pooled success, its interval, per seed, the
    decision check, touch reliance in contact, and the paired difference to BASELINE."""
    rows = []
    for n in dict.fromkeys(r["episodes"] for r in runs):
        group = [r for r in runs if r["episodes"] == n]
        base = {(r["seed"], s): ok for r in group if r["variant"] == BASELINE for s, ok in r["outcomes"]}
        for v in dict.fromkeys(r["variant"] for r in group):
            rs = [r for r in group if r["variant"] == v]
            k = sum(r["closed_loop"]["successes"] for r in rs)
            total = sum(r["closed_loop"]["rollouts"] for r in rs)
            lo, hi = wilson(k, total)
            decisions = [r["closed_loop"].get("decision") or {} for r in rs]
            row = {"episodes": n, "variant": v, "seeds": len(rs), "successes": k, "rollouts": total,
                   "success": k / total if total else None, "ci95": [lo, hi],
                   "per_seed": [r["closed_loop"]["success_rate"] for r in rs],
                   "decision_accuracy": _mean([d.get("accuracy") for d in decisions]),
                   "follows_touch": _mean([d.get("follows_touch") for d in decisions]),
                   "reliance_in_contact": _mean([(r.get("touch_reliance") or {}).get("in contact", {}).get("reliance")
                                                 for r in rs]),
                   "chunk_l1_vs_hold": _mean([r.get("chunk_l1_vs_hold") for r in rs]),
                   "per_arm": {arm: {k: _mean([(r["closed_loop"].get("per_arm") or {}).get(arm, {}).get(k) for r in rs])
                                     for k in ARM_FIGURES}
                               for arm in (rs[0]["closed_loop"].get("per_arm") or {})},
                   "wrist_top1": _mean([v.get("top1") for r in rs
                                        for k, v in (r["alignment"].get("next_contact") or {}).items()
                                        if k.endswith("_to_wrist")])}
            pairs = [(ok, base[(r["seed"], s)]) for r in rs for s, ok in r["outcomes"] if (r["seed"], s) in base]
            if v != BASELINE and pairs:
                row["minus_" + BASELINE] = list(paired_difference([a for a, _ in pairs], [b for _, b in pairs]))
            rows.append(row)
    return rows


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _f(x, pct=False):
    if x is None:
        return "-"
    return f"{x:.0%}" if pct else f"{x:.2f}"


def render(table: list[dict], runs: list[dict], args, minutes: float) -> str:
    world = runs[0]["closed_loop"]
    lines = [f"HSA study: task {world['task']}, seeds {args.seeds}, {args.rollouts} rollouts per run (the same scenes "
             f"for every run), presets {[str(p) for p in args.preset] or 'none'}, overrides {args.set or 'none'}; "
             f"{minutes:.0f} min", "",
             f"| episodes | variant | success (pooled) | 95% interval | per seed | minus {BASELINE} (paired, 95%) "
             "| decision right | follows touch | touch reliance in contact | chunk L1 / hold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        diff = r.get("minus_" + BASELINE)
        diff_text = f"{diff[0]:+.0%} ({diff[1]:+.0%} to {diff[2]:+.0%})" if diff else "-"
        lines.append(f"| {r['episodes'] or 'params'} | {r['variant']} | {r['successes']}/{r['rollouts']} = "
                     f"{_f(r['success'], True)} | {_f(r['ci95'][0], True)}-{_f(r['ci95'][1], True)} | "
                     f"{', '.join(_f(s, True) for s in r['per_seed'])} | {diff_text} | "
                     f"{_f(r['decision_accuracy'], True)} | {_f(r['follows_touch'], True)} | "
                     f"{_f(r['reliance_in_contact'])} | {_f(r['chunk_l1_vs_hold'])} |")
    if world.get("guess_rate"):
        lines += ["", f"Guessing the tile: {world['guess_rate']:.0%}."]
    if any(len(r["per_arm"]) > 1 for r in table):  # several arms: each one's own rates (mean over seeds)
        lines += ["", "Each arm on its own (a rollout ends at any arm's first failure: put-down figures are censored "
                  "by the other arm, the decision is not):", "",
                  "| episodes | variant | arm | " + " | ".join(ARM_FIGURES.values()) + " |",
                  "|---|---|---|" + "---|" * len(ARM_FIGURES)]
        for r in table:
            for arm, v in r["per_arm"].items():
                lines.append(f"| {r['episodes'] or 'params'} | {r['variant']} | {arm} | "
                             + " | ".join(_f(v[k], True) for k in ARM_FIGURES) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
