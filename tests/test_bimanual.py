"""Two arms, two tactile sensors (the X-Trainer case): the pipeline trains and evaluates,
and every HSA curve exists per sensor, in the TSV files and in TensorBoard."""

from __future__ import annotations

import csv
import json
import os

import pytest

from conftest import EVAL, FEATURES, GEOMETRY, PREPARE, RUN, TINY_TRAIN, TRAIN, bimanual_params, run_stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bimanual")
    old = os.getcwd()
    os.chdir(root)
    try:
        p = bimanual_params(TINY_TRAIN + ["synth.episodes=3", "data.train_ratio=0.67", "train.steps=10",
                                          "train.val_every=10", "eval.report_frames=1", "eval.rollouts=2"])
        for name in ("synth", "prepare", "geometry", "features", "train", "evaluate"):
            run_stage(name, p)
    finally:
        os.chdir(old)
    return root


def test_training_curves_exist_per_sensor(trained):
    with open(trained / RUN / "curves" / "train.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for sensor in ("tactile_left", "tactile_right"):
        for col in ("hsa_w", "chance_w", "n_w", "top1_w", "loc_acc_w"):
            assert rows[-1][f"{sensor}/{col}"] not in ("", "nan"), f"{sensor}/{col}"
    with open(trained / RUN / "curves" / "val.tsv") as f:
        val = list(csv.DictReader(f, delimiter="\t"))
    assert {"tactile_left/hsa_w", "tactile_right/hsa_w"} <= set(val[-1])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / RUN / "tb" / "act+hsa"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for sensor in ("tactile_left", "tactile_right"):
        assert {f"loss/{sensor}/hsa_w", f"hsa/{sensor}/chance_w", f"hsa/{sensor}/top1_w"} <= tags
    assert json.loads((trained / TRAIN / "metrics.json").read_text())["step"] == 10


def test_each_sensors_touch_map_marks_its_own_arms_camera_and_the_top_one(trained):
    policy = json.loads((trained / TRAIN / "policy" / "policy.json").read_text())
    assert policy["shapes"]["touch_cameras"] == {"tactile_left": ["left_wrist", "top"],
                                                 "tactile_right": ["right_wrist", "top"]}
    assert policy["act"]["touch_map"] and policy["act"]["touch_query"] == "per_sensor"


def test_evaluation_aligns_each_sensor_with_its_own_wrist_camera(trained):
    m = json.loads((trained / EVAL / "metrics.json").read_text())
    assert {"tactile_left_to_wrist", "tactile_right_to_wrist"} <= set(m["alignment"]["next_contact"])
    # two arms must both succeed: guessing the tile is 1 in candidates for each
    assert m["closed_loop"]["guess_rate"] == pytest.approx((1 / 3) ** 2)
    joints = (trained / EVAL / "plots" / "per_joint.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in joints[1:]] == [f"{arm}.{j}" for arm in ("left", "right")
                                                          for j in ("j1", "j2", "j3", "j4", "j5", "j6", "gripper")]


def test_the_report_draws_each_sensors_own_box(trained, monkeypatch):
    """The defect this guards: the report drew column 0 of the box store (the first
    sensor's box) whatever sensor it showed."""
    from hsa_pipeline.data.caches import Caches
    from hsa_pipeline.data.stores import GeometryStore

    monkeypatch.chdir(trained)  # the manifest names the episodes relative to the working directory
    caches = Caches(PREPARE, GEOMETRY, FEATURES, 1.0)
    geo = GeometryStore(GEOMETRY)
    right = geo.sensors.index("tactile_right")
    assert right != 0
    got = caches.sensor_boxes_px("right_wrist", "tactile_right")
    assert (got == geo.cam["right_wrist"]["box"][:, right]).all()
    assert (got != geo.cam["right_wrist"]["box"][:, 0]).any()


def test_each_arms_queries_get_its_columns_from_the_geometry_store(trained, monkeypatch):
    """act.arm_queries on the real stores: build() reads each arm's action columns from
    the geometry store's column names (left: qpos 0-6, right: 7-13, as bimanual_params
    sets robot.arms) and the policy answers a chunk of every column."""
    import dataclasses

    import torch

    from hsa_pipeline.data.caches import Caches
    from hsa_pipeline.training.module import build

    monkeypatch.chdir(trained)
    p = bimanual_params(TINY_TRAIN + ["act.arm_queries=true"])
    caches = Caches(PREPARE, GEOMETRY, FEATURES, 1.0)
    module = build(p.act, p.hsa, 10, caches, torch.device("cpu"))
    assert module.policy.shapes.arm_columns == [list(range(7)), list(range(7, 14))]
    assert module.policy.queries.shape[0] == 2 * p.act.chunk_size
    off = build(dataclasses.replace(p.act, arm_queries=False), p.hsa, 10, caches, torch.device("cpu"))
    assert off.policy.shapes.arm_columns == [] and off.policy.queries.shape[0] == p.act.chunk_size
