"""Stage `evaluate`: closed-loop success in the simulator (the touch world, or gym-aloha's
tasks with world.kind: aloha), action error against baselines, open-loop replay,
tactile-visual alignment against chance, and the HTML report.

Reads    params eval, world, aloha, robot, sensors, cameras (the world the policy acts in);
         outputs/prepare, outputs/geometry.zarr, outputs/features.zarr, outputs/train
Writes   outputs/eval/ metrics.json, plots/, rollouts/ (success.gif, failure.gif), report.html
"""


from hsa_pipeline.pipeline.paths import EVAL, FEATURES, GEOMETRY, PREPARE, TRAIN
from stages import main

PARAMS = ["eval", "world", "aloha", "robot", "sensors", "cameras", "numerics"]
OUT = EVAL


def run(p) -> dict:
    from hsa_pipeline.evaluation.evaluate import run_evaluate  # here: main() sets numerics first
    return run_evaluate(p.eval, p.world, p.aloha, p.robot, p.sensors, p.cameras, PREPARE, GEOMETRY, FEATURES, TRAIN, OUT)


if __name__ == "__main__":
    main("evaluate")
