"""params.yaml as typed configuration: the schema (one dataclass per section, every field
documented), its loading and cross-section checks, the `--set` overrides and the
generator of docs/params.md.

May import: errors. Everything else imports it; `from hsa_pipeline.config import X` is the
way in (this file re-exports the public names of its modules)."""

from ..errors import ConfigError
from .schema import (
    DEVICE_DOC,
    DEVICE_RE,
    THREADS_DOC,
    ActConfig,
    ArmConfig,
    CameraConfig,
    DataConfig,
    EvalConfig,
    FeaturesConfig,
    GeometryConfig,
    HsaConfig,
    LeRobotConfig,
    Params,
    Pose,
    RobotConfig,
    SensorConfig,
    SynthConfig,
    TrainConfig,
    WorldConfig,
    apply_overrides,
    is_weights_path,
    load_params,
    param,
    params_from_dict,
    parse_override,
    reference_markdown,
    to_dict,
)

__all__ = [
    "param",
    "Pose",
    "DEVICE_DOC",
    "DEVICE_RE",
    "THREADS_DOC",
    "WorldConfig",
    "SynthConfig",
    "LeRobotConfig",
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
    "load_params",
    "to_dict",
    "reference_markdown",
    "ConfigError",
]
