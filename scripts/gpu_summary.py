"""One JSON of every figure scripts/gpu_check.sh measured, from its scratch folder: each
check's status and seconds (checks.tsv: name, exit status, seconds), every figures file
(*.json: the benchmarks' --json and the stages' metrics), the environment lines.

    python scripts/gpu_summary.py SCRATCH_DIR OUT.json
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


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    summary = summarise(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(summary, indent=1) + "\n")
    failed = [c["check"] for c in summary["checks"] if not c["passed"]]
    print(f"summary: {len(summary['checks'])} checks in {summary['total_seconds']} s"
          + (f", FAILED: {', '.join(failed)}" if failed else ", all passed") + f" -> {sys.argv[2]}")


if __name__ == "__main__":
    main()
