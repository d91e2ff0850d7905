"""One JSON of every figure scripts/gpu_check.sh measured, from its scratch folder: each
check's status and seconds (checks.tsv: name, exit status, seconds), every figures file
(*.json: the benchmarks' --json and the stages' metrics), the environment lines.

    python scripts/gpu_summary.py SCRATCH_DIR OUT.json
    python scripts/gpu_summary.py --compiled-training TORCH_LOG TRAIN_TSV BATCH   (JSON on stdout)

The second form is the train check's own figures: what torch.compile did during `hsa
train` (graph breaks, recompiles, CUDA-graph skips, from TORCH_LOGS=graph_breaks,
recompiles,perf_hints) and the trainer's steps/s after the compile, from its curves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def summarise(scratch: Path) -> dict:
    checks = []
    tsv = scratch / "checks.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        name, status, seconds = line.split("\t")
        checks.append({"check": name, "passed": status == "0", "exit_status": int(status), "seconds": int(seconds)})
    figures = {}
    for path in sorted(scratch.glob("*.json")):
        try:
            figures[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            figures[path.stem] = {"unreadable": f"{path.name}: {e}"}
    env = scratch / "environment.txt"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"commit": commit or None, "environment": env.read_text().splitlines() if env.exists() else [],
            "total_seconds": sum(c["seconds"] for c in checks), "checks": checks, "figures": figures}


def compiled_training(log: str, tsv: str, batch: int) -> dict:
    """Counts of what torch.compile logged, and the trainer's steps/s between its first
    logged step past the compile (step >= 50) and its last. train.tsv's samples_per_s is
    cumulative from the run's start, so each row gives the time to reach its step."""
    rows = [line.split("\t") for line in tsv.strip().splitlines()]
    head, rows = rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    col = "samples_per_s" if "samples_per_s" in head else None
    timed = [(int(r["step"]), int(r["step"]) * batch / float(r[col])) for r in rows if col and r.get(col)]
    later = [(st, t) for st, t in timed if st >= 50]
    rate = (later[-1][0] - later[0][0]) / (later[-1][1] - later[0][1]) if len(later) >= 2 else None
    return {"graph_breaks": log.count("Graph break"), "recompiles": log.count("Recompiling function"),
            "cudagraph_skips": log.count("skipping cudagraphs"), "train_steps_per_s_after_compile": rate,
            "steps_timed": [later[0][0], later[-1][0]] if len(later) >= 2 else None}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--compiled-training":
        print(json.dumps(compiled_training(Path(sys.argv[2]).read_text(errors="replace"), Path(sys.argv[3]).read_text(),
                                           int(sys.argv[4])), indent=1))
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    summary = summarise(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(summary, indent=1) + "\n")
    failed = [c["check"] for c in summary["checks"] if not c["passed"]]
    print(f"summary: {len(summary['checks'])} checks in {summary['total_seconds']} s"
          + (f", FAILED: {', '.join(failed)}" if failed else ", all passed") + f" -> {sys.argv[2]}")


if __name__ == "__main__":
    main()
