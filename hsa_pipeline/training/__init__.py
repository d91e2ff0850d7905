"""The train stage: the loop, distributed set-up, checkpoints and resume, logging, and the
export of the policy.

May import: model, features, geometry, data, pipeline, config, errors."""
