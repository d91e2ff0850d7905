"""Where things are: arm kinematics, calibrated cameras, the rig of params.yaml, the
geometry stage (sensor poses and boxes of every frame), calibration (`hsa calibrate`),
and drawing boxes on frames (`hsa preview`).

May import: data, pipeline, config, errors."""
