"""params.yaml as typed configuration: the schema (one dataclass per section, every field
documented), its loading and cross-section checks, the `--set` overrides and the
generator of docs/params.md.

May import: errors. Everything else imports it; `from hsa_pipeline.config import X` is the
way in (this file re-exports the public names of its modules)."""

from ..errors import ConfigError
from .fields import DEVICE_DOC, DEVICE_RE, THREADS_DOC, param
from .loading import RENAMED, load_params, params_from_dict
from .overrides import apply_overrides, parse_override, preset_overrides
from .reference import reference_markdown
from .rig import ArmConfig, CameraConfig, Pose, RobotConfig, SensorConfig
from .schema import (
    ActConfig,
    AlohaConfig,
    ContactConfig,
    DataConfig,
    EvalConfig,
    FeaturesConfig,
    GeometryConfig,
    HsaConfig,
    LeRobotConfig,
    Params,
    SynthConfig,
    TrainConfig,
    WorldConfig,
    is_weights_path,
    to_dict,
)

__all__ = [
    "param",
    "Pose",
    "DEVICE_DOC",
    "DEVICE_RE",
    "RENAMED",
    "THREADS_DOC",
    "AlohaConfig",
    "WorldConfig",
    "SynthConfig",
    "LeRobotConfig",
    "ContactConfig",
    "DataConfig",
    "ArmConfig",
    "RobotConfig",
    "SensorConfig",
    "CameraConfig",
    "GeometryConfig",
    "FeaturesConfig",
    "ActConfig",
    "HsaConfig",
    "TrainConfig",
    "EvalConfig",
    "Params",
    "is_weights_path",
    "parse_override",
    "apply_overrides",
    "params_from_dict",
    "preset_overrides",
    "load_params",
    "to_dict",
    "reference_markdown",
    "ConfigError",
]
