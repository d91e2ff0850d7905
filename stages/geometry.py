"""Stage `geometry`: forward kinematics, sensor poses and the sensor's box in every camera,
for every frame.

Reads    params robot, sensors, cameras, geometry; outputs/prepare/episodes.json; the episodes' qpos
Writes   outputs/geometry.zarr
"""

from pathlib import Path

from hsa_pipeline.geometry.compute import run_geometry
from stages import main

PARAMS = ["robot", "sensors", "cameras", "geometry"]
PREPARE = Path("outputs/prepare")
OUT = Path("outputs/geometry.zarr")


def run(p) -> dict:
    s = run_geometry(p.robot, p.sensors, p.cameras, p.geometry, PREPARE, OUT)
    print(f"geometry: visible fraction per camera {s['visible_fraction']} -> {OUT}")
    return s


if __name__ == "__main__":
    main("geometry")
