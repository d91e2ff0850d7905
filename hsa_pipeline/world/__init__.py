"""The simulated touch world: a gymnasium environment of the rig in params.yaml, its
tasks, its renderer and its scripted expert. The demo data are recorded from it (synth)
and the evaluation runs policies in it (rollout).

May import: geometry, data, pipeline, config, errors."""

from .env import TouchWorld, contact_sheet
from .expert import ScriptedExpert

__all__ = ["TouchWorld", "ScriptedExpert", "contact_sheet"]
