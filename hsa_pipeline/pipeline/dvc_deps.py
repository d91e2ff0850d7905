"""Files that params.yaml names (a URDF in `robot.arms.<arm>.model`, a weights file in
`features.pretrained`) as DVC dependencies of the stages that read them.

DVC reruns a stage when a listed dependency changes; a path inside a params value is only
a string to it, so editing the URDF in place would leave `dvc repro` saying "up to date".
`hsa sync-deps` writes every such file into dvc.yaml under the stages whose params name
it (lines marked `# named in params`), and each stage checks at start that its files are
listed, so a new path (`dvc exp run -S robot.arms.left.model=...`) stops with one line
saying to run it instead of going stale.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from ..config import Params, is_weights_path
from ..errors import ConfigError

MARK = "  # named in params"


def files_named_in_params(p: Params, sections: list[str]) -> dict[str, str]:
    """params key -> the file it names, for the params `sections` a stage declares."""
    found = {}
    if "robot" in sections:
        for name, arm in p.robot.arms.items():
            if arm.model.lower().endswith((".urdf", ".xacro")):  # kinematics.build_robot's rule for a file
                found[f"robot.arms.{name}.model"] = arm.model
    if "features" in sections and is_weights_path(p.features.pretrained):
        found["features.pretrained"] = p.features.pretrained
    return found


def _stages(dvc_yaml: Path) -> dict:
    return (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})


def check_listed(stage: str, p: Params, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """ConfigError when a file the stage's params name is not a dependency of the stage in
    dvc.yaml (nothing to check without a dvc.yaml or that stage in it)."""
    spec = _stages(dvc_yaml).get(stage) if dvc_yaml.is_file() else None
    if spec is None:
        return
    deps = {os.path.normpath(d) for d in spec.get("deps", []) if isinstance(d, str)}
    for key, path in files_named_in_params(p, spec.get("params", [])).items():
        if os.path.normpath(path) not in deps:
            raise ConfigError(f"{key}: stage {stage} reads {path}, but dvc.yaml does not list it as a dependency of "
                              f"{stage}, so editing the file would not rerun the stage; run `hsa sync-deps`")


def sync(p: Params, dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, list[str]]:
    """Rewrite the marked deps of every stage in dvc.yaml from `p`. -> stage -> files listed."""
    text = dvc_yaml.read_text()
    listed = {}
    for stage, spec in _stages(dvc_yaml).items():
        files = list(dict.fromkeys(files_named_in_params(p, spec.get("params", [])).values()))
        m = re.search(rf"(?m)^  {re.escape(stage)}:\n(?:    (?!deps:)[^\n]*\n)*    deps:\n((?:      - [^\n]*\n)+)", text)
        if m is None:
            if files:
                raise ConfigError(f"{dvc_yaml}: stage {stage} has no deps list in the expected form (cmd, then deps)")
            continue
        kept = [line for line in m.group(1).splitlines(keepends=True) if not line.rstrip("\n").endswith(MARK)]
        block = "".join(kept) + "".join(f"      - {f}{MARK}\n" for f in files)
        text = text[: m.start(1)] + block + text[m.end(1):]
        listed[stage] = files
    dvc_yaml.write_text(text)
    return listed
