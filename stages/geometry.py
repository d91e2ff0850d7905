"""Stage `geometry`: forward kinematics, sensor poses, each sensor's contact, and its box in
every camera (where it is now, and where its touch next changes), for every frame.

Reads    params robot, sensors, cameras, geometry; outputs/prepare/episodes.json and
         contact.json; the episodes' qpos
Writes   outputs/geometry.zarr
"""


from hsa_pipeline.pipeline.paths import GEOMETRY, PREPARE
from stages import main

PARAMS = ["robot", "sensors", "cameras", "geometry", "numerics"]
OUT = GEOMETRY


def run(p) -> dict:
    from hsa_pipeline.geometry.compute import run_geometry  # here: main() sets numerics first
    s = run_geometry(p.robot, p.sensors, p.cameras, p.geometry, PREPARE, OUT)
    print(f"geometry: visible fraction per camera {s['visible_fraction']}; in contact per sensor "
          f"{dict(zip(s['sensors'], s['contact_fraction'], strict=True))} ({s['contact_sources']}) -> {OUT}")
    return s


if __name__ == "__main__":
    main("geometry")
