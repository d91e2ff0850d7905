"""Reading params.yaml: types, allowed values and ranges checked field by field, then the
checks that span sections; every failure is ONE line naming the key:

    params.yaml: hsa.temperature: must be > 0, got -0.1

Stages read only their own sections (dvc.yaml lists the keys they declare).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError
from .fields import DEVICE_DOC, DEVICE_RE
from .overrides import apply_overrides
from .rig import Pose
from .schema import Params

# Keys that were renamed: an old params.yaml gets the new name, not "unknown key".
RENAMED = {"data.contact_threshold": "data.contact.enter (and data.contact.exit: contact now has hysteresis)",
           "hsa.tp_weight": "hsa.third_person_weight"}


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    if origin in (list,):
        return "a list"
    if origin in (dict,):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against the annotation `hint`, recursively; raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: expected {type_name(hint)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} at {key}")  # a bug in this file, not user input


def _check_range(value: Any, meta: dict, key: str) -> None:
    if value is None or (isinstance(value, str) and "min_len" not in meta):
        return  # e.g. threads: auto
    for name, op, text in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                           ("lt", lambda a, b: a < b, "<"), ("le", lambda a, b: a <= b, "<=")):
        if name in meta and not op(value, meta[name]):
            raise ConfigError(f"{key}: must be {text} {meta[name]}, got {value!r}")
    if "min_len" in meta and len(value) < meta["min_len"]:
        raise ConfigError(f"{key}: needs at least {meta['min_len']} values, got {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        where = f"{prefix}.{k}" if prefix else str(k)
        if where in RENAMED:
            raise ConfigError(f"{where}: renamed; use {RENAMED[where]}")
        if k not in fields:
            close = difflib.get_close_matches(str(k), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key{hint}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _convert(data[name], hints[name], key)
            _check_range(value, f.metadata, key)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required ({f.metadata.get('doc', 'no default')}), but missing")
    return cls(**kwargs)


def _check_pose(pose: Pose, key: str) -> None:
    if pose.matrix is not None:
        import numpy as np  # local: config stays importable without numpy users

        m = np.asarray(pose.matrix, dtype=float)
        if m.shape != (4, 4):
            raise ConfigError(f"{key}.matrix: expected 4x4, got shape {m.shape}")
        r = m[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or not np.isclose(np.linalg.det(r), 1.0, atol=1e-4):
            raise ConfigError(f"{key}.matrix: rotation must be orthonormal with det +1, got det {np.linalg.det(r):.4f}")
        if not np.allclose(m[3], [0, 0, 0, 1]):
            raise ConfigError(f"{key}.matrix: last row must be 0 0 0 1, got {m[3].tolist()}")
    if len(pose.xyz) != 3 or len(pose.rpy_deg) != 3:
        raise ConfigError(f"{key}: xyz and rpy_deg need 3 values each")


def _cross_check(p: Params) -> None:
    """Checks that span sections (names that must refer to each other)."""
    for name, arm in p.robot.arms.items():
        _check_pose(arm.base, f"robot.arms.{name}.base")
    for name, s in p.sensors.items():
        if s.arm not in p.robot.arms:
            raise ConfigError(f"sensors.{name}.arm: '{s.arm}' is not an arm; arms: {', '.join(p.robot.arms)}")
        _check_pose(s.mount, f"sensors.{name}.mount")
        if any(v <= 0 for v in s.size[:2]):
            raise ConfigError(f"sensors.{name}.size: must be positive, got {s.size}")
        if s.finger_offset != "none" and p.robot.arms[s.arm].gripper_index is None:
            raise ConfigError(f"sensors.{name}.finger_offset: '{s.finger_offset}' puts the pad on a claw finger, which "
                              f"moves with the claw's opening, but robot.arms.{s.arm}.gripper_index is null; set it "
                              f"to the qpos column of that arm's gripper, or finger_offset: none")
    for name, c in p.cameras.items():
        key = f"cameras.{name}"
        if c.mount != "world" and c.mount not in p.robot.arms:
            raise ConfigError(f"{key}.mount: expected 'world' or an arm ({', '.join(p.robot.arms)}), got '{c.mount}'")
        k = c.K
        if len(k) != 3 or any(len(r) != 3 for r in k) or k[0][1] != 0 or k[1][0] != 0 or k[2] != [0, 0, 1]:
            raise ConfigError(f"{key}.K: expected [[fx,0,cx],[0,fy,cy],[0,0,1]], got {k}")
        if k[0][0] <= 0 or k[1][1] <= 0:
            raise ConfigError(f"{key}.K: focal lengths must be positive, got fx={k[0][0]}, fy={k[1][1]}")
        if not (0 <= k[0][2] < c.width and 0 <= k[1][2] < c.height):
            raise ConfigError(f"{key}.K: principal point ({k[0][2]}, {k[1][2]}) lies outside the {c.width}x{c.height} image")
        if len(c.distortion) not in (0, 4, 5):
            raise ConfigError(f"{key}.distortion: expected 0, 4 or 5 values (k1 k2 p1 p2 [k3]), got {len(c.distortion)}")
        _check_pose(c.pose, f"{key}.pose")
    roles = p.data.cameras
    for cam in roles:
        if p.cameras and cam not in p.cameras:
            raise ConfigError(f"data.cameras: camera '{cam}' has no calibration under cameras.{cam}")
    for t in p.data.tactile:
        if p.sensors and t not in p.sensors:
            raise ConfigError(f"data.tactile: stream '{t}' has no sensor under sensors.{t}")
    for s in p.act.full_grid:
        if s not in p.data.cameras and s not in p.data.tactile:
            raise ConfigError(f"act.full_grid: '{s}' is not a stream of data.cameras or data.tactile")
    for s in p.act.blind:
        if s not in p.data.cameras and s not in p.data.tactile:
            raise ConfigError(f"act.blind: '{s}' is not a stream of data.cameras or data.tactile")
        if s in p.data.tactile and p.hsa.enabled:
            raise ConfigError(f"act.blind: the policy is blind to the tactile stream '{s}', so HSA has nothing to "
                              f"align; set hsa.enabled: false")
    if p.act.touch_map_tokens and not p.act.touch_map:
        raise ConfigError("act.touch_map_tokens: reads the touch maps; set act.touch_map: true")
    if p.data.contact.exit > p.data.contact.enter:
        raise ConfigError(f"data.contact.exit: {p.data.contact.exit} is above data.contact.enter "
                          f"{p.data.contact.enter}; contact must end below the score where it begins")
    if p.hsa.bank_topk and not p.hsa.bank_size:
        raise ConfigError("hsa.bank_topk: needs hsa.bank_size > 0")
    for key, device in (("features.device", p.features.device), ("train.device", p.train.device)):
        if not DEVICE_RE.match(device):
            raise ConfigError(f"{key}: expected {DEVICE_DOC}, got {device!r}")
    if p.synth.enabled:
        # The demo writes where the pipeline reads: a mismatch would train on other data.
        expected = Path(p.synth.out_dir) / "episodes"
        if Path(p.data.episodes_dir) != expected:
            raise ConfigError(f"data.episodes_dir: is {p.data.episodes_dir!r} but synth.enabled is true and writes "
                              f"{str(expected)!r}; set data.episodes_dir: {expected} or synth.enabled: false")
    else:
        # DVC deletes the synth stage's output folder before it reruns: user data there is lost.
        synth_out, episodes = Path(p.synth.out_dir).resolve(), Path(p.data.episodes_dir).resolve()
        if episodes == synth_out or synth_out in episodes.parents:
            raise ConfigError(f"data.episodes_dir: {p.data.episodes_dir!r} is inside synth.out_dir "
                              f"({p.synth.out_dir!r}), which DVC empties when the synth stage reruns; move your "
                              f"episodes elsewhere or set synth.out_dir to another folder")


def params_from_dict(raw: dict) -> Params:
    p = _build(Params, raw, "")
    _cross_check(p)
    return p


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate params.yaml; the only reader of that file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return params_from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
