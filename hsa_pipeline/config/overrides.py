"""`--set key=value` overrides (the `hsa` CLI, the study) with the same dotted keys and YAML
value syntax as `dvc exp run -S key=value`, and preset overlays (presets/touch-world/)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=1.5' -> ('a.b', 1.5); the value is YAML, as with `dvc exp run -S`."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. hsa.weight=1.5")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return raw


def preset_overrides(path: str | Path) -> list[str]:
    """A preset overlay file (presets/touch-world/*.yaml: a mapping of dotted keys to the
    values that replace them in params.yaml) -> the same as `--set key=value` overrides."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: preset not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted keys (e.g. world.task) to values")
    return [f"{k}={json.dumps(v)}" for k, v in raw.items()]
