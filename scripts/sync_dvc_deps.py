"""Rewrite the code dependencies (.py files) of every stage in dvc.yaml from the stage's
import closure, the rule tests/test_dvc_yaml.py checks. Run after moving imports around:

    python scripts/sync_dvc_deps.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hsa_pipeline.closure import import_closure  # noqa: E402
from stages import NAMES  # noqa: E402


def main() -> None:
    path = REPO / "dvc.yaml"
    text = path.read_text()
    for name in NAMES:
        own = f"stages/{name}.py"
        deps = [own] + [str(p.relative_to(REPO)) for p in import_closure(REPO / own) if p != REPO / own]
        m = re.search(rf"(  {name}:\n    cmd: python -m stages\.{name}\n    deps:\n)((?:      - [^\n]*\.py\n)+)", text)
        if m is None:
            raise SystemExit(f"dvc.yaml: stage {name} not in the expected form (cmd, then deps with the .py files first)")
        text = text[: m.start(2)] + "".join(f"      - {d}\n" for d in deps) + text[m.end(2):]
    path.write_text(text)
    print(f"updated {path}")


if __name__ == "__main__":
    main()
