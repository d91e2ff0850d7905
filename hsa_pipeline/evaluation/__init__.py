"""The evaluate stage: closed-loop rollouts in the touch world, open-loop action error,
touch reliance, alignment, and the report.

May import: serving, training, model, world, features, geometry, data, pipeline, config, errors."""
